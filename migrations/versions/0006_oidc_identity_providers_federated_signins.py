"""oidc: tenant identity providers and federated (OpenID Connect) sign-in flows

Revision ID: 0006_oidc
Revises: 0005_rounds
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa


revision = '0006_oidc'
down_revision = '0006_intake'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('identity_providers',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('issuer', sa.String(length=300), nullable=False),
    sa.Column('client_id', sa.String(length=300), nullable=False),
    sa.Column('client_secret_encrypted', sa.Text(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_identity_providers_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_identity_providers')),
    sa.UniqueConstraint('tenant_id', 'issuer', name=op.f('uq_identity_providers_tenant_id_issuer'))
    )
    with op.batch_alter_table('identity_providers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_identity_providers_tenant_id'), ['tenant_id'], unique=False)
    op.create_table('federated_signins',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('provider_id', sa.Uuid(), nullable=False),
    sa.Column('purpose', sa.String(length=16), nullable=False),
    sa.Column('case_id', sa.Uuid(), nullable=True),
    sa.Column('round', sa.Integer(), nullable=True),
    sa.Column('channel_id', sa.Uuid(), nullable=True),
    sa.Column('requested_by', sa.String(length=64), nullable=True),
    sa.Column('link_digest', sa.String(length=64), nullable=True),
    sa.Column('link_sealed', sa.Text(), nullable=True),
    sa.Column('state_digest', sa.String(length=64), nullable=True),
    sa.Column('nonce_sealed', sa.Text(), nullable=True),
    sa.Column('verifier_sealed', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('result', sa.String(length=16), nullable=True),
    sa.Column('failure', sa.String(length=300), nullable=True),
    sa.Column('user_id', sa.Uuid(), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_federated_signins_tenant_id_tenants')),
    sa.ForeignKeyConstraint(['provider_id'], ['identity_providers.id'], name=op.f('fk_federated_signins_provider_id_identity_providers')),
    sa.ForeignKeyConstraint(['case_id'], ['recovery_cases.id'], name=op.f('fk_federated_signins_case_id_recovery_cases')),
    sa.ForeignKeyConstraint(['channel_id'], ['channels.id'], name=op.f('fk_federated_signins_channel_id_channels')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_federated_signins_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_federated_signins')),
    sa.UniqueConstraint('link_digest', name=op.f('uq_federated_signins_link_digest')),
    sa.UniqueConstraint('state_digest', name=op.f('uq_federated_signins_state_digest'))
    )
    with op.batch_alter_table('federated_signins', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_federated_signins_case_id'), ['case_id'], unique=False)
        batch_op.create_index('ix_federated_signins_tenant_created', ['tenant_id', 'created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('federated_signins', schema=None) as batch_op:
        batch_op.drop_index('ix_federated_signins_tenant_created')
        batch_op.drop_index(batch_op.f('ix_federated_signins_case_id'))
    op.drop_table('federated_signins')
    with op.batch_alter_table('identity_providers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_identity_providers_tenant_id'))
    op.drop_table('identity_providers')
