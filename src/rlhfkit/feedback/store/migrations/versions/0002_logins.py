"""Logins: server-side sessions and one-time invite links (both keyed by token hashes).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    for name in ("sessions", "invites"):
        columns = [
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("annotator_id", sa.Integer(), sa.ForeignKey("annotators.id"), nullable=False),
            sa.Column("created_at", TS, nullable=False),
            sa.Column("expires_at", TS, nullable=False),
        ]
        if name == "invites":
            columns.append(sa.Column("used_at", TS, nullable=True))
        op.create_table(name, *columns)


def downgrade() -> None:
    op.drop_table("invites")
    op.drop_table("sessions")
