"""console: agents' passwords, invitations, second factors, console sessions, sign-in attempts

Revision ID: 0006_console
Revises: 0005_rounds
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa


revision = '0006_console'
down_revision = '0006_oidc'
branch_labels = None
depends_on = None


def _when(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        'agent_passwords',
        sa.Column('agent_id', sa.Uuid(), nullable=False),
        sa.Column('hash', sa.String(length=255), nullable=False),
        _when('set_at', False),
        sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], name='fk_agent_passwords_agent_id_agents'),
        sa.PrimaryKeyConstraint('agent_id', name='pk_agent_passwords'),
    )
    op.create_table(
        'agent_invitations',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column('agent_id', sa.Uuid(), nullable=False),
        sa.Column('digest', sa.String(length=64), nullable=False),
        _when('created_at', False), _when('expires_at', False), _when('used_at'),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name='fk_agent_invitations_tenant_id_tenants'),
        sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], name='fk_agent_invitations_agent_id_agents'),
        sa.PrimaryKeyConstraint('id', name='pk_agent_invitations'),
        sa.UniqueConstraint('digest', name='uq_agent_invitations_digest'),
    )
    op.create_index('ix_agent_invitations_agent_id', 'agent_invitations', ['agent_id'])
    op.create_table(
        'agent_factors',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column('agent_id', sa.Uuid(), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('secret_encrypted', sa.String(length=500), nullable=True),
        sa.Column('last_used_step', sa.BigInteger(), nullable=False),
        sa.Column('credential_id', sa.LargeBinary(length=1023), nullable=True),
        sa.Column('public_key', sa.LargeBinary(), nullable=True),
        sa.Column('sign_count', sa.BigInteger(), nullable=False),
        sa.Column('transports', sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), 'postgresql'),
                  nullable=False),
        _when('created_at', False), _when('activated_at'), _when('removed_at'),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name='fk_agent_factors_tenant_id_tenants'),
        sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], name='fk_agent_factors_agent_id_agents'),
        sa.PrimaryKeyConstraint('id', name='pk_agent_factors'),
        sa.UniqueConstraint('credential_id', name='uq_agent_factors_credential_id'),
    )
    op.create_index('ix_agent_factors_agent_id', 'agent_factors', ['agent_id'])
    op.create_table(
        'agent_sessions',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('tenant_id', sa.Uuid(), nullable=False),
        sa.Column('agent_id', sa.Uuid(), nullable=False),
        sa.Column('digest', sa.String(length=64), nullable=False),
        sa.Column('stage', sa.String(length=16), nullable=False),
        sa.Column('ip', sa.String(length=64), nullable=True),
        _when('created_at', False), _when('last_seen_at', False), _when('expires_at', False),
        _when('revoked_at'), _when('second_factor_at'),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('challenge', sa.LargeBinary(), nullable=True),
        sa.Column('challenge_ceremony', sa.String(length=16), nullable=True),
        _when('challenge_expires_at'),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name='fk_agent_sessions_tenant_id_tenants'),
        sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], name='fk_agent_sessions_agent_id_agents'),
        sa.PrimaryKeyConstraint('id', name='pk_agent_sessions'),
        sa.UniqueConstraint('digest', name='uq_agent_sessions_digest'),
    )
    op.create_index('ix_agent_sessions_agent_id', 'agent_sessions', ['agent_id'])
    op.create_table(
        'agent_signin_attempts',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('tenant_id', sa.Uuid(), nullable=True),
        sa.Column('agent_id', sa.Uuid(), nullable=True),
        sa.Column('email', sa.String(length=320), nullable=False),
        sa.Column('ip', sa.String(length=64), nullable=True),
        sa.Column('result', sa.String(length=32), nullable=False),
        sa.Column('method', sa.String(length=16), nullable=False),
        _when('occurred_at', False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name='fk_agent_signin_attempts_tenant_id_tenants'),
        sa.PrimaryKeyConstraint('id', name='pk_agent_signin_attempts'),
    )
    op.create_index('ix_agent_signin_attempts_email', 'agent_signin_attempts', ['email'])
    op.create_index('ix_agent_signin_attempts_ip', 'agent_signin_attempts', ['ip'])
    op.create_index('ix_agent_signin_attempts_occurred_at', 'agent_signin_attempts', ['occurred_at'])


def downgrade() -> None:
    for index, table in (('ix_agent_signin_attempts_occurred_at', 'agent_signin_attempts'),
                         ('ix_agent_signin_attempts_ip', 'agent_signin_attempts'),
                         ('ix_agent_signin_attempts_email', 'agent_signin_attempts'),
                         ('ix_agent_sessions_agent_id', 'agent_sessions'),
                         ('ix_agent_factors_agent_id', 'agent_factors'),
                         ('ix_agent_invitations_agent_id', 'agent_invitations')):
        op.drop_index(index, table_name=table)
    for table in ('agent_signin_attempts', 'agent_sessions', 'agent_factors', 'agent_invitations',
                  'agent_passwords'):
        op.drop_table(table)
