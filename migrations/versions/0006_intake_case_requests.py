"""intake: case_requests, every request (ticket) that opened or joined a case; one case per ticket

Revision ID: 0006_intake
Revises: 0005_rounds
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa


revision = '0006_intake'
down_revision = '0005_rounds'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'case_requests',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('case_id', sa.Uuid(), nullable=True),
        sa.Column('integration_id', sa.Uuid(), nullable=True),
        sa.Column('ticket_id', sa.String(length=200), nullable=True),
        sa.Column('joined', sa.Boolean(), nullable=False),
        sa.Column('requester_email', sa.String(length=320), nullable=True),
        sa.Column('subject', sa.String(length=500), nullable=True),
        sa.Column('text', sa.Text(), nullable=True),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['case_id'], ['recovery_cases.id'], ),
        sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'], ),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('integration_id', 'ticket_id', name='uq_case_requests_ticket'),
    )
    with op.batch_alter_table('case_requests', schema=None) as batch_op:
        batch_op.create_index('ix_case_requests_case_id', ['case_id'], unique=False)
    # Each ticket already on a case keys its earliest case (the id is the case's own: one row per
    # case). Later cases the same ticket opened (the replay this table stops) stay as they are.
    op.execute(
        "INSERT INTO case_requests (id, case_id, integration_id, ticket_id, joined, requester_email, "
        "subject, text, received_at) "
        "SELECT c.id, c.id, c.integration_id, c.ticket_id, false, c.requester_email, c.subject, c.text, "
        "c.opened_at FROM recovery_cases c "
        "WHERE c.integration_id IS NOT NULL AND c.ticket_id IS NOT NULL AND NOT EXISTS ("
        "SELECT 1 FROM recovery_cases e WHERE e.integration_id = c.integration_id "
        "AND e.ticket_id = c.ticket_id AND (e.opened_at < c.opened_at "
        "OR (e.opened_at = c.opened_at AND e.id < c.id)))")


def downgrade() -> None:
    with op.batch_alter_table('case_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_case_requests_case_id')
    op.drop_table('case_requests')
