"""browser sessions (kind, last seen) and the event a notice link belongs to

Revision ID: 0005_web
Revises: 0005_webauthn
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0005_web'
down_revision = '0005_webauthn'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A session is `api` (a bearer token handed to a program) or `browser` (a cookie); only a
    # browser session has an idle timeout, measured from `last_seen_at`.
    with op.batch_alter_table('user_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=16), nullable=False, server_default='api'))
        batch_op.add_column(sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True))
    # What the notice that carried a link announced, so the link's page can say what happened.
    with op.batch_alter_table('recovery_links', schema=None) as batch_op:
        batch_op.add_column(sa.Column('event', sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('recovery_links', schema=None) as batch_op:
        batch_op.drop_column('event')
    with op.batch_alter_table('user_sessions', schema=None) as batch_op:
        batch_op.drop_column('last_seen_at')
        batch_op.drop_column('kind')
