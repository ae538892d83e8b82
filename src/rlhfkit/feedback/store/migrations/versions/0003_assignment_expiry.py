"""Assignments left pending too long expire: an index to find them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_assignments_status_created", "assignments", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_assignments_status_created", "assignments")
