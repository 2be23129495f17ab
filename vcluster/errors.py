"""vcluster's own errors.

Every failure that reaches a person is one of these: its ``str()`` is a one-line message
that says what happened and what to do next. Adapters translate the exceptions of the
libraries they wrap (pyone, requests, xmlrpc, subprocess) into these at their edge,
chained with ``from``, so nothing above the adapters ever sees a foreign exception.

Errors are either *temporary* (worth retrying after a delay) or *permanent* (retrying
cannot help; record the reason and tell someone).
"""

from __future__ import annotations


class VclusterError(Exception):
    """Base class. ``str(err)`` is the one-line message shown to a user."""

    temporary: bool = False


# --- configuration and user input -----------------------------------------------------


class ConfigError(VclusterError):
    """The configuration file is missing, unreadable, or has a bad value.

    ``key`` is the dotted TOML key at fault (``node_class[0].cpus``) or ``""`` for the
    file as a whole.
    """

    def __init__(self, message: str, *, key: str = "", path: str = "") -> None:
        self.key = key
        self.path = path
        where = path or "config"
        if key:
            where = f"{where}: {key}"
        super().__init__(f"{where}: {message}")


class UserInputError(VclusterError):
    """A user's request is invalid; nothing was submitted or changed."""


# --- Slurm ------------------------------------------------------------------------------


class SlurmError(VclusterError):
    """Base for failures talking to Slurm."""


class SlurmCommandError(SlurmError):
    """A Slurm command exited non-zero, could not be run, or timed out."""

    def __init__(
        self,
        argv: list[str],
        returncode: int | None,
        stdout: str = "",
        stderr: str = "",
        *,
        timed_out: bool = False,
        timeout_s: float | None = None,
        message: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out
        self.timeout_s = timeout_s
        if message is None:
            cmd = " ".join(argv[:3]) + (" ..." if len(argv) > 3 else "")
            if timed_out:
                message = f"`{cmd}` timed out after {timeout_s:g} s; is slurmctld responding?"
            elif returncode is None:
                message = f"`{cmd}` could not be run"
            else:
                detail = (stderr or stdout).strip().splitlines()
                first = detail[0] if detail else "no output"
                message = f"`{cmd}` failed (exit {returncode}): {first}"
        super().__init__(message)

    @property
    def temporary(self) -> bool:  # type: ignore[override]
        """Timeouts and an unreachable slurmctld are worth retrying; refusals are not."""
        if self.timed_out:
            return True
        text = f"{self.stderr}\n{self.stdout}".lower()
        return any(marker in text for marker in _SLURM_TEMPORARY_MARKERS)


# What Slurm's commands print when slurmctld is down, restarting or overloaded.
_SLURM_TEMPORARY_MARKERS = (
    "unable to contact slurm controller",
    "socket timed out on send/recv",
    "slurm_persist_conn_open",
    "connection refused",
    "slurmctld not responding",
    "resource temporarily unavailable",
)


class SlurmParseError(SlurmError):
    """Slurm printed something vcluster cannot read."""


# --- OpenNebula ---------------------------------------------------------------------------


class OneError(VclusterError):
    """Base for failures talking to OpenNebula. ``code`` is oned's error code if any."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        self.code = code
        super().__init__(message)


class OneTemporaryError(OneError):
    """Worth retrying: oned unreachable, timed out, or failed internally."""

    temporary = True


class OneUnavailable(OneTemporaryError):
    """oned could not be reached (connection refused, DNS, TLS, timeout)."""


class OneInternalError(OneTemporaryError):
    """oned answered with an internal error (INTERNAL 0x2000, LOCKED, REPLICATION, ...)."""


class OnePermanentError(OneError):
    """Retrying cannot help: fix credentials, permissions or the request."""


class OneAuthError(OnePermanentError):
    """oned rejected the credentials (AUTHENTICATION 0x100)."""


class OneAuthorizationError(OnePermanentError):
    """The user may not do this (AUTHORIZATION 0x200)."""


class OneBadRequest(OnePermanentError):
    """oned refused the request as made (ACTION, XML_RPC_API, ALLOCATE, faults)."""


class OneNotFound(OnePermanentError):
    """The object does not exist (NO_EXISTS 0x400)."""


# --- controller ----------------------------------------------------------------------------


class ControllerStale(VclusterError):
    """The controller's heartbeat is too old: hooks refuse rather than queue into a void."""
