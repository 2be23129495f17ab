"""fsub's logic: read a submission as sbatch reads it, check it, and route it to VMs.

``fsub`` must accept everything ``sbatch`` accepts, so its options are read with sbatch's own
rules (Slurm 22.05's option table: which options take a value, short option clusters, unique
prefixes of long options, ``#SBATCH`` lines before the first command of the script, the command
line overriding the script). Only what vcluster must understand is interpreted; every other
option goes to sbatch exactly as it was typed.

A submission is refused before anything reaches Slurm when it cannot run on the chosen node
class (zero nodes, memory that is not a size, an unknown class or template, more nodes, CPUs or
memory than the class has), with one line naming the option at fault. Otherwise it is routed:
``--partition`` of the class, ``--constraint`` on the class's Feature (its name), ``--exclusive``
for per-job classes, and the template wish in the comment as ``vcluster[template=NAME]``.

Following a job to its end (``fsub --wait``) lives with the command, in :mod:`vcluster.cli.fsub`.

Reading the options as sbatch does lives in :mod:`vcluster.sbatch_options`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from vcluster import devices
from vcluster.config import Config, NodeClass
from vcluster.errors import UserInputError
from vcluster.sbatch_options import FSUB_OPTIONS, Option, parse_options, script_directives

__all__ = [  # of vcluster.sbatch_options: import them from here
    "Option",
    "parse_options",
    "script_directives",
]

_MEMORY_RE = re.compile(r"^(\d+)([KkMmGgTt]?)[Bb]?$")
_MEMORY_FACTOR = {"": 1.0, "M": 1.0, "K": 1 / 1024, "G": 1024.0, "T": 1024.0 * 1024}
_WHOLE_RE = re.compile(r"^\d+$")


# --- values ---------------------------------------------------------------------------------


def parse_memory_mb(text: str) -> int | None:
    """Slurm's memory size (``4096``, ``4G``, ``512M``, ``2T``, ``100K``) in MB; None if bad."""
    match = _MEMORY_RE.match(text.strip())
    if not match:
        return None
    return math.ceil(int(match.group(1)) * _MEMORY_FACTOR[match.group(2).upper()])


def _node_range(option: Option) -> tuple[int, int | None]:
    text = option.value or ""
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", text.strip())
    if not match:
        raise UserInputError(
            f"{option.label()}: not a node count; use N or MIN-MAX (e.g. --nodes=2)")
    low, high = int(match.group(1)), match.group(2)
    if low < 1:
        raise UserInputError(f"{option.label()}: a job needs at least 1 node")
    if high is not None and int(high) < low:
        raise UserInputError(f"{option.label()}: the minimum is larger than the maximum")
    return low, None if high is None else int(high)


def _whole(option: Option | None) -> int | None:
    if option is None:
        return None
    text = (option.value or "").strip()
    if not _WHOLE_RE.match(text):
        raise UserInputError(f"{option.label()}: not a whole number")
    if int(text) < 1:
        raise UserInputError(f"{option.label()}: must be at least 1")
    return int(text)


def _memory(option: Option | None) -> int | None:
    if option is None:
        return None
    memory_mb = parse_memory_mb(option.value or "")
    if memory_mb is None:
        raise UserInputError(
            f"{option.label()}: not a memory size; use a whole number with an optional "
            f"K, M, G or T suffix (e.g. --{option.name}=4G)")
    return memory_mb


# --- the request ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitRequest:
    """What a user asked for: command-line options, script directives, the script."""

    options: tuple[Option, ...]
    """Command-line options in the order given (fsub's own included)."""
    operands: tuple[str, ...] = ()
    """The script path and its arguments; empty when the script comes on stdin or --wrap."""
    directives: tuple[Option, ...] = ()
    """Options of the script's ``#SBATCH`` lines."""
    script_text: str | None = field(default=None, repr=False)
    """The script when it comes on stdin (given to sbatch the same way)."""

    @classmethod
    def from_argv(cls, argv: Sequence[str], script_text: str | None = None) -> SubmitRequest:
        """``script_text``: the script's text if the caller read it (file or stdin)."""
        options, operands = parse_options(argv)
        if operands[:1] == [":"]:
            raise UserInputError(
                "heterogeneous jobs (':') are not supported; submit each component with fsub")
        directives = script_directives(script_text) if script_text is not None else []
        return cls(tuple(options), tuple(operands), tuple(directives),
                   script_text if not operands else None)

    def given(self, name: str) -> bool:
        return any(o.name == name for o in self.options)

    def effective(self, name: str) -> Option | None:
        """The option as sbatch will see it: the command line overrides ``#SBATCH`` lines."""
        found = [o for o in (*self.directives, *self.options) if o.name == name]
        return found[-1] if found else None

    def value(self, name: str) -> str | None:
        option = self.effective(name)
        return None if option is None else option.value


