"""Capacity back-off and boot-rate limits in the plan: the picture in, the exact actions out."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from tests.unit.controller_fixtures import (
    T0,
    ago,
    job,
    launch,
    make_config,
    node,
    powered_down,
    powering_up,
    vm,
)
from vcluster.config import Config, parse_config
from vcluster.controller import boot_rate
from vcluster.controller.actions import (
    Action,
    BackoffNodes,
    BootVM,
    ClearBackoff,
    SetBackoff,
    StartNow,
    Unplaceable,
    UpsertJob,
)
from vcluster.controller.backoff import capacity_cause, sched_reason
from vcluster.controller.observe import BackoffView, Observed
from vcluster.controller.plan import plan as plan_all

CONFIG = make_config()
S1, S2, S3, B1 = "vc-small-001", "vc-small-002", "vc-small-003", "vc-big-001"
QUOTA = "[one.template.instantiate] User [2] limit of 4 reached for VMS quota in VM"
"""oned's words (SharedAPI::quota_authorization, Quota.cc), an AUTHORIZATION error."""
SCHED = "Wed Dec  2 12:00:01 2026 : No host meets capacity and SCHED_REQUIREMENTS: ID = 99"
NOWHERE = "No host meets capacity and SCHED_REQUIREMENTS: ID = 99"


def plan(obs: Observed, config: Config) -> list[Action]:
    """The plan's actions but the job bookkeeping (UpsertJob)."""
    return [a for a in plan_all(obs, config) if not isinstance(a, UpsertJob)]


def backoff(until_s: float, level: int = 1, template: str = "worker",
            node_class: str = "small") -> BackoffView:
    return BackoffView(node_class, template, level, "placement", NOWHERE, ago(100),
                       T0 + timedelta(seconds=until_s))


def drain_text(until_s: float, template: str = "worker") -> str:
    at = (T0 + timedelta(seconds=until_s)).strftime("%Y-%m-%dT%H:%M:%S")
    return (f"vcluster backoff: template {template} cannot be placed (placement): {NOWHERE}; "
            f"next probe at {at}Z")


def pending_vm(vm_id: int, name: str, allocated_s_ago: float) -> object:
    return replace(vm(vm_id, name, "PENDING"), sched_message=SCHED,
                   start_time=int((T0 - timedelta(seconds=allocated_s_ago)).timestamp()))


def test_oned_words_and_causes() -> None:
    assert sched_reason(SCHED) == NOWHERE
    assert sched_reason("No hosts enabled to run VMs") == "No hosts enabled to run VMs"
    assert capacity_cause(QUOTA) == "quota"
    assert capacity_cause("[one.template.instantiate] Error getting template [7].") is None


def test_a_vm_pending_past_the_placement_wait_backs_its_template_off() -> None:
    obs = Observed(now=T0, nodes={S1: powering_up(S1), S2: powered_down(S2)},
                   jobs={12: job(12, S1)}, vms={7: pending_vm(7, S1, 31)},  # type: ignore[dict-item]
                   launches=(launch(1, S1, "booting", vm_id=7, job_id=12, created_s_ago=31),))
    assert plan(obs, CONFIG) == [
        SetBackoff("small", "worker", 1, "placement", NOWHERE, T0 + timedelta(seconds=60)),
        Unplaceable(S1, "small", f"vcluster: template worker of class small cannot be placed: "
                    f"{NOWHERE}", "placement", 1, 7, 12),
        BackoffNodes((S2,), True, drain_text(60))]  # Slurm is told at once


def test_a_pending_vm_within_the_wait_is_left_to_the_scheduler() -> None:
    obs = Observed(now=T0, nodes={S1: powering_up(S1)}, vms={7: pending_vm(7, S1, 29)},  # type: ignore[dict-item]
                   launches=(launch(1, S1, "booting", vm_id=7, ip="10.9.0.10",
                                    created_s_ago=29),))
    assert plan(obs, CONFIG) == []


