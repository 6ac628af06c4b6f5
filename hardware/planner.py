"""Where the policy runs when the runner plans ahead with a clock: a thread of this process, or a process of its own.

Both hand out ``submit(history) -> Future`` resolving to ``(chunk, seconds the policy took)``; the runner holds one
plan in flight at a time and never waits for a plan ahead (hardware/runner.py). ``reseed(*entropy)`` restarts the
policy's sampling noise in order with the plans: a plan already submitted finishes on the old stream, every later
one draws from the new. A runner that plans ahead on a planner sends every policy call through it, so the policy's
noise is one stream in one place, the same sequence ``robo eval`` draws in lockstep.

* :class:`ThreadPlanner` (the runner's default; ``robo eval`` emulates the schedule in lockstep and needs none): a
  worker thread. Simple, but the policy's Python shares the interpreter lock with the control tick, so a plan in
  progress stretches the ticks it overlaps.
* :class:`ProcessPlanner` (the ROS node's default, ``planner: process``): the policy in a spawned child process
  (nothing of ROS or DDS is inherited), fed over a pipe, so the control thread shares nothing with inference but
  the CPU. On the shared 2-core machine it measured a 100 Hz obs->command p99 of 4.7-4.9 ms against 5.2-6.0 ms
  with the thread (`robo bench node --planner thread|process`, docs/benchmarks.md), at the price of a second
  process with its own copy of torch and the weights. The child loads the policy with the same loader and checks as the node,
  from the same files, so it runs the weights the node validated. It runs at the node's priority: niced to 19 it
  starved behind the sim mock and the test process and planned late (7/10 Lift successes over DDS in that run).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

History = dict[str, np.ndarray]


class ThreadPlanner:
    """``policy``: an object with ``predict(history) -> chunk`` and, optionally, ``reseed(*entropy)``."""

    def __init__(self, policy: Any):
        self._policy = policy
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy_plan")

    def submit(self, history: History) -> Future:
        return self._pool.submit(timed_predict, self._policy.predict, history)

    def reseed(self, *entropy: int) -> None:
        if hasattr(self._policy, "reseed"):  # on the worker, after any plan in flight
            self._pool.submit(self._policy.reseed, *entropy)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def timed_predict(predict: Callable[[History], np.ndarray], history: History) -> tuple[np.ndarray, float]:
    """(chunk, seconds the policy took)."""
    started = time.perf_counter()
    chunk = np.asarray(predict(history))
    return chunk, time.perf_counter() - started


class PlannerError(RuntimeError):
    """The planner process failed: it could not load the policy, the policy raised, or the process is gone."""


class ProcessPlanner:
    """``load()`` (picklable, e.g. ``functools.partial(load_numpy_policy, config)``) runs in the child and returns an
    object with ``predict(history) -> chunk``. The constructor waits until the child has loaded it, and raises a
    one-line :class:`PlannerError` if it cannot."""

    def __init__(self, load: Callable[[], Any], niceness: int = 0, start_timeout_s: float = 300.0):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, load, niceness), name="policy_planner", daemon=True)
        self._proc.start()
        child.close()
        self._next_id = 0
        self._waiting: _PipeFuture | None = None
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise PlannerError(f"the policy process did not load the policy within {start_timeout_s:.0f} s")
        reply = self._receive()
        if reply[0] != "ready":
            self.close()
            raise PlannerError(f"the policy process could not load the policy: {reply[-1]}")

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def submit(self, history: History) -> Future:
        """Send ``history``; a plan still in flight (the runner forgot it at a reset) is abandoned."""
        self._next_id += 1
        self._waiting = _PipeFuture(self, self._next_id)
        try:
            self._conn.send(("plan", self._next_id, history))
        except (OSError, ValueError) as err:
            self._waiting.fail(PlannerError(f"the policy process is gone ({type(err).__name__}); restart the node"))
        return self._waiting

    def reseed(self, *entropy: int) -> None:
        """The child reseeds after the requests before it (the pipe keeps their order)."""
        try:
            self._conn.send(("reseed", tuple(int(e) for e in entropy)))
        except (OSError, ValueError):
            pass  # the next plan reports the dead process

    def _receive(self) -> tuple[Any, ...]:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            code = self._proc.exitcode if self._proc.exitcode is not None else "unknown"
            return ("gone", f"the policy process exited (code {code}); restart the node")

    def _poll(self) -> None:
        """Collect every reply that has arrived; resolve the waiting future if its reply is among them."""
        while self._waiting is not None and not self._waiting.resolved():
            try:
                ready = self._conn.poll()
            except (EOFError, OSError):
                ready = True
            if not ready:
                if not self._proc.is_alive() and not self._conn.poll():
                    self._waiting.fail(PlannerError(
                        f"the policy process exited (code {self._proc.exitcode}); restart the node"))
                return
            reply = self._receive()
            if reply[0] == "gone":
                self._waiting.fail(PlannerError(reply[1]))
            elif reply[1] == self._waiting.request:  # ("chunk" | "error", request id, payload, seconds)
                if reply[0] == "chunk":
                    self._waiting.set_result((reply[2], reply[3]))
                else:
                    self._waiting.fail(PlannerError(f"the policy raised: {reply[2]}"))
            # else: the reply to an abandoned request

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._conn.send(None)
            except (OSError, ValueError):
                pass
            self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)
        self._conn.close()


class _PipeFuture(Future):
    """A Future whose ``done()`` / ``result()`` collect the planner's reply from the pipe (no thread in between)."""

    def __init__(self, planner: ProcessPlanner, request: int):
        super().__init__()
        self._planner, self.request = planner, request

    def resolved(self) -> bool:
        """Whether the reply is in, without reading the pipe."""
        return super().done()

    def done(self) -> bool:
        if not super().done():
            self._planner._poll()
        return super().done()

    def result(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("no reply from the policy process")
            self._planner._conn.poll(0.001)
        return super().result()

    def fail(self, err: BaseException) -> None:
        if not super().done():
            self.set_exception(err)


def _serve(conn: Any, load: Callable[[], Any], niceness: int) -> None:
    """The child: load the policy, then answer ("plan", id, history) with ("chunk", id, chunk, seconds) and follow
    ("reseed", entropy), in order, until told to stop."""
    if niceness:
        try:
            os.nice(niceness)
        except OSError:
            pass
    try:
        policy = load()
    except Exception as err:  # noqa: BLE001 - reported to the node in one line
        conn.send(("error", 0, f"{type(err).__name__}: {err}".splitlines()[0]))
        return
    conn.send(("ready", ""))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        if request[0] == "reseed":
            if hasattr(policy, "reseed"):
                policy.reseed(*request[1])
            continue
        _, request_id, history = request
        try:
            chunk, seconds = timed_predict(policy.predict, history)
            conn.send(("chunk", request_id, chunk, seconds))
        except Exception as err:  # noqa: BLE001 - the node holds and says why
            conn.send(("error", request_id, f"{type(err).__name__}: {err}".splitlines()[0]))
