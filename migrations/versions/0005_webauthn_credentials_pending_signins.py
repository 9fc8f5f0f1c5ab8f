"""webauthn: security keys (credentials, challenges) and the two-step sign-in (pending sign-ins)

A security key is an `mfa_factors` row of kind `webauthn` (its life: created, removed by a
reset) plus its credential here; so a TOTP factor's secret is no longer required.

Revision ID: 0005_webauthn
Revises: 0005_limits
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0005_webauthn'
down_revision = '0005_limits'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('pending_signins',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_pending_signins_tenant_id_tenants')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_pending_signins_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pending_signins')),
    sa.UniqueConstraint('digest', name=op.f('uq_pending_signins_digest'))
    )
    with op.batch_alter_table('pending_signins', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pending_signins_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_pending_signins_user_id'), ['user_id'], unique=False)

    op.create_table('webauthn_challenges',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('ceremony', sa.String(length=16), nullable=False),
    sa.Column('session_id', sa.Uuid(), nullable=True),
    sa.Column('pending_signin_id', sa.Uuid(), nullable=True),
    sa.Column('challenge', sa.LargeBinary(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['pending_signin_id'], ['pending_signins.id'], name=op.f('fk_webauthn_challenges_pending_signin_id_pending_signins'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['session_id'], ['user_sessions.id'], name=op.f('fk_webauthn_challenges_session_id_user_sessions')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_webauthn_challenges_tenant_id_tenants')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_webauthn_challenges_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webauthn_challenges'))
    )
    with op.batch_alter_table('webauthn_challenges', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webauthn_challenges_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_webauthn_challenges_pending_signin_id'), ['pending_signin_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_webauthn_challenges_session_id'), ['session_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_webauthn_challenges_user_id'), ['user_id'], unique=False)

    op.create_table('webauthn_credentials',
    sa.Column('factor_id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('credential_id', sa.LargeBinary(length=1023), nullable=False),
    sa.Column('public_key', sa.LargeBinary(), nullable=False),
    sa.Column('sign_count', sa.BigInteger(), nullable=False),
    sa.Column('transports', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('aaguid', sa.String(length=36), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.Column('user_verified', sa.Boolean(), nullable=False),
    sa.Column('backed_up', sa.Boolean(), nullable=False),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['factor_id'], ['mfa_factors.id'], name=op.f('fk_webauthn_credentials_factor_id_mfa_factors')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_webauthn_credentials_tenant_id_tenants')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_webauthn_credentials_user_id_users')),
    sa.PrimaryKeyConstraint('factor_id', name=op.f('pk_webauthn_credentials')),
    sa.UniqueConstraint('credential_id', name=op.f('uq_webauthn_credentials_credential_id'))
    )
    with op.batch_alter_table('webauthn_credentials', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webauthn_credentials_user_id'), ['user_id'], unique=False)

    with op.batch_alter_table('mfa_factors', schema=None) as batch_op:
        batch_op.alter_column('secret_encrypted',
               existing_type=sa.VARCHAR(length=500),
               nullable=True)



def downgrade() -> None:
    # Security keys cannot live without their credentials: keep their history rows, removed.
    op.execute("UPDATE mfa_factors SET secret_encrypted = '', status = 'removed', "
               "removed_at = COALESCE(removed_at, CURRENT_TIMESTAMP) WHERE secret_encrypted IS NULL")
    with op.batch_alter_table('mfa_factors', schema=None) as batch_op:
        batch_op.alter_column('secret_encrypted',
               existing_type=sa.VARCHAR(length=500),
               nullable=False)

    with op.batch_alter_table('webauthn_credentials', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webauthn_credentials_user_id'))

    op.drop_table('webauthn_credentials')
    with op.batch_alter_table('webauthn_challenges', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webauthn_challenges_user_id'))
        batch_op.drop_index(batch_op.f('ix_webauthn_challenges_session_id'))
        batch_op.drop_index(batch_op.f('ix_webauthn_challenges_pending_signin_id'))
        batch_op.drop_index(batch_op.f('ix_webauthn_challenges_expires_at'))

    op.drop_table('webauthn_challenges')
    with op.batch_alter_table('pending_signins', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pending_signins_user_id'))
        batch_op.drop_index(batch_op.f('ix_pending_signins_expires_at'))

    op.drop_table('pending_signins')