def test_a_quota_refusal_backs_off_at_once_instead_of_retrying() -> None:
    obs = Observed(now=T0, nodes={S1: powering_up(S1)}, jobs={12: job(12, S1)},
                   launches=(replace(launch(1, S1, "requested", job_id=12, reason=QUOTA,
                                            updated_s_ago=10), template="worker"),))
    assert plan(obs, CONFIG) == [
        SetBackoff("small", "worker", 1, "quota", QUOTA, T0 + timedelta(seconds=60)),
        Unplaceable(S1, "small", f"vcluster: template worker of class small cannot be placed: "
                    f"{QUOTA}", "quota", 1, None, 12)]


def test_a_backed_off_class_gives_nodes_back_and_drains_the_rest_while_others_boot() -> None:
    obs = Observed(now=T0, nodes={S1: powering_up(S1), S2: powered_down(S2),
                                  S3: node(S3, "IDLE", "POWERED_DOWN", "DRAIN",
                                           reason=drain_text(30)),
                                  B1: powering_up(B1)},
                   jobs={12: job(12, S1)}, backoffs={("small", "worker"): backoff(30)})
    assert plan(obs, CONFIG) == [
        BootVM(B1, "big", None, 8, 8192, "bigworker"),
        Unplaceable(S1, "small", f"vcluster: class small backed off: {NOWHERE}", "backoff",
                    None, None, 12),
        BackoffNodes((S2,), True, drain_text(30))]


def test_a_requeued_job_of_a_backed_off_class_is_eligible_at_once_not_held() -> None:
    pending = job(12, state="PENDING", state_reason="BeginTime")
    obs = Observed(now=T0, jobs={12: pending}, failed_jobs={12: ago(3)},
                   backoffs={("small", "worker"): backoff(30)})
    assert [a for a in plan(obs, CONFIG) if isinstance(a, StartNow)] == [
        StartNow(12, "vcluster: requeued: its nodes were given back")]


def test_a_fallback_template_boots_while_the_first_is_backed_off() -> None:
    config = parse_config({"node_class": [
        {"name": "small", "count": 4, "cpus": 2, "memory_mb": 2048, "template": "worker",
         "fallback_templates": ["worker-b"]}]})
    obs = Observed(now=T0, nodes={S1: powering_up(S1), S2: powered_down(S2)},
                   backoffs={("small", "worker"): backoff(30)})
    assert plan(obs, config) == [BootVM(S1, "small", None, 2, 2048, "worker-b")]


def test_after_the_back_off_one_probe_boots_and_the_drain_is_lifted() -> None:
    obs = Observed(now=T0, nodes={S1: powering_up(S1), S2: powering_up(S2),
                                  S3: node(S3, "IDLE", "POWERED_DOWN", "DRAIN",
                                           reason=drain_text(-5))},
                   backoffs={("small", "worker"): backoff(-5)})
    assert plan(obs, CONFIG) == [BootVM(S1, "small", None, 2, 2048, "worker"),
                                 BackoffNodes((S3,), False, "back-off over: probing")]


def test_while_the_probe_is_in_flight_other_boots_wait() -> None:
    probe = replace(launch(1, S1, "booting", vm_id=7, ip="10.9.0.10", created_s_ago=10),
                    template="worker")
    obs = Observed(now=T0, nodes={S1: powering_up(S1), S2: powering_up(S2)},
                   vms={7: pending_vm(7, S1, 10)},  # type: ignore[dict-item]
                   launches=(probe,), backoffs={("small", "worker"): backoff(-5)})
    assert plan(obs, CONFIG) == []


def test_a_placed_probe_ends_the_back_off_and_the_others_boot() -> None:
    probe = replace(launch(1, S1, "booting", vm_id=7, ip="10.9.0.10", created_s_ago=10),
                    template="worker")
    obs = Observed(now=T0, nodes={S1: powering_up(S1), S2: powering_up(S2)},
                   vms={7: vm(7, S1, "BOOT")}, launches=(probe,),
                   backoffs={("small", "worker"): backoff(-5)})
    assert plan(obs, CONFIG) == [
        ClearBackoff("small", "worker", "VM 7 of node vc-small-001 was placed (BOOT)"),
        BootVM(S2, "small", None, 2, 2048, "worker")]


