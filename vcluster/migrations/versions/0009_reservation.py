"""Advance reservations (``vcluster reserve``).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 13:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from vcluster.db import UTCDateTime

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reservation",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("slurm_name", sa.String(64), nullable=False),
        sa.Column("node_class", sa.String(64), nullable=False),
        sa.Column("node_count", sa.Integer, nullable=False),
        sa.Column("nodes", sa.Text, nullable=False),
        sa.Column("cpu_pct", sa.Integer, nullable=False),
        sa.Column("memory_mb", sa.Integer, nullable=False),
        sa.Column("users", sa.Text, nullable=False),
        sa.Column("start", UTCDateTime, nullable=False),
        sa.Column("end", UTCDateTime, nullable=False),
        sa.Column("lead_s", sa.Float, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("powered_up_at", UTCDateTime),
        sa.Column("ready_at", UTCDateTime),
        sa.Column("ended_at", UTCDateTime),
        sa.CheckConstraint("state IN ('accepted', 'booting', 'ready', 'ended', 'cancelled', "
                           "'refused')",
                           name="ck_reservation_state"),
    )
    op.create_index("ix_reservation_end", "reservation", ["end"])


def downgrade() -> None:
    op.drop_index("ix_reservation_end", "reservation")
    op.drop_table("reservation")
