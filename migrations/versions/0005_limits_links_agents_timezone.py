"""limits, links, agents, time zone: agents' external ids and federated subjects (own-account
check)

Revision ID: 0005_limits
Revises: 0004
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0005_limits'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('external_id', sa.String(length=200), nullable=True))

    op.create_table('agent_identities',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('agent_id', sa.Uuid(), nullable=False),
    sa.Column('issuer', sa.String(length=300), nullable=False),
    sa.Column('subject', sa.String(length=300), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], name=op.f('fk_agent_identities_agent_id_agents')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_agent_identities_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_agent_identities')),
    sa.UniqueConstraint('tenant_id', 'issuer', 'subject', name=op.f('uq_agent_identities_tenant_id_issuer_subject'))
    )
    with op.batch_alter_table('agent_identities', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_agent_identities_agent_id'), ['agent_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('agent_identities', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_agent_identities_agent_id'))

    op.drop_table('agent_identities')
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.drop_column('external_id')
