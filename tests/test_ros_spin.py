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