@dataclass(frozen=True)
class Submission:
    """A checked request: the class it goes to and the sbatch arguments that route it."""

    node_class: NodeClass
    template: str | None
    sbatch_args: tuple[str, ...]
    script_text: str | None
    parsable: bool
    follow: bool


def requested_gres(request: SubmitRequest) -> tuple[tuple[devices.Gres, ...], Option | None]:
    """The GRES each node of the job needs and the option that asked (``--gres``, ``--gpus*``)."""
    names = ("gres", "gpus-per-node", "gpus")
    options = {name: request.effective(name) for name in names}
    asked = next((o for o in options.values() if o is not None), None)
    try:
        wanted = devices.job_gres(*(request.value(name) for name in names))
    except ValueError as exc:
        raise UserInputError(f"{asked.label() if asked else '--gres'}: {exc}") from None
    return wanted, asked


def _gres_text(node_class: NodeClass) -> str:
    return ",".join(str(g) for g in node_class.gres) or "none"


def choose_class(request: SubmitRequest, config: Config) -> NodeClass:
    """The class asked with ``--vm-class``; else the first (of ``--partition``, if given)
    whose nodes have the GRES the job asks for."""
    if not config.node_classes:
        raise UserInputError(
            f"no node class is configured in {config.path or 'the vcluster config'}; "
            "ask your administrator")
    gres, gres_option = requested_gres(request)
    wanted = request.effective("vm-class")
    if wanted is None:
        partition = request.value("partition")
        in_partition = [nc for nc in config.node_classes if nc.partition == partition]
        candidates = in_partition or list(config.node_classes)
        if not gres:
            return candidates[0]
        with_gres = [nc for nc in candidates if devices.missing(nc.gres, gres) is None]
        if with_gres:
            return with_gres[0]
        offered = "; ".join(f"{nc.name}: {_gres_text(nc)}" for nc in candidates)
        assert gres_option is not None
        raise UserInputError(f"{gres_option.label()}: no node class has "
                             f"{','.join(map(str, gres))} per node ({offered})")
    for node_class in config.node_classes:
        if node_class.name == wanted.value:
            lacking = devices.missing(node_class.gres, gres)
            if lacking is not None and gres_option is not None:
                raise UserInputError(
                    f"{gres_option.label()}: node class {node_class.name} has "
                    f"{_gres_text(node_class)} per node, not {lacking}")
            return node_class
    known = ", ".join(nc.name for nc in config.node_classes)
    raise UserInputError(f"{wanted.label()}: unknown node class (known: {known})")


def choose_template(request: SubmitRequest, node_class: NodeClass) -> str | None:
    wanted = request.effective("vm-template")
    if wanted is None:
        return None
    if wanted.value not in node_class.allowed_templates:
        allowed = ", ".join(node_class.allowed_templates)
        raise UserInputError(
            f"{wanted.label()}: not allowed for node class {node_class.name} "
            f"(allowed: {allowed})")
    return wanted.value


