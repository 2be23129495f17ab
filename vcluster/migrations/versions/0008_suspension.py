"""Suspensions: VMs vcluster stopped for a job Slurm suspended (preemption it survives).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from vcluster.db import UTCDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "suspension",
        sa.Column("node_name", sa.String(128), primary_key=True),
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("vm_id", sa.Integer, nullable=False),
        sa.Column("by_job", sa.Integer, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("state IN ('suspending', 'stopping', 'stopped', 'resuming')",
                           name="ck_suspension_state"),
    )


def downgrade() -> None:
    op.drop_table("suspension")
