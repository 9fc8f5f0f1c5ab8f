"""seam: the tenant's directory, users mirrored from it, channels' first sighting

Revision ID: 0006_seam
Revises: 0005_rounds
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0006_seam'
down_revision = '0006_console'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'tenant_directories',
        sa.Column('tenant_id', sa.Uuid(), sa.ForeignKey('tenants.id'), primary_key=True),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('url', sa.String(length=500), nullable=True),
        sa.Column('realm', sa.String(length=200), nullable=True),
        sa.Column('options', sa.JSON().with_variant(postgresql.JSONB(), 'postgresql'), nullable=False),
        sa.Column('token_encrypted', sa.String(length=4000), nullable=True),
        sa.Column('token_set_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('token_expires_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('synced_at', sa.DateTime(timezone=True), nullable=True),
    )
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('directory_kind', sa.String(length=32), server_default='builtin',
                                      nullable=False))
        batch_op.add_column(sa.Column('directory_ref', sa.String(length=200), nullable=True))
        batch_op.create_index('ix_users_directory_ref', ['tenant_id', 'directory_ref'], unique=False)
    with op.batch_alter_table('channels', schema=None) as batch_op:
        batch_op.add_column(sa.Column('first_seen_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('channels', schema=None) as batch_op:
        batch_op.drop_column('first_seen_at')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_index('ix_users_directory_ref')
        batch_op.drop_column('directory_ref')
        batch_op.drop_column('directory_kind')
    op.drop_table('tenant_directories')
