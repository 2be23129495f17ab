"""Join tokens: one-time tokens worker VMs redeem for the munge key (stored hashed).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from vcluster.db import UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "join_token",
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column("launch_id", sa.Integer, nullable=True),
        sa.Column("vm_id", sa.Integer, nullable=True),
        sa.Column("node_name", sa.String(128), nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("redeemed_at", UTCDateTime, nullable=True),
        sa.Column("redeemed_from", sa.String(64), nullable=True),
    )
    op.create_index("ix_join_token_launch", "join_token", ["launch_id"])


def downgrade() -> None:
    op.drop_index("ix_join_token_launch", table_name="join_token")
    op.drop_table("join_token")
