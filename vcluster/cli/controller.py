"""``vcluster controller run``: the daemon that boots and terminates VMs for Slurm.

It runs in the foreground (systemd or the testbed supervises it), logs to stderr and to
``<log_dir>/controller.log``, and stops cleanly on SIGTERM or SIGINT (the pass in progress
finishes, the wake-up socket and lock are removed).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from vcluster.config import Config, load_config
from vcluster.errors import ConfigError
from vcluster.journal import logging_handler, open_sink

if TYPE_CHECKING:
    from vcluster.controller.loop import Controller
    from vcluster.metrics import Metrics
    from vcluster.one_events import EventSubscriber

log = logging.getLogger("vcluster.controller")

GIL_SWITCH_S = 0.0005
"""How long a thread may hold Python's lock while another waits for it (Python's default:
5 ms). The controller's threads (the pass, its boot workers, the hook server's, the event
subscriber, the waiting prologs' reader) mostly wait for I/O: each time one comes back from a
database commit, a socket or a child process, it waited up to the full interval for
whichever thread held the lock meanwhile, several times per VM booted. Measured in the
1,000-job burst (benchmarks/burst.py, two cores): with 5 ms a pass took 19 ms of wall time
per boot for 4 ms of CPU, and the last VM was requested 8 s after Slurm's ask; with 0.5 ms,
5 s, for less CPU in all."""


def _setup_logging(config: Config, debug: bool) -> logging.Handler:
    package_logger = logging.getLogger("vcluster")
    package_logger.setLevel(logging.DEBUG if debug else logging.INFO)
    sink = open_sink(config.controller.log_to)
    if sink is not None:  # journald or syslog (controller.log_to)
        journal_handler: logging.Handler = logging_handler(sink, "vcluster-controller")
        package_logger.addHandler(journal_handler)
        if os.environ.get("JOURNAL_STREAM"):  # stderr goes to the journal too: once is enough
            package_logger.propagate = False
        elif not logging.getLogger().handlers:
            logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
        return journal_handler
    os.makedirs(config.controller.log_dir, exist_ok=True)
    handler = logging.FileHandler(os.path.join(config.controller.log_dir, "controller.log"),
                                  encoding="utf-8")
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s controller[{os.getpid()}] %(name)s %(levelname)s %(message)s"))
    package_logger.addHandler(handler)
    if _stderr_is(handler.baseFilename):
        # stderr already goes to controller.log (the testbed, `>> controller.log 2>&1`):
        # the root's stderr handler would write every line a second time
        package_logger.propagate = False
    elif not logging.getLogger().handlers:  # not under the `vcluster` group's basicConfig
        logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return handler


def _stderr_is(path: str) -> bool:
    """Whether this process's stderr is the file at ``path``."""
    try:
        here, there = os.fstat(sys.stderr.fileno()), os.stat(path)
    except (AttributeError, OSError, ValueError):  # no file behind stderr (a test's capture)
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


@click.group("controller")
def controller_group() -> None:
    """Run the vcluster controller.

    \b
    Example:
      vcluster --config /etc/vcluster/vcluster.toml controller run
    """


@controller_group.command("run")
@click.option("--once", is_flag=True, help="Run a single pass and exit (for cron or tests).")
@click.pass_context
def run(ctx: click.Context, once: bool) -> None:
    """Run the controller in the foreground until SIGTERM (or one pass with --once).

    Slurm's hooks hand it their requests through <state_dir>/hooks.sock (it records them
    and answers) and wake it through <state_dir>/wake.sock; it also runs a pass every
    controller.interval_s seconds. Worker VMs fetch their join script and munge key from
    its join endpoint (controller.join_address). Logs go to stderr and to journald, syslog
    or <log_dir>/controller.log (controller.log_to).

    \b
    Example:
      VCLUSTER_CONFIG=/etc/vcluster/vcluster.toml vcluster controller run
    """
    obj = ctx.obj or {}
    config = load_config(obj.get("config_path"))
    log_handler = _setup_logging(config, bool(obj.get("debug")))
    try:
        _run(config, once)
    finally:
        logging.getLogger("vcluster").removeHandler(log_handler)
        logging.getLogger("vcluster").propagate = True
        log_handler.close()


def _serve_metrics(config: Config, metrics: Metrics | None) -> Any:
    """Start the Prometheus endpoint the config asks for (or none); its server."""
    port, address = config.controller.metrics_port, config.controller.metrics_address
    if metrics is None or port is None:
        return None
    try:
        server = metrics.serve(address, port)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {address}:{port}: {exc.strerror}; "
                          "free that port or choose another", key="controller.metrics_port",
                          path=config.path) from exc
    log.info("Prometheus metrics at http://%s:%d/metrics", address, server.server_address[1])
    return server


def _watch_events(config: Config, metrics: Metrics | None) -> EventSubscriber | None:
    """Subscribe to oned's state-change events if ``opennebula.events`` is set (else None):
    a change of this cluster's VMs, or of a host, wakes the loop for a pass at once."""
    from vcluster.one_events import EventSubscriber, OneEvent, wakes
    from vcluster.wake import send_wake

    if not config.opennebula.events:
        return None
    state_dir, cluster = config.controller.state_dir, config.controller.cluster_name

    def on_event(event: OneEvent) -> None:
        woke = wakes(event, cluster)
        if metrics is not None:
            metrics.one_event(event.object, woke=woke)
        if woke:
            send_wake(state_dir)

    subscriber = EventSubscriber(config.opennebula.events, on_event,
                                 on_connect=lambda: send_wake(state_dir))
    subscriber.start()
    return subscriber


