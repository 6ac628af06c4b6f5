"""Test-wide environment: headless rendering and input, ROS 2 discovery kept on loopback."""

import os

import numpy as np
import pytest

# Set before anything imports mujoco, pynput or rclpy.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("PYNPUT_BACKEND", "dummy")
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# A distinct domain per test process keeps parallel runs (and other users of this machine) apart.
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))

from robo.data.schema import ArraySpec, DatasetSchema, EpisodeInfo  # noqa: E402


_DOMAINS_USED = [0]


@pytest.fixture
def own_ros_domain(monkeypatch):
    """A DDS domain of this test's own (101-200, apart from the per-process ones above) for the test's in-process
    probe and the processes it starts: a process of an earlier test that is still shutting down (a sim mock
    answering /sim/reset, reporting /sim/episode) cannot reach this one."""
    _DOMAINS_USED[0] += 1
    domain = 101 + (os.getpid() * 7 + _DOMAINS_USED[0]) % 100
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    return domain


def small_schema(image: bool = False) -> DatasetSchema:
    obs = {"eef_pos": ArraySpec((3,), "float32"), "gripper_qpos": ArraySpec((2,), "float32")}
    if image:
        obs["agentview_rgb"] = ArraySpec((16, 16, 3), "uint8")
    return DatasetSchema(obs=obs, action=ArraySpec((7,), "float32"), fps=20.0, task="Lift",
                         robot_config={"robot": "Panda", "controller": "OSC_POSE"})


def episode_steps(episode: int, length: int, image: bool = False) -> dict[str, np.ndarray]:
    """Deterministic content: every value encodes (episode, step) so misplaced data is caught."""
    t = np.arange(length, dtype=np.float32)
    code = episode * 1000 + t
    steps = {
        "eef_pos": np.stack([code, code + 0.25, code + 0.5], axis=1),
        "gripper_qpos": np.stack([code, -code], axis=1),
        "action": np.repeat(code[:, None], 7, axis=1) / 1e4,
        "reward": (t == length - 1).astype(np.float32),
        "terminal": t == length - 1,
        "success": t == length - 1,
        "timestamp": t.astype(np.float64) / 20.0,
    }
    if image:
        steps["agentview_rgb"] = np.broadcast_to(((episode * 7 + t) % 256).astype(np.uint8)[:, None, None, None],
                                                 (length, 16, 16, 3)).copy()
    return steps


def info(episode: int, success: bool = True, source: str = "scripted") -> EpisodeInfo:
    return EpisodeInfo(source=source, success=success, seed=episode,
                       checkpoint_id="ckpt-test" if source == "policy" else None)


@pytest.fixture
def schema() -> DatasetSchema:
    return small_schema()


# pyrealsense2 and the rclpy wheels each bundle native libraries whose static destructors crash the interpreter at
# exit (SIGSEGV, exit 139) once both are loaded in one process, after every test has passed and the summary is out.
# When both are loaded, end the run with its real exit status and skip those destructors.
_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    import sys

    if _exit_status and "pyrealsense2" in sys.modules and "rclpy" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])
