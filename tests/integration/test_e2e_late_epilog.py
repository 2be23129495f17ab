"""Fifty jobs whose EpilogSlurmctld runs late, end to end (issue: a late epilog's power-down
request on a node already powered down left it IDLE+CLOUD+DRAIN+POWER_DOWN for a second, and
vcluster failed such nodes with "no VM backs this node").

The epilog wrapper slurmctld runs is delayed by a few seconds (longer than the power-down
takes), so every job's epilog asks to power down a node Slurm has already powered down.
What a user must see: every job COMPLETED on a VM of its own, no node failed or DOWN, and the
site clean afterwards.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tests.integration.site_fixtures import (
    Site,
    job_id_of,
    wait_clean,
    wait_for,
)

pytestmark = pytest.mark.integration

JOBS = 50
EPILOG_DELAY_S = 8


@pytest.fixture()
def late_epilog(e2e_site: Site) -> Iterator[Site]:
    wait_clean(e2e_site)
    wrapper = e2e_site.spec.slurm.hook_dir / "vcluster-epilog"
    original = wrapper.read_text()
    lines = original.splitlines(keepends=True)
    exec_at = next(i for i, line in enumerate(lines) if line.startswith("exec "))
    lines.insert(exec_at, f"sleep {EPILOG_DELAY_S}  # the test's late epilog\n")
    wrapper.write_text("".join(lines))
    try:
        yield e2e_site
    finally:
        wrapper.write_text(original)
    wait_clean(e2e_site, timeout_s=180)


def test_fifty_jobs_with_late_epilogs_fail_no_node(late_epilog: Site) -> None:
    s = late_epilog
    started = datetime.now(UTC).isoformat()  # the site's event log holds earlier tests' too
    job_ids = [job_id_of(s.fsub("-N1", "--parsable", f"--output={s.work}/late-%j.out",
                                "--wrap", "hostname"))
               for _ in range(JOBS)]

    def all_finished() -> bool:
        jobs = {j.job_id: j for j in s.slurm.jobs() if j.job_id in job_ids}
        return len(jobs) == JOBS and all(j.is_finished for j in jobs.values())

    wait_for("all jobs finished", all_finished, 600, 2)
    states = {j.job_id: j.state for j in s.slurm.jobs() if j.job_id in job_ids}
    assert set(states.values()) == {"COMPLETED"}, states
    hosts = [(s.work / f"late-{j}.out").read_text().strip() for j in job_ids]
    assert all(h.startswith(s.spec.name + "-small-") for h in hosts), hosts
    proc = subprocess.run(["vcluster", "events", "--json", "-n", "5000"], capture_output=True,
                          text=True, env=s.env, check=True)
    failed = [e for e in json.loads(proc.stdout)
              if e["at"] >= started and (e["kind"].startswith("node.fail") or
                                         "no VM backs this node" in e["message"])]
    assert not failed, [f"{e['kind']} {e['node_name']}: {e['message']}"
                        f"{_vm_error(s, e)}" for e in failed[:5]]
    down = [n.name for n in s.cloud_nodes() if n.is_down]
    assert not down, f"nodes DOWN: {down}"


def _vm_error(s: Site, event: dict) -> str:
    """The cloud's error text of a failed VM (why its boot failed), for the failure message."""
    named = re.search(r"\bVM (\d+)\b", event["message"])
    vm_id = event.get("vm_id") or (int(named.group(1)) if named else None)
    if vm_id is None:
        return ""
    try:
        return f" (the cloud: {s.one.vm(vm_id).user_template.get('ERROR', 'no ERROR')})"
    except Exception as exc:  # a diagnostic only
        return f" (VM {vm_id} unreadable: {exc})"
