"""Usage accounting: each launch's VM size, template, host and lifetime; each job's account.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from vcluster.db import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("launch") as batch:
        batch.add_column(sa.Column("cpus", sa.Integer, nullable=True))
        batch.add_column(sa.Column("memory_mb", sa.Integer, nullable=True))
        batch.add_column(sa.Column("template", sa.String(256), nullable=True))
        batch.add_column(sa.Column("host", sa.String(256), nullable=True))
        batch.add_column(sa.Column("vm_started_at", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("vm_ended_at", UTCDateTime, nullable=True))
    with op.batch_alter_table("job") as batch:
        # Rows from before this revision get "" (Slurm's own word for "no account").
        batch.add_column(sa.Column("account", sa.String(64), nullable=False,
                                   server_default=""))
    with op.batch_alter_table("job") as batch:
        batch.alter_column("account", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_column("account")
    with op.batch_alter_table("launch") as batch:
        for column in ("vm_ended_at", "vm_started_at", "host", "template", "memory_mb",
                       "cpus"):
            batch.drop_column(column)
