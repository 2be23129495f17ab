"""The slurm.conf lines that make Slurm drive vcluster: one generator for sites and testbed.

A site declares its VMs to Slurm as ``State=CLOUD`` nodes, one node range per vcluster node
class, and points Slurm's power-saving and slurmctld prolog/epilog hooks at vcluster's
programs. Writing those lines by hand invites drift between ``vcluster.toml`` and
``slurm.conf`` (a class whose Features differ, a partition without its nodes), so they are
generated from the config. ``vcluster slurm-conf`` prints them for a site to merge (see
``slurm/README.md``); the local testbed writes the very same text into its slurm.conf.

Policy decides how nodes are powered down (Slurm 22.05 has per-partition ``SuspendTime``):

- ``pool`` classes idle out: their partition's ``SuspendTime`` is the class's
  ``suspend_time_s``.
- ``per-job`` nodes are powered down by EpilogSlurmctld when their job ends; their
  ``suspend_time_s`` only bounds how long a node left idle by a failure stays up. A partition
  holding only per-job classes is ``OverSubscribe=EXCLUSIVE``, so a plain ``sbatch`` into it
  gets whole fresh nodes as ``fsub --exclusive`` does.

Slurm applies one ``SuspendTime`` per partition (the highest, for a node in several): classes
sharing a partition with different idle times get the longest, and a comment says so.
Global ``SuspendTime`` is left to the site (unset means disabled), so nodes outside vcluster's
partitions are never powered down by these lines.

The lines depend on the Slurm version they are for (``slurm_version``; 22.05 if not given):

- ``PrivateData=cloud`` only before 23.02: 23.02 shows powered-down CLOUD nodes by default
  ("PrivateData=cloud is no longer needed", RELEASE_NOTES 23.02) and ignores the word.
- ``SlurmctldParameters=cloud_reg_addrs`` only before 23.11: 23.11 made it defunct (slurmctld
  logs an error for it; a CLOUD node's address is always taken at registration).

This module is pure: text from a :class:`~vcluster.config.Config`, program paths and a
version.
"""

from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass

from vcluster.config import Config, NodeClass
from vcluster.errors import UserInputError
from vcluster.slurm_parse import MIN_SLURM, SUPPORTED_SLURM, SlurmVersion

SLURM_23_02 = SlurmVersion(23, 2)
"""Shows powered-down CLOUD nodes without ``PrivateData=cloud``."""
SLURM_23_11 = SlurmVersion(23, 11)
"""``cloud_reg_addrs`` is defunct (always on, logged as an error if given)."""

PROGRAM_NAMES = {
    "ResumeProgram": "vcluster-resume",
    "SuspendProgram": "vcluster-suspend",
    "ResumeFailProgram": "vcluster-resume-fail",
    "PrologSlurmctld": "vcluster-prolog",
    "EpilogSlurmctld": "vcluster-epilog",
}
"""slurm.conf key -> the console script Slurm runs for it (see pyproject.toml)."""

POWER_SAVE_INTERVAL_S = 1
"""``power_save_interval``: ResumeProgram runs about 1 s after allocation instead of 10 s."""


@dataclass(frozen=True)
class HookPrograms:
    """Absolute paths of the programs slurmctld runs (it gives them no PATH)."""

    resume: str
    suspend: str
    resume_fail: str
    prolog: str
    epilog: str

    @classmethod
    def in_dir(cls, directory: str) -> HookPrograms:
        """The programs as installed (or wrapped) in ``directory``."""
        d = os.path.abspath(directory)
        paths = {key: os.path.join(d, name) for key, name in PROGRAM_NAMES.items()}
        return cls(
            resume=paths["ResumeProgram"],
            suspend=paths["SuspendProgram"],
            resume_fail=paths["ResumeFailProgram"],
            prolog=paths["PrologSlurmctld"],
            epilog=paths["EpilogSlurmctld"],
        )

    def by_key(self) -> dict[str, str]:
        """slurm.conf key -> path, in the order the lines are written."""
        return {
            "ResumeProgram": self.resume,
            "SuspendProgram": self.suspend,
            "ResumeFailProgram": self.resume_fail,
            "PrologSlurmctld": self.prolog,
            "EpilogSlurmctld": self.epilog,
        }


def default_program_dir() -> str:
    """Where pip installed vcluster's console scripts (``vcluster-resume`` ...)."""
    return sysconfig.get_path("scripts")


