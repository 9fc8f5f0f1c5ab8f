"""limits, links, agents, time zone: agents' external ids and federated subjects (own-account
check); recovery links keep only a SHA-256 of their token (the token sealed until sent);
indexes for the hourly verification-call limits; when an action was queued and where its
secret's delivery stands (the stalled-work sweep)

Revision ID: 0005_limits
Revises: 0004
Create Date: 2026-12-01
"""
import hashlib

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

    with op.batch_alter_table('recovery_links', schema=None) as batch_op:
        batch_op.add_column(sa.Column('token_sealed', sa.Text(), nullable=True))
    # A link's token used to be `<id hex>.<digest>`, the digest stored as is: whoever read the
    # table could build the link. Keep only the SHA-256 of each such token: links already sent
    # still work, and the table no longer holds what builds them.
    links = sa.table('recovery_links', sa.column('id', sa.Uuid()), sa.column('digest', sa.String(64)))
    conn = op.get_bind()
    for link_id, digest in conn.execute(sa.select(links.c.id, links.c.digest)).all():
        token = f"{link_id.hex}.{digest}"
        conn.execute(links.update().where(links.c.id == link_id)
                     .values(digest=hashlib.sha256(token.encode()).hexdigest()))


    with op.batch_alter_table('verification_calls', schema=None) as batch_op:
        batch_op.create_index('ix_verification_calls_tenant_created', ['tenant_id', 'created_at'], unique=False)
        batch_op.create_index('ix_verification_calls_tenant_placed_by', ['tenant_id', 'placed_by', 'created_at'],
                              unique=False)

    # The stalled-work sweep asks for exactly what is stalled (issue 8, item 17).
    with op.batch_alter_table('case_actions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('queued_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('delivery_state', sa.String(length=16), nullable=True))
        batch_op.create_index('ix_case_actions_queued', ['status', 'queued_at'], unique=False)
        batch_op.create_index('ix_case_actions_delivery_state', ['delivery_state', 'done_at'], unique=False)
    actions = sa.table('case_actions', sa.column('id', sa.Uuid()), sa.column('status', sa.String(24)),
                       sa.column('options', sa.JSON()), sa.column('created_at', sa.DateTime(timezone=True)),
                       sa.column('queued_at', sa.DateTime(timezone=True)),
                       sa.column('delivery_state', sa.String(16)))
    conn.execute(actions.update().where(actions.c.status == 'queued').values(queued_at=actions.c.created_at))
    for action_id, options in conn.execute(sa.select(actions.c.id, actions.c.options)
                                           .where(actions.c.status == 'done')).all():
        if (options or {}).get('sealed'):
            conn.execute(actions.update().where(actions.c.id == action_id).values(delivery_state='pending'))


def downgrade() -> None:
    with op.batch_alter_table('case_actions', schema=None) as batch_op:
        batch_op.drop_index('ix_case_actions_delivery_state')
        batch_op.drop_index('ix_case_actions_queued')
        batch_op.drop_column('delivery_state')
        batch_op.drop_column('queued_at')

    with op.batch_alter_table('verification_calls', schema=None) as batch_op:
        batch_op.drop_index('ix_verification_calls_tenant_placed_by')
        batch_op.drop_index('ix_verification_calls_tenant_created')

    # The old tokens cannot be rebuilt from their hashes: after a downgrade, earlier links no
    # longer work.
    with op.batch_alter_table('recovery_links', schema=None) as batch_op:
        batch_op.drop_column('token_sealed')

    with op.batch_alter_table('agent_identities', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_agent_identities_agent_id'))

    op.drop_table('agent_identities')
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.drop_column('external_id')