def test_a_probe_that_cannot_be_placed_backs_off_longer() -> None:
    probe = replace(launch(1, S1, "booting", vm_id=7, created_s_ago=40), template="worker")
    obs = Observed(now=T0, nodes={S1: powering_up(S1), S2: powering_up(S2)},
                   vms={7: pending_vm(7, S1, 40)},  # type: ignore[dict-item]
                   launches=(probe,), backoffs={("small", "worker"): backoff(-35, level=1)})
    assert plan(obs, CONFIG) == [
        SetBackoff("small", "worker", 2, "placement", NOWHERE, T0 + timedelta(seconds=120)),
        Unplaceable(S1, "small", f"vcluster: template worker of class small cannot be placed: "
                    f"{NOWHERE}", "placement", 1, 7),
        Unplaceable(S2, "small", f"vcluster: class small backed off: {NOWHERE}", "backoff")]


def test_boots_go_out_within_the_total_and_per_class_token_buckets() -> None:
    config = parse_config({"controller": {"boot_rate_per_s": 2, "boot_burst": 3},
                           "node_class": [
                               {"name": "small", "count": 8, "cpus": 2, "memory_mb": 2048,
                                "template": "worker", "boot_rate_per_s": 0.5},
                               {"name": "big", "count": 4, "cpus": 8, "memory_mb": 8192,
                                "template": "bigworker"}]})
    names = [f"vc-small-00{i}" for i in range(1, 5)] + ["vc-big-001", "vc-big-002"]
    nodes = {n: powering_up(n) for n in names}

    def boots(*sent: tuple[float, str]) -> list[tuple[str, float]]:
        """(node, seconds from now when its boot may go out) of the pass's boots."""
        obs = Observed(now=T0, nodes=nodes, recent_boots=tuple((ago(s), c) for s, c in sent))
        return [(a.node_name, a.not_before_s) for a in plan(obs, config)
                if isinstance(a, BootVM)]

    # total: 3 at once, then 2 per second; small: 1 at once (its rate, at least 1), 0.5/s;
    # what the buckets hold within PACE_S (2 s) goes in this pass, each at its slot
    fresh = [("vc-big-001", 0.0), ("vc-big-002", 0.0), ("vc-small-001", 0.0),
             ("vc-small-002", 2.0)]  # small's next token in 2 s; small-003 in 4 s: later
    assert boot_rate.PACE_S == 2.0
    assert boots() == fresh
    assert boots((1.0, "big")) == fresh  # refilled
    assert boots((0.2, "big"), (0.1, "big")) == [  # 1.4 tokens left
        ("vc-big-001", 0.0), ("vc-big-002", 0.3), ("vc-small-001", 0.8),
        ("vc-small-002", 2.0)]
    assert boots((1.9, "small")) == [  # small's token in 0.1 s, the next in 2.1 s
        ("vc-big-001", 0.0), ("vc-big-002", 0.0), ("vc-small-001", 0.1)]
    assert boots((2.1, "small")) == fresh
    assert boot_rate.boot_window_s(config) == 60.0  # 30 bucket lengths of small's 2 s


def test_without_pacing_the_slots_keep_exactly_what_the_buckets_hold_now() -> None:
    """schedule(pace_s=0) keeps the boots that allowances/within_limits let go now, for
    random histories (the slots are the same GCRA, read forward in time)."""
    import random

    config = parse_config({"controller": {"boot_rate_per_s": 3, "boot_burst": 5},
                           "node_class": [
                               {"name": "small", "count": 8, "cpus": 2, "memory_mb": 2048,
                                "template": "worker", "boot_rate_per_s": 0.7,
                                "boot_burst": 2},
                               {"name": "big", "count": 4, "cpus": 8, "memory_mb": 8192,
                                "template": "bigworker"}]})
    rng = random.Random(7)
    for _ in range(300):
        sent = tuple((ago(rng.uniform(0, 12)), rng.choice(("small", "big")))
                     for _ in range(rng.randint(0, 12)))
        order = [rng.choice(("small", "big")) for _ in range(rng.randint(0, 10))]
        total, per_class = boot_rate.allowances(config, sent, T0)
        now_only = [slot is not None for slot in
                    boot_rate.schedule(config, sent, T0, order, pace_s=0.0)]
        assert now_only == boot_rate.within_limits(order, total, per_class), (sent, order)
