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
    try:
        executor = SingleThreadedExecutor()  # one persistent executor: no per-spin add/remove of the node
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        if rclpy.ok():  # a publish racing the SIGINT shutdown is not an error; anything else is
            raise
    finally:
        if on_stop is not None:
            on_stop(node)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
