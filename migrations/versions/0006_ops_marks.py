"""ops: the marks `rekey status` and /metrics read (beat heartbeat, last chain verification)

Revision ID: 0006_ops
Revises: 0005_rounds
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0006_ops'
down_revision = '0006_seam'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'ops_marks',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ok', sa.Boolean(), nullable=True),
        sa.Column('details', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'),
                  nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )


def downgrade() -> None:
    op.drop_table('ops_marks')
