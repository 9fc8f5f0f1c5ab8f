"""rounds: round numbers, escalation expiry, sealed-secret expiry, compromised channels,
the enrolment window

Revision ID: 0005_rounds
Revises: 0005_web
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0005_rounds'
down_revision = '0005_web'
branch_labels = None
depends_on = None

ROUNDED = ('recovery_cases', 'evidence', 'verification_calls', 'case_actions')


def upgrade() -> None:
    for table in ROUNDED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('round', sa.Integer(), server_default='1', nullable=False))
    with op.batch_alter_table('recovery_cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('escalation_expires_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('case_actions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sealed_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_case_actions_sealed_until', ['sealed_until'], unique=False)
    with op.batch_alter_table('channels', schema=None) as batch_op:
        batch_op.add_column(sa.Column('compromised_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('compromised_case_id', sa.Uuid(), nullable=True))
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('suspended_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('enrolment_closed_at', sa.DateTime(timezone=True), nullable=True))
    # Secrets sealed before this revision get the 24 hours from now.
    op.execute("UPDATE case_actions SET sealed_until = CURRENT_TIMESTAMP + INTERVAL '24 hours' "
               "WHERE status = 'done' AND options::jsonb ? 'sealed'"
               if op.get_context().dialect.name == 'postgresql' else
               "UPDATE case_actions SET sealed_until = datetime('now', '+24 hours') "
               "WHERE status = 'done' AND json_extract(options, '$.sealed') IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('enrolment_closed_at')
        batch_op.drop_column('suspended_at')
    with op.batch_alter_table('channels', schema=None) as batch_op:
        batch_op.drop_column('compromised_case_id')
        batch_op.drop_column('compromised_at')
    with op.batch_alter_table('case_actions', schema=None) as batch_op:
        batch_op.drop_index('ix_case_actions_sealed_until')
        batch_op.drop_column('sealed_until')
    with op.batch_alter_table('recovery_cases', schema=None) as batch_op:
        batch_op.drop_column('escalation_expires_at')
    for table in reversed(ROUNDED):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('round')
