"""Indexes for the controller's reads of each pass, so that history does not slow a pass.

Every pass reads the open launches, the launches that failed lately, the resume requests of
the last minutes and the jobs not ended (or ended lately): without these indexes each was a
scan of the whole table, which grows with every job the site ever ran.

Revision ID: 0012
Revises: 0003
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_launch_ended_at", "launch", ["ended_at"])
    op.create_index("ix_hook_request_kind_created", "hook_request", ["kind", "created_at"])
    op.create_index("ix_job_ended_at", "job", ["ended_at"])


def downgrade() -> None:
    op.drop_index("ix_job_ended_at", "job")
    op.drop_index("ix_hook_request_kind_created", "hook_request")
    op.drop_index("ix_launch_ended_at", "launch")
