"""The one way every node of this stack runs as a process: init, build, spin one persistent executor, shut down.

Building the node is where bad parameters, a missing device or a checkpoint the robot cannot feed surface: those
end the process with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def run_node(build: Callable[[], Any], argv: list[str] | None = None,
             on_stop: Callable[[Any], None] | None = None) -> int:
    """Spin the node ``build()`` returns until Ctrl-C or an external shutdown; ``on_stop(node)`` runs first at exit."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    rclpy.init(args=sys.argv if argv is None else argv)
    try:
        node = build()
    except (ValueError, RuntimeError) as err:  # bad parameters, device or checkpoint: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    except KeyboardInterrupt:  # stopped while still loading (a launch stopped during start-up): a stop, not a crash
        rclpy.try_shutdown()
        return 0
    try:
        executor = SingleThreadedExecutor()  # one persistent executor: no per-spin add/remove of the node
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except SystemError as err:
        # Ctrl-C landing inside compiled code that does not check for it (numba's robosuite controller in the sim
        # mock): CPython reports "returned a result with an exception set", chained to the KeyboardInterrupt.
        if not caused_by_interrupt(err):
            raise
    except RuntimeError:
        if rclpy.ok():  # a publish racing the SIGINT shutdown is not an error; anything else is
            raise
    finally:
        if on_stop is not None:
            on_stop(node)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def caused_by_interrupt(err: BaseException) -> bool:
    """Whether a KeyboardInterrupt is anywhere in ``err``'s chain (raised from it, or while handling it). The
    interrupt can reach compiled code through a Python helper it calls back into (numba's ``_numba_unpickle`` was
    the frame in the one traceback seen, under load); a check of the direct cause alone let that one through."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, KeyboardInterrupt):
            return True
        stack += [e.__cause__, e.__context__]
    return False


def pin_process(cpus: list[int] | tuple[int, ...]) -> list[int]:
    """Pin every thread of this process (DDS's included, and through inheritance every thread started later) to
    ``cpus``; returns the CPUs it runs on now. The real-time practice for a control process: on a robot PC, an
    isolated core (``isolcpus`` or a cpuset) keeps other work from landing between its timer and its publish. On
    the shared 2-core CI machine, where nothing can be isolated, it measured no clear gain (docs/benchmarks.md,
    ``robo bench node --pin-node``)."""
    import os
    from pathlib import Path

    wanted = set(int(c) for c in cpus)
    try:
        os.sched_setaffinity(0, wanted)
    except OSError as err:
        raise ValueError(f"cannot pin to CPUs {sorted(wanted)} ({err.strerror}); this machine has "
                         f"{os.cpu_count()} CPUs, and a cpuset may allow fewer") from None
    for task in Path("/proc/self/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), wanted)
        except OSError:  # a thread that just ended
            pass
    return sorted(os.sched_getaffinity(0))
