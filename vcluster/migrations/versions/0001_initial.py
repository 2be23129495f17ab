"""Initial schema: launch map, jobs, hook requests, event log, heartbeat.

Revision ID: 0001
Revises:
Create Date: 2026-11-21 06:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from vcluster.db import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LAUNCH_STATES = ("requested", "allocating", "booting", "up", "terminating", "terminated",
                  "failed")
_HOOK_KINDS = ("resume", "suspend", "resume-fail", "prolog", "epilog", "job-finished")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def upgrade() -> None:
    op.create_table(
        "launch",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("node_name", sa.String(128), nullable=False),
        sa.Column("node_class", sa.String(64), nullable=False),
        sa.Column("job_id", sa.Integer, nullable=True),
        sa.Column("vm_id", sa.Integer, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("ip", sa.String(64), nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("ended_at", UTCDateTime, nullable=True),
        sa.UniqueConstraint("vm_id", name="uq_launch_vm_id"),
        sa.CheckConstraint(_in("state", _LAUNCH_STATES), name="ck_launch_state"),
    )
    # At most one open launch per node: the guard against a double launch.
    op.create_index(
        "uq_launch_open_node", "launch", ["node_name"], unique=True,
        sqlite_where=sa.text("ended_at IS NULL"), postgresql_where=sa.text("ended_at IS NULL"),
    )
    op.create_index("ix_launch_job_id", "launch", ["job_id"])

    op.create_table(
        "job",
        sa.Column("job_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("node_class", sa.String(64), nullable=True),
        sa.Column("template", sa.String(256), nullable=True),
        sa.Column("user", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("nodes", sa.Text, nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("first_seen", UTCDateTime, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=True),
        sa.Column("ended_at", UTCDateTime, nullable=True),
    )

    op.create_table(
        "hook_request",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("nodes", sa.Text, nullable=False),
        sa.Column("job_ids", sa.JSON, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("handled_at", UTCDateTime, nullable=True),
        sa.CheckConstraint(_in("kind", _HOOK_KINDS), name="ck_hook_kind"),
    )
    op.create_index("ix_hook_request_unhandled", "hook_request", ["handled_at"])

    op.create_table(
        "event",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("node_name", sa.String(128), nullable=True),
        sa.Column("job_id", sa.Integer, nullable=True),
        sa.Column("vm_id", sa.Integer, nullable=True),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.create_index("ix_event_at", "event", ["at"])
    op.create_index("ix_event_node", "event", ["node_name"])

    op.create_table(
        "heartbeat",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_heartbeat_single_row"),
    )


def downgrade() -> None:
    op.drop_table("heartbeat")
    op.drop_index("ix_event_node", table_name="event")
    op.drop_index("ix_event_at", table_name="event")
    op.drop_table("event")
    op.drop_index("ix_hook_request_unhandled", table_name="hook_request")
    op.drop_table("hook_request")
    op.drop_table("job")
    op.drop_index("ix_launch_job_id", table_name="launch")
    op.drop_index("uq_launch_open_node", table_name="launch")
    op.drop_table("launch")
