"""sbatch's command line and ``#SBATCH`` lines, read as sbatch reads them, for fsub.

Why it exists: ``fsub`` must accept everything ``sbatch`` accepts, so its options are split
with sbatch's own rules (Slurm 22.05's option table: which options take a value, short option
clusters, unique prefixes of long options, ``#SBATCH`` lines before the first command of the
script). That reading knows nothing of vcluster's classes and is kept here; what fsub makes
of the options (checks and routing) is in :mod:`vcluster.submit`, which re-exports these.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from vcluster.errors import UserInputError

NO_ARG, REQUIRED, OPTIONAL = 0, 1, 2

# sbatch 22.05's long options and whether each takes a value (read from its option table).
SBATCH_LONG_OPTIONS: dict[str, int] = {
    **dict.fromkeys((
        "account acctg-freq array batch begin bb bbf cluster-constraint chdir cluster clusters "
        "comment container context constraint core-spec cores-per-socket cpu-freq cpus-per-gpu "
        "cpus-per-task deadline delay-boot dependency distribution error exclude export "
        "export-file extra-node-info gid gpu-bind gpu-freq gpus gpus-per-node gpus-per-socket "
        "gpus-per-task gres gres-flags hint input job-name kill-on-invalid-dep licenses "
        "mail-type mail-user mcs-label mem mem-bind mem-per-cpu mem-per-gpu mincpus network "
        "nodefile nodelist nodes ntasks ntasks-per-core ntasks-per-gpu ntasks-per-node "
        "ntasks-per-socket ntasks-per-tres open-mode output partition power prefer priority "
        "profile qos reservation signal sockets-per-node switches tasks-per-node thread-spec "
        "threads-per-core time time-min tmp uid wait-all-nodes wckey wrap"
    ).split(), REQUIRED),
    **dict.fromkeys((
        "contiguous help hold ignore-pbs no-requeue overcommit oversubscribe parsable quiet "
        "reboot requeue spread-job test-only use-min-nodes verbose version usage wait"
    ).split(), NO_ARG),
    **dict.fromkeys("exclusive get-user-env nice no-kill propagate".split(), OPTIONAL),
}
SBATCH_SHORT_OPTIONS: dict[str, str] = {
    "A": "account", "a": "array", "b": "begin", "D": "chdir", "M": "clusters",
    "C": "constraint", "S": "core-spec", "c": "cpus-per-task", "d": "dependency",
    "m": "distribution", "e": "error", "x": "exclude", "B": "extra-node-info", "G": "gpus",
    "h": "help", "H": "hold", "i": "input", "J": "job-name", "L": "licenses", "k": "no-kill",
    "F": "nodefile", "w": "nodelist", "N": "nodes", "n": "ntasks", "o": "output",
    "O": "overcommit", "s": "oversubscribe", "p": "partition", "q": "qos", "Q": "quiet",
    "t": "time", "v": "verbose", "V": "version", "W": "wait",
}
# fsub's own options (all --vm-*, so they can never shadow an sbatch option).
FSUB_OPTIONS: dict[str, int] = {"vm-class": REQUIRED, "vm-template": REQUIRED}
ALIASES = {"tasks-per-node": "ntasks-per-node", "cluster": "clusters"}


@dataclass(frozen=True)
class Option:
    """One option as given: canonical long ``name``, its ``value``, the original ``tokens``."""

    name: str
    value: str | None
    tokens: tuple[str, ...]
    where: str = ""
    """``""`` for the command line, ``"#SBATCH line N"`` for the script."""

    def label(self) -> str:
        """How a message names it: ``--nodes=0`` (and where, if from the script)."""
        text = f"--{self.name}" if self.value is None else f"--{self.name}={self.value}"
        return f"{text} ({self.where})" if self.where else text


def parse_options(
    tokens: Sequence[str], *, where: str = "", fsub_options: bool = True
) -> tuple[list[Option], list[str]]:
    """Split argv as sbatch's getopt does: options, then the script and its arguments.

    Options stop at the first operand or ``--``. An option sbatch does not know (a site's
    plugin option) is passed on as written; give such options as ``--opt=value``.
    """
    table = {**SBATCH_LONG_OPTIONS, **(FSUB_OPTIONS if fsub_options else {})}
    options: list[Option] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            return options, list(tokens[i + 1:])
        if token.startswith("--"):
            body, eq, inline = token[2:].partition("=")
            name = _long_name(body, table)
            kind = table.get(name, NO_ARG if not eq else OPTIONAL)
            value: str | None = inline if eq else None
            used = [token]
            if kind == NO_ARG and eq and name in table:
                raise UserInputError(f"option --{name} takes no value (got {token!r})")
            if kind == REQUIRED and not eq:
                if i + 1 >= len(tokens):
                    raise UserInputError(f"option --{name} needs a value")
                value = tokens[i + 1]
                used.append(value)
                i += 1
            options.append(Option(ALIASES.get(name, name), value, tuple(used), where))
        elif token.startswith("-") and token != "-":
            i = _parse_short_cluster(tokens, i, options, where)
        else:
            return options, list(tokens[i:])
        i += 1
    return options, []


def _long_name(body: str, table: dict[str, int]) -> str:
    """getopt_long's rule: an exact name, else a unique prefix of one."""
    if body in table:
        return body
    matches = [name for name in table if name.startswith(body)]
    return matches[0] if len(matches) == 1 else body


def _parse_short_cluster(tokens: Sequence[str], i: int, options: list[Option], where: str) -> int:
    token = tokens[i]
    j = 1
    while j < len(token):
        letter = token[j]
        name = SBATCH_SHORT_OPTIONS.get(letter)
        if name is None:  # unknown to sbatch: pass the rest on untouched
            options.append(Option(token[j:], None, (f"-{token[j:]}",), where))
            return i
        kind = SBATCH_LONG_OPTIONS[name]
        rest = token[j + 1:]
        if kind == NO_ARG:
            options.append(Option(name, None, (f"-{letter}",), where))
            j += 1
            continue
        if rest or kind == OPTIONAL:
            options.append(Option(name, rest or None, (f"-{letter}{rest}",), where))
            return i
        if i + 1 >= len(tokens):
            raise UserInputError(f"option -{letter} (--{name}) needs a value")
        options.append(Option(name, tokens[i + 1], (f"-{letter}", tokens[i + 1]), where))
        return i + 1
    return i


def script_directives(script_text: str) -> list[Option]:
    """The options of the ``#SBATCH`` lines that precede the script's first command."""
    options: list[Option] = []
    for number, line in enumerate(script_text.splitlines(), start=1):
        stripped = line.strip()
        if line.startswith("#SBATCH") and (len(line) == 7 or line[7].isspace()):
            try:
                words = shlex.split(line[7:], comments=True)
            except ValueError:
                continue  # unbalanced quotes: sbatch reports those itself
            try:
                found, _ = parse_options(words, where=f"#SBATCH line {number}",
                                         fsub_options=False)
            except UserInputError:
                continue
            options.extend(found)
        elif stripped and not stripped.startswith("#"):
            break
    return options