def check_fits(request: SubmitRequest, node_class: NodeClass) -> None:
    """Refuse what the class cannot run; each message names the option at fault."""
    nc = node_class
    nodes = request.effective("nodes")
    nodes_min = _node_range(nodes)[0] if nodes is not None else None
    memory_mb = _memory(request.effective("mem"))
    memory_per_cpu_mb = _memory(request.effective("mem-per-cpu"))
    cpt_option = request.effective("cpus-per-task")
    cpus_per_task = _whole(cpt_option) or 1
    ntasks_option = request.effective("ntasks")
    ntasks = _whole(ntasks_option)
    tpn_option = request.effective("ntasks-per-node")
    tasks_per_node = _whole(tpn_option)
    overcommit = request.effective("overcommit") is not None

    if nodes is not None and nodes_min is not None and nodes_min > nc.count:
        raise UserInputError(f"{nodes.label()}: node class {nc.name} has only {nc.count} nodes")
    if cpt_option is not None and cpus_per_task > nc.cpus and not overcommit:
        raise UserInputError(
            f"{cpt_option.label()}: node class {nc.name} has {nc.cpus} CPUs per node")
    if tpn_option is not None and tasks_per_node and not overcommit:
        cpus_per_node = tasks_per_node * cpus_per_task
        if cpus_per_node > nc.cpus:
            raise UserInputError(
                f"{tpn_option.label()}: that is {cpus_per_node} CPUs per node; "
                f"node class {nc.name} has {nc.cpus}")
    if ntasks_option is not None and ntasks and not overcommit:
        per_node = min(tasks_per_node or nc.cpus // cpus_per_task, nc.cpus // cpus_per_task)
        needed = math.ceil(ntasks / max(per_node, 1))
        if needed > nc.count:
            raise UserInputError(
                f"{ntasks_option.label()}: needs {needed} nodes of node class {nc.name} "
                f"({nc.cpus} CPUs each) but it has only {nc.count}")
    mem = request.effective("mem")
    if mem is not None and memory_mb and memory_mb > nc.memory_mb:
        raise UserInputError(
            f"{mem.label()}: node class {nc.name} has {nc.memory_mb} MB of memory per node")
    mem_per_cpu = request.effective("mem-per-cpu")
    if mem_per_cpu is not None and memory_per_cpu_mb:
        task_mb = memory_per_cpu_mb * cpus_per_task
        if task_mb > nc.memory_mb:
            raise UserInputError(
                f"{mem_per_cpu.label()}: a task with {cpus_per_task} CPU(s) needs {task_mb} MB; "
                f"node class {nc.name} has {nc.memory_mb} MB per node")
    partition = request.effective("partition")
    if partition is not None and partition.value != nc.partition:
        raise UserInputError(
            f"{partition.label()}: node class {nc.name} runs in partition {nc.partition}; "
            "leave --partition out")


def build_sbatch_args(
    request: SubmitRequest, node_class: NodeClass, template: str | None
) -> list[str]:
    """sbatch's arguments: the user's options as typed, plus the routing to ``node_class``."""
    rewritten = {"parsable", "wait", "partition", "constraint", *FSUB_OPTIONS}
    if node_class.policy == "per-job":
        rewritten.add("exclusive")
    if template is not None:
        rewritten.add("comment")
    args = ["--parsable"]
    for option in request.options:
        if option.name not in rewritten:
            args.extend(option.tokens)
    args.append(f"--partition={node_class.partition}")
    user_constraint = request.value("constraint")
    if user_constraint:
        args.append(f"--constraint=({user_constraint})&{node_class.name}")
    else:
        args.append(f"--constraint={node_class.name}")
    if node_class.policy == "per-job":
        args.append("--exclusive")
    if template is not None:
        wish = f"vcluster[template={template}]"
        user_comment = request.value("comment")
        args.append(f"--comment={wish} {user_comment}" if user_comment else f"--comment={wish}")
    args.extend(request.operands)
    return args


def plan_submission(request: SubmitRequest, config: Config) -> Submission:
    """Check ``request`` against ``config`` and build its sbatch arguments (nothing is run)."""
    node_class = choose_class(request, config)
    template = choose_template(request, node_class)
    check_fits(request, node_class)
    script_wait = next((o for o in request.directives if o.name == "wait"), None)
    if script_wait is not None:  # sbatch would block until the job ends
        raise UserInputError(
            f"{script_wait.label()}: remove it from the script and use fsub --wait")
    return Submission(
        node_class=node_class,
        template=template,
        sbatch_args=tuple(build_sbatch_args(request, node_class, template)),
        script_text=request.script_text,
        parsable=request.given("parsable"),
        follow=request.given("wait"),
    )


def submitted_message(stdout: str, parsable: bool) -> tuple[int | None, str]:
    """The job id in ``sbatch --parsable`` output and what sbatch itself would have printed."""
    first = stdout.strip().splitlines()[0].strip() if stdout.strip() else ""
    job_text, _, cluster = first.partition(";")
    if not job_text.isdigit():
        return None, stdout
    if parsable:
        return int(job_text), stdout
    suffix = f" on cluster {cluster}" if cluster else ""
    return int(job_text), f"Submitted batch job {job_text}{suffix}\n"