def class_features(node_class: NodeClass) -> tuple[str, ...]:
    """The class's Features: its configured ones, plus its name (``--constraint=<class>``)."""
    features = list(dict.fromkeys(node_class.features))
    if node_class.name not in features:
        features.append(node_class.name)
    return tuple(features)


def class_weights(config: Config) -> dict[str, int]:
    """Slurm node Weight per class: 1 for the smallest (CPUs, then memory), then 2, 3...

    Slurm prefers the lowest weight among nodes that fit, so a job lands on the smallest class
    that can run it.
    """
    ordered = sorted(config.node_classes, key=lambda nc: (nc.cpus, nc.memory_mb, nc.name))
    return {nc.name: i + 1 for i, nc in enumerate(ordered)}


def target_version(text: str | None) -> SlurmVersion:
    """``"24.11"`` or ``"24.11.5"`` -> the version the lines are for; None -> 22.05.

    Raises :class:`UserInputError` for text that is not ``MAJOR.MINOR[.MICRO]`` or a Slurm
    older than 22.05.
    """
    if text is None:
        return MIN_SLURM
    parts = text.strip().split(".")
    if not 2 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise UserInputError(f"--slurm-version {text!r} is not a Slurm version such as 24.11")
    version = SlurmVersion(*(int(p) for p in parts))
    if version < MIN_SLURM:
        raise UserInputError(f"Slurm {version.release} is not supported: vcluster supports "
                             f"{SUPPORTED_SLURM}")
    return version


def slurmctld_parameters(config: Config, version: SlurmVersion = MIN_SLURM) -> list[str]:
    """The ``SlurmctldParameters`` values vcluster needs from that Slurm version."""
    params = ["cloud_reg_addrs"] if version < SLURM_23_11 else []
    params.append(f"power_save_interval={POWER_SAVE_INTERVAL_S}")
    if config.slurm.configless:
        params.append("enable_configless")
    return params


def power_save_lines(config: Config, programs: HookPrograms | None,
                     version: SlurmVersion = MIN_SLURM) -> list[str]:
    """Hook programs, timeouts, and the parameters that make CLOUD nodes work."""
    lines = []
    if programs is not None:
        lines.append("# Programs slurmctld runs (as SlurmUser, with no PATH)")
        lines += [f"{key}={path}" for key, path in programs.by_key().items()]
    c = config.controller
    lines += [
        "# A VM that is not a working node within ResumeTimeout is given up; job requeued",
        f"ResumeTimeout={c.resume_timeout_s}",
        f"SuspendTimeout={c.suspend_timeout_s}",
        "ResumeRate=0",
        "SuspendRate=0",
    ]
    if version < SLURM_23_02:
        lines += ["# Powered-down CLOUD nodes are invisible to sinfo/scontrol without this",
                  "PrivateData=cloud"]
    lines.append(f"SlurmctldParameters={','.join(slurmctld_parameters(config, version))}")
    return lines


def node_lines(config: Config) -> list[str]:
    """One commented ``NodeName=... State=CLOUD`` line per node class."""
    weights = class_weights(config)
    lines: list[str] = []
    for nc in config.node_classes:
        idle = (f"idle nodes powered down after {nc.suspend_time_s} s" if nc.policy == "pool"
                else "nodes powered down by EpilogSlurmctld at job end")
        lines.append(
            f"# node class {nc.name}: policy {nc.policy}, template {nc.template}, "
            f"{nc.count} node{'s' if nc.count != 1 else ''}, {idle}"
        )
        gres = f" Gres={','.join(str(g) for g in nc.gres)}" if nc.gres else ""
        lines.append(
            f"NodeName={nc.hostlist} State=CLOUD CPUs={nc.cpus} RealMemory={nc.memory_mb} "
            f"Features={','.join(class_features(nc))} Weight={weights[nc.name]}{gres}"
        )
    return lines


def gres_types(config: Config) -> list[str]:
    """The GRES names of every class, sorted: slurm.conf's ``GresTypes``."""
    return sorted({g.name for nc in config.node_classes for g in nc.gres})


def gres_lines(config: Config) -> list[str]:
    """``GresTypes=`` when a class has GRES (a site with its own GresTypes merges them)."""
    types = gres_types(config)
    if not types:
        return []
    return ["# Node classes with GRES; their gres.conf lines: `vcluster slurm-conf --gres-conf`",
            "# (a GresTypes of the site's own: list its types and these in one line)",
            f"GresTypes={','.join(types)}"]