def _serve_join(config: Config, sessions: Any) -> Any:
    """Start the join endpoint worker VMs fetch their join script and munge key from."""
    from vcluster.controller.guest import join_endpoint, munge_key_b64
    from vcluster.controller.join_server import JoinServer
    from vcluster.one import OneClient
    from vcluster.vmtemplate import guest_script_bytes

    host, port = join_endpoint(config)
    try:
        server = JoinServer(host, port, sessions=sessions, one=OneClient(config.opennebula),
                            munge_key_b64=munge_key_b64(config), join_script=guest_script_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot serve the join endpoint on {host}:{port}: {exc.strerror}; "
                          "set controller.join_address to an address of this host that worker "
                          "VMs reach, with a free port", key="controller.join_address",
                          path=config.path) from exc
    server.start()
    return server


def _run(config: Config, once: bool) -> None:
    from vcluster import db
    from vcluster.controller.act import Actor
    from vcluster.controller.guest import guest_context
    from vcluster.controller.hook_server import HookServer
    from vcluster.controller.leader import leadership_for, name_sessions
    from vcluster.controller.loop import Controller, acquire_lock, run_loop
    from vcluster.controller.pg_wake import WakeRelay
    from vcluster.hook_front import job_finished_dir
    from vcluster.hooks import write_job_finished_wrapper
    from vcluster.metrics import Metrics
    from vcluster.one import OneClient
    from vcluster.slurm import Slurm
    from vcluster.slurmconf import default_program_dir
    from vcluster.versions import read_versions
    from vcluster.wake import WakeListener, send_wake

    sys.setswitchinterval(GIL_SWITCH_S)  # before any thread starts
    state_dir = config.controller.state_dir
    guest = guest_context(config)  # refuse a missing munge key or slurmctld address first
    lock = acquire_lock(state_dir)
    programs = job_finished_dir(config.slurm.conf, default_program_dir())
    wrapper = write_job_finished_wrapper(config, programs)
    log.info("strigger backup program for the epilog: %s", wrapper)
    engine = db.make_engine(config.database)
    name_sessions(engine)  # a standby that deposes this controller ends them all
    try:
        sessions = db.session_factory(engine)
        metrics = Metrics() if config.controller.metrics_port is not None else None
        slurm = Slurm(config.slurm,
                      on_command=metrics.slurm_command if metrics is not None else None)
        one = OneClient(config.opennebula,
                        on_call=metrics.one_call if metrics is not None else None)
        versions = read_versions(slurm, one)  # refuses a Slurm or oned it does not drive
        for side, error in (("Slurm", versions.slurm_error),
                            ("OpenNebula", versions.opennebula_error)):
            if error:
                log.warning("cannot read the %s version at start (passes wait for it): %s",
                            side, error)
        actor = Actor(config, sessions, slurm, one, guest, metrics=metrics,
                      one_client=lambda: OneClient(  # one per boot worker: not thread-safe
                          config.opennebula,
                          on_call=metrics.one_call if metrics is not None else None))
        leadership = leadership_for(config.database.url, config.controller.cluster_name,
                                    lease_s=config.controller.leader_lease_s)
        controller = Controller(config, sessions, slurm, one, actor, metrics=metrics,
                                leadership=leadership)
        listener = WakeListener(state_dir)
        metrics_server = _serve_metrics(config, metrics)
        # alive (or standing by, the leader's heartbeat then counts) before the first
        # request is taken: hooks check the heartbeat
        controller.lead()
        join_server = _serve_join(config, sessions)
        hook_server = HookServer(config, sessions, slurm, program_dir=programs,
                                 metrics=metrics)
        hook_server.start()
        events = None if once else _watch_events(config, metrics)
        relay = None
        if leadership.shared and WakeRelay.usable(config.database.url):
            relay = WakeRelay(config.database.url, config.controller.cluster_name,
                              lambda: send_wake(state_dir),
                              retry_s=config.controller.leader_poll_s)
            relay.start()
        stop = threading.Event()

        def _stop(signum: int, _frame: FrameType | None) -> None:
            log.info("got %s: stopping after this pass", signal.Signals(signum).name)
            stop.set()
            send_wake(state_dir)

        previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        log.info("controller started: pid %d, cluster %s, database %s, OpenNebula %s at %s, "
                 "Slurm %s with slurm.conf %s, pass every %g s%s, %s", os.getpid(),
                 config.controller.cluster_name, engine.url,
                 versions.opennebula or "(version unknown)", config.opennebula.xmlrpc,
                 versions.slurm or "(version unknown)", config.slurm.conf,
                 config.controller.interval_s,
                 f" and on OpenNebula's events from {config.opennebula.events}"
                 if events is not None else "",
                 "leading" if leadership.leading else "standing by (another controller "
                 f"leads; trying every {config.controller.leader_poll_s:g} s)")
        try:
            passes = run_loop(controller, listener, interval_s=config.controller.interval_s,
                              stop=stop, once=once)
        finally:
            if events is not None:
                events.stop()
            hook_server.stop()
            if relay is not None:
                relay.stop()
            join_server.stop()
            listener.close()
            _give_up_lead(controller)
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        controller.stopped()
        log.info("controller stopped after %d passes", passes)
    finally:
        engine.dispose()
        lock.close()


def _give_up_lead(controller: Controller) -> None:
    """Free the lead at once (a standby takes it at its next try) and drop this process's
    row from the list of controllers."""
    from vcluster import db

    controller.leadership.close()
    if not controller.leadership.shared:
        return
    try:
        with db.transaction(controller.sessions) as s:
            db.forget_controller(s)
    except Exception as exc:
        log.error("cannot remove this controller from the list of controllers: %s", exc)
