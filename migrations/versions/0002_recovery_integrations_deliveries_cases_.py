"""recovery: integrations, deliveries, cases, evidence, calls, effects

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('effects',
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_effects'))
    )
    op.create_table('integrations',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('secret_encrypted', sa.String(length=500), nullable=False),
    sa.Column('previous_secret_encrypted', sa.String(length=500), nullable=True),
    sa.Column('previous_secret_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('callback_url', sa.String(length=2000), nullable=True),
    sa.Column('outbound_encrypted', sa.Text(), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_integrations_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_integrations'))
    )
    with op.batch_alter_table('integrations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_integrations_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('recovery_cases',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=True),
    sa.Column('requested_email', sa.String(length=320), nullable=True),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('state_before_escalation', sa.String(length=32), nullable=True),
    sa.Column('flags', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('refusal_trigger', sa.String(length=32), nullable=True),
    sa.Column('integration_id', sa.Uuid(), nullable=True),
    sa.Column('ticket_id', sa.String(length=200), nullable=True),
    sa.Column('requester_email', sa.String(length=320), nullable=True),
    sa.Column('subject', sa.String(length=500), nullable=True),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('verification_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('verified_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'], name=op.f('fk_recovery_cases_integration_id_integrations')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_recovery_cases_tenant_id_tenants')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_recovery_cases_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_recovery_cases'))
    )
    with op.batch_alter_table('recovery_cases', schema=None) as batch_op:
        batch_op.create_index('ix_recovery_cases_tenant_email', ['tenant_id', 'requested_email'], unique=False)
        batch_op.create_index('ix_recovery_cases_tenant_state', ['tenant_id', 'state'], unique=False)
        batch_op.create_index('uq_recovery_cases_open_user', ['user_id'], unique=True, postgresql_where=sa.text("state IN ('received', 'awaiting_verification', 'verified', 'awaiting_enrolment', 'recovered', 'escalated', 'suspected_attack')"), sqlite_where=sa.text("state IN ('received', 'awaiting_verification', 'verified', 'awaiting_enrolment', 'recovered', 'escalated', 'suspected_attack')"))

    op.create_table('webhook_deliveries',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('integration_id', sa.Uuid(), nullable=False),
    sa.Column('delivery_id', sa.String(length=200), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('response', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'], name=op.f('fk_webhook_deliveries_integration_id_integrations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
    sa.UniqueConstraint('integration_id', 'delivery_id', name=op.f('uq_webhook_deliveries_integration_id_delivery_id'))
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_deliveries_received_at'), ['received_at'], unique=False)

    op.create_table('evidence',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('case_id', sa.Uuid(), nullable=False),
    sa.Column('type', sa.String(length=40), nullable=False),
    sa.Column('accepted', sa.Boolean(), nullable=False),
    sa.Column('details', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('rejection_reason', sa.Text(), nullable=True),
    sa.Column('recorded_by_type', sa.String(length=16), nullable=False),
    sa.Column('recorded_by_id', sa.String(length=64), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['recovery_cases.id'], name=op.f('fk_evidence_case_id_recovery_cases')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_evidence_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_evidence'))
    )
    with op.batch_alter_table('evidence', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_evidence_case_id'), ['case_id'], unique=False)

    op.create_table('verification_calls',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('case_id', sa.Uuid(), nullable=False),
    sa.Column('channel_id', sa.Uuid(), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('code_digest', sa.String(length=64), nullable=False),
    sa.Column('code_encrypted', sa.String(length=300), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('placed_by', sa.String(length=64), nullable=False),
    sa.Column('provider_id', sa.String(length=100), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('verified_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['recovery_cases.id'], name=op.f('fk_verification_calls_case_id_recovery_cases')),
    sa.ForeignKeyConstraint(['channel_id'], ['channels.id'], name=op.f('fk_verification_calls_channel_id_channels')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_verification_calls_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_verification_calls'))
    )
    with op.batch_alter_table('verification_calls', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_verification_calls_case_id'), ['case_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('verification_calls', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_verification_calls_case_id'))

    op.drop_table('verification_calls')
    with op.batch_alter_table('evidence', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_evidence_case_id'))

    op.drop_table('evidence')
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_deliveries_received_at'))

    op.drop_table('webhook_deliveries')
    with op.batch_alter_table('recovery_cases', schema=None) as batch_op:
        batch_op.drop_index('uq_recovery_cases_open_user', postgresql_where=sa.text("state IN ('received', 'awaiting_verification', 'verified', 'awaiting_enrolment', 'recovered', 'escalated', 'suspected_attack')"), sqlite_where=sa.text("state IN ('received', 'awaiting_verification', 'verified', 'awaiting_enrolment', 'recovered', 'escalated', 'suspected_attack')"))
        batch_op.drop_index('ix_recovery_cases_tenant_state')
        batch_op.drop_index('ix_recovery_cases_tenant_email')

    op.drop_table('recovery_cases')
    with op.batch_alter_table('integrations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_integrations_tenant_id'))

    op.drop_table('integrations')
    op.drop_table('effects')
