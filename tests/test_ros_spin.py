"""Pinning a node process to CPUs (the node's ``cpu_affinity``): every thread moves, a bad CPU is one line."""

import os
import threading

import pytest

from hardware.ros_spin import pin_process


def test_pinning_moves_every_thread_and_a_cpu_that_does_not_exist_is_refused_in_one_line():
    before = sorted(os.sched_getaffinity(0))
    started, stop = threading.Event(), threading.Event()
    seen = {}

    def worker():
        started.set()
        stop.wait(5)
        seen["worker"] = sorted(os.sched_getaffinity(0))

    thread = threading.Thread(target=worker)
    thread.start()
    started.wait(5)
    try:
        assert pin_process(before[-1:]) == before[-1:]
        stop.set()
        thread.join(5)
        assert seen["worker"] == before[-1:]  # a thread that existed before the call moved too
        with pytest.raises(ValueError) as err:
            pin_process([os.cpu_count() + 64])
        assert "cannot pin to CPUs" in str(err.value) and "\n" not in str(err.value)
    finally:
        stop.set()
        pin_process(before)
    assert sorted(os.sched_getaffinity(0)) == before


_NODE_THAT_IS_INTERRUPTED = """
import sys
import rclpy.node
from hardware.ros_spin import run_node

class Node(rclpy.node.Node):
    def __init__(self):
        super().__init__("interrupted")
        self.create_timer(0.01, self.tick)

    def tick(self):
        cause = KeyboardInterrupt() if sys.argv[1] == "ctrl-c" else ValueError("a real bug")
        raise SystemError("CPUDispatcher(<function f>) returned a result with an exception set") from cause


class LoadingNode(rclpy.node.Node):  # Ctrl-C while the node still loads its policy
    def __init__(self):
        raise KeyboardInterrupt()

sys.exit(run_node(LoadingNode if sys.argv[1] == "loading" else Node, []))
"""


@pytest.mark.ros
@pytest.mark.parametrize("cause, clean", [("ctrl-c", True), ("bug", False), ("loading", True)])
def test_ctrl_c_inside_compiled_code_stops_the_node_cleanly_and_real_errors_still_surface(cause, clean):
    """Ctrl-C landing in numba code (robosuite's controller in the sim mock) surfaces as a SystemError caused by the
    KeyboardInterrupt: that is a stop (exit 0, no traceback); a SystemError with any other cause is not hidden. So is
    a Ctrl-C while the node is still loading (a launch stopped during start-up)."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", _NODE_THAT_IS_INTERRUPTED, cause], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parents[1])
    if clean:
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-800:]
    else:
        assert done.returncode != 0 and "a real bug" in done.stderr


def test_an_interrupt_inside_compiled_code_is_recognised_through_the_exception_chain():
    """Ctrl-C arriving in a Python helper that compiled code calls back into surfaces as a SystemError whose cause
    or context is the KeyboardInterrupt: both are a stop. A SystemError of its own is not."""
    from hardware.ros_spin import caused_by_interrupt

    def system_error_after(first: BaseException, direct: bool) -> SystemError:
        try:
            try:
                raise first
            except BaseException as inner:
                if direct:
                    raise SystemError("returned a result with an exception set") from inner
                raise SystemError("returned a result with an exception set")
        except SystemError as err:
            return err

    assert caused_by_interrupt(system_error_after(KeyboardInterrupt(), direct=True))
    assert caused_by_interrupt(system_error_after(KeyboardInterrupt(), direct=False))
    assert not caused_by_interrupt(system_error_after(ValueError("bad"), direct=True))
    assert not caused_by_interrupt(SystemError("a real bug"))
