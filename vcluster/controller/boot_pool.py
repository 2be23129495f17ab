"""The VM allocations of a pass, several in flight at once on a small pool of worker threads.

Why it exists: a burst's boots went out one after the other, each waiting for its
``one.template.instantiate`` round trip (tens of ms against a real oned), so 1,000 VMs
took tens of seconds to request however fast the pass itself was. Here a boot is written
as steps (a generator, :data:`BootSteps`): its intent (launch row, join token, event) is
recorded and committed in the controller's thread, then it yields the one OpenNebula call
to make; the pool makes that call on a worker thread, with that worker's own client
(:class:`vcluster.one.OneClient` is not thread-safe), and the boot's result (VM id or
error) is sent back into its steps, again in the controller's thread. So:

* Nothing but the OpenNebula call leaves the controller's thread: database sessions, the
  template cache, the NodeAddr batch and the metrics are touched by that thread alone.
* Each boot's order is unchanged: its intent is committed before its call is made (a
  controller that dies mid-pass leaves ``allocating`` launches, adopted by their VMs' tags
  next pass, as before), and its result is recorded after.
* At most ``size`` calls are in flight; a boot's intent is recorded only once a worker is
  free for it, so intents are not written ahead of their calls.
* The plan decided how many boots go out this pass and when (the boot-rate token buckets:
  a boot is not started before its slot), so the limits hold whatever the concurrency: the
  calls only take less wall time.
* A failed call fails only its own boot: its error is thrown into its steps, which handle
  it as the one-at-a-time code did (same events, same messages).

:func:`run_inline` carries out the same steps one after the other in the caller's thread:
``controller.boot_concurrency = 1`` is exactly the sequential behaviour.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from vcluster.controller.ports import OnePort

A = TypeVar("A")

OneCall = Callable[[OnePort], int]
"""The OpenNebula call of a boot, to be made on some client; returns the VM id."""
BootSteps = Generator[OneCall, int, None]
"""A boot: yields its OpenNebula call, receives the call's result (or has its error thrown
in), and returns when its result is recorded."""


def run_inline(steps: BootSteps, one: OnePort) -> None:
    """Carry out a boot's steps here and now, its calls on ``one``."""
    try:
        call = next(steps)
        while True:
            try:
                vm_id = call(one)
            except Exception as exc:  # the boot's own handling decides (as before)
                call = steps.throw(exc)
            else:
                call = steps.send(vm_id)
    except StopIteration:
        return


class BootPool:
    """``size`` worker threads, each with a client of its own from ``client``."""

    def __init__(self, size: int, client: Callable[[], OnePort], *,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.size = size
        self._client = client
        self._monotonic = monotonic
        self._sleep = sleep
        self._local = threading.local()
        self._executor: ThreadPoolExecutor | None = None

    def _call(self, call: OneCall) -> int:
        one = getattr(self._local, "one", None)
        if one is None:
            one = self._local.one = self._client()
        return call(one)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def run(self, actions: Iterable[A], steps_of: Callable[[A], BootSteps],
            done: Callable[[A, Exception | None], None], tick: Callable[[], None],
            not_before: Callable[[A], float] = lambda _: 0.0) -> None:
        """Carry out the boots ``actions`` in order, up to ``size`` calls at once, none
        started before its ``not_before`` (monotonic clock: the boot rate's slot); ``done``
        is told of each boot's end (with the exception that escaped its steps, if any),
        ``tick`` is called between steps (the actor flushes its NodeAddr batch there). Every
        call made is settled before this returns, even when it raises."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.size, thread_name_prefix="vcluster-boot")
        executor = self._executor
        flying: dict[Future[int], tuple[A, BootSteps]] = {}

        def advance(action: A, steps: BootSteps | None, outcome: int | Exception | None
                    ) -> None:
            """The boot's next steps, up to its next call (sent to a worker) or its end."""
            try:
                if steps is None:
                    steps = steps_of(action)
                    call = next(steps)
                elif isinstance(outcome, Exception):
                    call = steps.throw(outcome)
                else:
                    assert outcome is not None
                    call = steps.send(outcome)
            except StopIteration:
                done(action, None)
            except Exception as exc:  # isolation: this boot alone failed
                done(action, exc)
            else:
                flying[executor.submit(self._call, call)] = (action, steps)

        def settle(timeout: float | None = None) -> None:
            finished, _ = wait(list(flying), timeout=timeout, return_when=FIRST_COMPLETED)
            for future in [f for f in flying if f in finished]:  # in the order sent
                action, steps = flying.pop(future)
                error = future.exception()
                if error is not None and not isinstance(error, Exception):
                    raise error  # KeyboardInterrupt, SystemExit: not a boot's failure
                advance(action, steps, error if error is not None else future.result())

        try:
            for action in actions:
                while len(flying) >= self.size:
                    settle()
                    tick()
                while (left := not_before(action) - self._monotonic()) > 0:
                    if flying:  # results recorded while the slot comes
                        settle(timeout=min(left, 0.05))
                    else:
                        self._sleep(min(left, 0.05))
                    tick()
                advance(action, None, None)
                tick()
        finally:
            while flying:
                settle()
