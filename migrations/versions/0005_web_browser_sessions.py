"""browser sessions (kind, last seen)

Revision ID: 0005_web
Revises: 0004
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0005_web'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A session is `api` (a bearer token handed to a program) or `browser` (a cookie); only a
    # browser session has an idle timeout, measured from `last_seen_at`.
    with op.batch_alter_table('user_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=16), nullable=False, server_default='api'))
        batch_op.add_column(sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('user_sessions', schema=None) as batch_op:
        batch_op.drop_column('last_seen_at')
        batch_op.drop_column('kind')