def gres_conf(config: Config) -> str:
    """gres.conf lines for the classes' GRES, one per class and GRES, ending with a newline.

    With configless slurmd (``enable_configless``) slurmctld hands gres.conf to every VM, so
    it lives beside slurm.conf only. A class without ``gres_conf`` gets count-only lines,
    which serve GRES without device files; a GPU needs ``gres_conf = "File=/dev/nvidia0"``
    (or ``AutoDetect=nvml`` with a Slurm built with NVML): slurmd drops a GPU line without
    a file (measured on 22.05.8) and stops when the file is missing.
    """
    source = config.path or "vcluster.toml"
    lines = [f"# --- vcluster: generated by `vcluster slurm-conf --gres-conf` from {source} ---"]
    for nc in config.node_classes:
        for g in nc.gres:
            words = [f"NodeName={nc.hostlist}", f"Name={g.name}",
                     *([f"Type={g.type}"] if g.type else []), f"Count={g.count}"]
            if nc.gres_conf:
                words.append(nc.gres_conf)
            lines.append(" ".join(words))
    lines.append("# --- end of vcluster ---")
    return "\n".join(lines) + "\n"


def partition_lines(config: Config) -> list[str]:
    """One ``PartitionName`` line per configured partition that holds node classes."""
    lines: list[str] = []
    for partition in config.slurm.partitions:
        classes = [nc for nc in config.node_classes if nc.partition == partition]
        if not classes:
            lines.append(f"# partition {partition}: no node class in vcluster.toml, not declared")
            continue
        suspend_time_s = max(nc.suspend_time_s for nc in classes)
        times = {nc.suspend_time_s for nc in classes}
        if len(times) > 1:
            listed = ", ".join(f"{nc.name} {nc.suspend_time_s} s" for nc in classes)
            lines.append(
                f"# partition {partition}: classes want different idle times ({listed}); "
                f"Slurm applies one per partition: {suspend_time_s} s"
            )
        nodes = ",".join(nc.hostlist for nc in classes)
        line = (f"PartitionName={partition} Nodes={nodes} State=UP MaxTime=INFINITE "
                f"SuspendTime={suspend_time_s}")
        if all(nc.policy == "per-job" for nc in classes):
            line += " OverSubscribe=EXCLUSIVE"
        lines.append(line)
    return lines


def preempt_lines(config: Config) -> list[str]:
    """What a ``preempt_partition`` needs: the partition on every node class's nodes, above
    the others, and SlurmdTimeout=0 so that a node whose VM is stopped under a suspended job
    is not set DOWN (which would kill and requeue the job)."""
    partition = config.slurm.preempt_partition
    if not partition or not config.node_classes:
        return []
    nodes = ",".join(nc.hostlist for nc in config.node_classes)
    line = (f"PartitionName={partition} Nodes={nodes} State=UP MaxTime=INFINITE "
            f"PriorityTier=2 SuspendTime={max(nc.suspend_time_s for nc in config.node_classes)}")
    if all(nc.policy == "per-job" for nc in config.node_classes):
        line += " OverSubscribe=EXCLUSIVE"
    return [
        f"# Preemption that jobs survive: jobs of {partition} suspend the others' when their",
        "# own VMs cannot be placed; the suspended jobs' VMs are stopped in OpenNebula (hosts",
        "# freed) and resumed after. A stopped VM's slurmd cannot answer: 0 leaves node health",
        "# to vcluster, which watches every VM through OpenNebula (Slurm would set the node",
        "# DOWN and kill the job). Non-vcluster nodes of this slurmctld lose Slurm's check too.",
        "SlurmdTimeout=0",
        line,
    ]


def generate(config: Config, programs: HookPrograms | None, *,
             slurm_version: str | None = None) -> str:
    """The whole block to merge into slurm.conf, ending with a newline.

    ``programs`` None leaves out the hook program lines (a testbed with no cloud).
    ``slurm_version`` (``"24.11"``) is the Slurm the lines are for: only parameters it
    accepts are written, and a comment names it; None gives 22.05's lines, which every later
    Slurm also starts with (23.11+ logs an error for the defunct ``cloud_reg_addrs``).
    """
    version = target_version(slurm_version)
    source = config.path or "vcluster.toml"
    lines = [
        f"# --- vcluster: generated by `vcluster slurm-conf` from {source} ---",
        "# Regenerate after changing node classes; merging: see slurm/README.md",
        *([f"# For Slurm {version.release}: regenerate for another version"]
          if slurm_version is not None else []),
        *power_save_lines(config, programs, version),
        *gres_lines(config),
        *node_lines(config),
        *partition_lines(config),
        *preempt_lines(config),
        "# --- end of vcluster ---",
    ]
    return "\n".join(lines) + "\n"
