"""`robo data import-session`: a session bag written by the node's own recorder (real rclpy messages, the node's
topics, types and order; no DDS) becomes dataset steps whose actions, observations and intervention flags are what
the node saw and sent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, TwistStamped
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, Float64, String

from hardware.deploy_config import load_deploy_config
from hardware.ros_convert import fill_pose, gripper_width, numpy_to_image, sec_to_stamp
from hardware.session_recorder import PROVENANCE_TOPIC, SESSION_TOPIC, SessionRecorder, session_description
from robo.cli import main
from robo.data.schema import ArraySpec, DatasetError
from robo.data.session_import import SessionImportConfig, import_session
from robo.data.store import ZarrDataset

SIM_PARAMS = Path(__file__).resolve().parents[1] / "hardware" / "robots" / "sim_panda_deploy.yaml"
ARM = [f"panda_joint{i}" for i in range(1, 8)]
FINGERS = ["panda_finger_joint1", "panda_finger_joint2"]
HOME_Q = np.array([0.0, 0.2, 0.0, -2.0, 0.0, 2.2, 0.8])
QUAT = np.array([1.0, 0.0, 0.0, 0.0])  # xyzw, gripper pointing down
CKPT_ID = "/ckpt/best#0123456789ab"


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of xyzw quaternions."""
    (ax, ay, az, aw), (bx, by, bz, bw) = a, b
    return np.array([aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz])


class NodeSession:
    """Records what hardware/ros_node.py records, in its order: state messages as they arrive, then per tick the
    command on the controller topic, the gripper width when the latched state changes, and the provenance."""

    def __init__(self, path: Path, output: str = "pose", session_record: bool = True, state: bool = True,
                 provenance: bool = True, image_topics: tuple[str, ...] = ()):
        self.config = load_deploy_config(SIM_PARAMS, {"output": output, "image_topics": list(image_topics)})
        self.recorder = SessionRecorder(path)
        self.ns, self.t = 1_700_000_000 * 10**9, 1_700_000_000.0
        self.gripper: float | None = None
        self.with_state, self.with_provenance = state, provenance
        if session_record:
            self._record(SESSION_TOPIC, String(data=json.dumps(session_description(self.config, CKPT_ID))))

    def _record(self, topic: str, msg) -> None:
        self.ns += 1_000_000  # receipt times, as time.time_ns() in the node's callbacks
        self.recorder.record(topic, f"{type(msg).__module__.split('.')[0]}/msg/{type(msg).__name__}", msg, self.ns)

    def state(self, pos, quat=QUAT, q=HOME_Q, fingers=(0.04, 0.04), obj=None, split_joints=False) -> None:
        if not self.with_state:
            return
        stamp = sec_to_stamp(self.t, Time())
        names, values = ARM + FINGERS, [*q, *fingers]
        parts = [(ARM, list(q)), (FINGERS, list(fingers))] if split_joints else [(names, values)]
        for part_names, part_values in parts:  # arm and gripper may come in separate messages
            js = JointState(name=part_names, position=[float(v) for v in part_values])
            js.header.stamp = stamp
            self._record(self.config.joint_states_topic, js)
        pose = fill_pose(PoseStamped(), pos, quat)
        pose.header.stamp, pose.header.frame_id = stamp, "world"
        self._record(self.config.eef_pose_topic, pose)
        obj = np.arange(10, dtype=np.float32) if obj is None else obj
        self._record("/object_state", Float32MultiArray(data=[float(v) for v in obj]))

    def image(self, topic: str, array: np.ndarray) -> None:
        msg = numpy_to_image(array, Image())
        msg.header.stamp = sec_to_stamp(self.t, Time())
        self._record(topic, msg)

    def tick(self, source: str = "policy", target=None, gripper: float = -1.0, interventions=(), reason: str = "",
             twist=None, dry: bool = False, dt: float = 0.05) -> None:
        """One control tick; ``target`` (pos, quat) for a pose command, ``twist`` (6,) for a twist command."""
        self.t += dt
        cfg = self.config
        if source == "operator":  # the operator's twist arrives before the tick that uses it
            op = TwistStamped()
            op.header.stamp = sec_to_stamp(self.t, Time())
            self._record(cfg.operator_twist_topic, op)
        if target is not None or twist is not None:  # a hold publishes nothing, except the watchdog's one hold
            if twist is not None:
                cmd = TwistStamped()
                lin, ang = cmd.twist.linear, cmd.twist.angular
                lin.x, lin.y, lin.z, ang.x, ang.y, ang.z = (float(v) for v in twist)
            else:
                cmd = fill_pose(PoseStamped(), *target)
            cmd.header.stamp, cmd.header.frame_id = sec_to_stamp(self.t, Time()), "world"
            topic = f"/robo_policy_node/proposed/{cfg.output}" if dry else {"pose": cfg.target_pose_topic,
                                                                             "twist": cfg.twist_topic}[cfg.output]
            self._record(topic, cmd)
            if gripper != self.gripper or dry:
                width = gripper_width(gripper, cfg.gripper_open_width, cfg.gripper_closed_width)
                self._record("/robo_policy_node/proposed/gripper" if dry else cfg.gripper_topic, Float64(data=width))
                self.gripper = None if dry else gripper
        if self.with_provenance:
            record = {"t": self.t, "source": source, "interventions": list(interventions)}
            if reason:
                record["reason"] = reason
            self._record(PROVENANCE_TOPIC, String(data=json.dumps(record)))

    def close(self) -> None:
        self.recorder.close()
        assert self.recorder.dropped == 0, self.recorder.error


P0, P1, P2, P3 = (np.array(p) for p in ([-0.1, 0.0, 1.0], [-0.08, 0.01, 1.02], [-0.05, 0.02, 1.05], [0.0, 0.1, 1.1]))
ROT_X = np.array([np.sin(0.025), 0.0, 0.0, np.cos(0.025)])  # 0.05 rad about x


@pytest.fixture
def session_bag(tmp_path) -> tuple[Path, dict]:
    """Two episodes (a disarm between): policy, operator, a stale hold, the watchdog's hold, policy | policy."""
    bag = tmp_path / "session"
    s = NodeSession(bag)
    s.state(P3)  # an older state: the tick uses the newest
    s.state(P0, split_joints=True)
    s.tick(target=(P0 + [0, 0, 0.01], QUAT))  # 1 cm up: z = 0.2
    s.state(P1, q=HOME_Q + 0.01, fingers=(0.03, 0.03), obj=np.full(10, 7.0, np.float32))
    s.tick("operator", target=(P1 + [0.01, 0, 0], quat_mul(ROT_X, QUAT)), gripper=1.0, interventions=("max_step_pos",))
    s.tick("hold", reason="observation is 300 ms old (limit 250 ms)")
    s.state(P2)
    s.tick("hold", target=(P2, QUAT), gripper=1.0, reason="observation is 300 ms old (limit 250 ms)")  # watchdog
    s.tick(target=(P2 - [0.02, 0, 0], QUAT), gripper=1.0)
    for _ in range(3):
        s.tick("hold", reason="disarmed: call the arm service to enable commands")
    s.state(P3)
    s.tick(target=(P3 + [0, 0.005, 0], QUAT))
    s.close()
    return bag, {"times": [1_700_000_000.0 + 0.05 * k for k in (1, 2, 5, 9)]}


def test_session_steps_are_what_the_node_saw_and_sent(session_bag, tmp_path):
    bag, expected = session_bag
    report = import_session(bag, tmp_path / "s.zarr", SessionImportConfig(task="Lift"))
    assert (report.episodes, report.steps, report.operator_steps) == (2, 4, 1)
    with ZarrDataset.open(tmp_path / "s.zarr") as ds:
        assert ds.n_episodes == 2 and list(ds.episode_ends) == [3, 4]
        assert set(ds.schema.obs) == {"eef_pos", "eef_quat", "joint_pos", "gripper_qpos", "object_state"}
        assert ds.schema.fps == 20.0 and set(ds.schema.step_arrays) == {"intervention", "safety_filtered"}
        data = ds.load()
        infos = ds.episodes
    np.testing.assert_allclose(data["action"], [[0, 0, 0.2, 0, 0, 0, -1], [0.2, 0, 0, 0.1, 0, 0, 1],
                                                [-0.4, 0, 0, 0, 0, 0, 1], [0, 0.1, 0, 0, 0, 0, -1]], atol=1e-5)
    assert data["intervention"].tolist() == [False, True, False, False]
    assert data["safety_filtered"].tolist() == [False, True, False, False]
    # Observations: the newest state before each tick (P0 arrived after P3; arm and fingers merged by name).
    np.testing.assert_allclose(data["eef_pos"], np.stack([P0, P1, P2, P3]), atol=1e-6)
    np.testing.assert_allclose(data["eef_quat"][0], QUAT)
    np.testing.assert_allclose(data["joint_pos"][1], HOME_Q + 0.01, atol=1e-6)
    np.testing.assert_allclose(data["gripper_qpos"][:2], [[0.04, 0.04], [0.03, 0.03]], atol=1e-6)
    np.testing.assert_allclose(data["object_state"][:2], [np.arange(10), np.full(10, 7.0)])
    np.testing.assert_allclose(data["timestamp"], expected["times"])
    assert data["truncated"].tolist() == [False, False, True, True] and not data["success"].any()
    first = infos[0]
    assert first.source == "deployment" and first.checkpoint_id == CKPT_ID and not first.success
    assert first.extra["intervention_ranges"] == [[1, 2]] and first.extra["operator_steps"] == 1
    assert first.extra["skipped_ticks"] == {"hold: observation is # ms old": 2,
                                            "hold: disarmed: call the arm service to enable commands": 1}
    assert report.skipped["hold: disarmed: call the arm service to enable commands"] == 3


def test_twist_commands_and_pauses_split_episodes(tmp_path):
    """A twist command over one period is the same step as a pose target; a pause past max_gap_s ends an episode."""
    bag = tmp_path / "twist"
    s = NodeSession(bag, output="twist")
    s.state(P0)
    s.tick(twist=(0, 0, 0.2, 0, 0, 1.0))  # 0.2 m/s and 1 rad/s over 50 ms: 1 cm (0.2) and 0.05 rad (0.1)
    s.state(P1)
    s.tick(twist=(0.2, 0, 0, 0, 0, 0), dt=2.0)
    s.close()
    report = import_session(bag, tmp_path / "t.zarr", SessionImportConfig(task="Lift"))
    assert report.episodes == 2
    with ZarrDataset.open(tmp_path / "t.zarr") as ds:
        np.testing.assert_allclose(ds.load()["action"], [[0, 0, 0.2, 0, 0, 0.1, -1], [0.2, 0, 0, 0, 0, 0, -1]],
                                   atol=1e-6)


def test_camera_images_are_the_frames_the_node_had(tmp_path):
    """rgb8 and 16UC1 depth frames come back in the contract's keys and dtypes, as recorded or resized."""
    rgb_topic, depth_topic = "/camera/agentview/color/image_raw", "/camera/agentview/aligned_depth_to_color/image_raw"
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (12, 16, 3), dtype=np.uint8) for _ in range(3)]
    depths = [rng.integers(0, 4000, (12, 16, 1), dtype=np.uint16) for _ in range(3)]
    s = NodeSession(tmp_path / "cam", image_topics=(f"agentview_rgb={rgb_topic}", f"agentview_depth={depth_topic}"))
    s.state(P0)
    s.image(rgb_topic, frames[0])
    s.image(depth_topic, depths[0])
    s.tick(target=(P0, QUAT))
    s.image(rgb_topic, frames[1])  # a camera faster than the control rate: the tick sees the newest frame
    s.image(rgb_topic, frames[2])
    s.image(depth_topic, depths[2])
    s.tick(target=(P0, QUAT))
    s.close()
    import_session(tmp_path / "cam", tmp_path / "cam.zarr", SessionImportConfig())
    with ZarrDataset.open(tmp_path / "cam.zarr") as ds:
        assert ds.schema.obs["agentview_rgb"] == ArraySpec((12, 16, 3), "uint8")
        assert ds.schema.obs["agentview_depth"] == ArraySpec((12, 16, 1), "uint16")
        data = ds.load()
    np.testing.assert_array_equal(data["agentview_rgb"], np.stack([frames[0], frames[2]]))
    np.testing.assert_array_equal(data["agentview_depth"], np.stack([depths[0], depths[2]]))
    import_session(tmp_path / "cam", tmp_path / "small.zarr", SessionImportConfig(image_size=8))
    with ZarrDataset.open(tmp_path / "small.zarr") as ds:
        assert ds.schema.obs["agentview_rgb"].shape == (8, 8, 3) and ds.schema.obs["agentview_depth"].shape == (8, 8, 1)


def test_appending_checks_the_schema_and_refusals_write_nothing(session_bag, tmp_path, schema):
    bag, _ = session_bag
    out = tmp_path / "s.zarr"
    import_session(bag, out, SessionImportConfig(task="Lift"))
    import_session(bag, out, SessionImportConfig(task="Lift"))  # same schema: appended
    with ZarrDataset.open(out) as ds:
        assert ds.n_episodes == 4
    before = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*"))
    with pytest.raises(DatasetError, match="task is 'PickPlaceCan'"):
        import_session(bag, out, SessionImportConfig(task="PickPlaceCan"))
    with pytest.raises(DatasetError, match="per-step arrays differ"):
        import_session(bag, out, SessionImportConfig(task="Lift", step_arrays=False))
    assert sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*")) == before
    # A dataset recorded elsewhere (other observation keys) is refused the same way.
    other = tmp_path / "other.zarr"
    ZarrDataset.create(other, schema).close()
    with pytest.raises(DatasetError, match="observation keys differ"):
        import_session(bag, other, SessionImportConfig(task="Lift"))
    with ZarrDataset.open(other) as ds:
        assert ds.n_steps == 0
    # Merging keeps the per-step flags.
    from robo.data.tools import merge

    merge([out], tmp_path / "merged.zarr")
    with ZarrDataset.open(tmp_path / "merged.zarr") as ds:
        assert ds.n_episodes == 4 and ds.load(["intervention"])["intervention"].tolist() == [False, True, False, False] * 2
    # --obs-keys picks the keys a dataset has; --no-step-arrays leaves the flags in the episode records only.
    import_session(bag, tmp_path / "pos.zarr", SessionImportConfig(obs_keys=("eef_pos",), step_arrays=False))
    with ZarrDataset.open(tmp_path / "pos.zarr") as ds:
        assert set(ds.schema.obs) == {"eef_pos"} and "intervention" not in ds.keys
        assert ds.episodes[0].extra["intervention_ranges"] == [[1, 2]]


def _refused(capsys, *args: str) -> str:
    assert main(["data", "import-session", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_bags_are_refused_in_one_line(tmp_path, capsys):
    out = str(tmp_path / "out.zarr")
    assert "does not exist" in _refused(capsys, str(tmp_path / "nope"), "-o", out)
    (tmp_path / "notes.txt").write_text("not a bag")
    assert "is not a rosbag2 recording" in _refused(capsys, str(tmp_path / "notes.txt"), "-o", out)
    (tmp_path / "empty").mkdir()
    assert "is not a rosbag2 recording" in _refused(capsys, str(tmp_path / "empty"), "-o", out)

    s = NodeSession(tmp_path / "no_prov", provenance=False)
    s.state(P0)
    s.tick(target=(P0, QUAT))
    s.close()
    assert "no provenance messages" in _refused(capsys, str(tmp_path / "no_prov"), "-o", out)

    s = NodeSession(tmp_path / "no_state", state=False)
    s.tick(target=(P0, QUAT))
    s.close()
    assert "no state messages" in _refused(capsys, str(tmp_path / "no_state"), "-o", out)

    s = NodeSession(tmp_path / "dry")
    s.state(P0)
    s.tick(target=(P0, QUAT), dry=True)
    s.close()
    assert "only dry-run proposals" in _refused(capsys, str(tmp_path / "dry"), "-o", out)

    s = NodeSession(tmp_path / "old", session_record=False)
    s.state(P0)
    s.tick(target=(P0 + [0, 0, 0.01], QUAT))
    s.close()
    assert "--params-file" in _refused(capsys, str(tmp_path / "old"), "-o", out)
    assert not Path(out).exists()
    # With the parameter file the node ran with, the same bag imports (no checkpoint id to keep then).
    assert main(["data", "import-session", str(tmp_path / "old"), "-o", out, "--params-file", str(SIM_PARAMS)]) == 0
    assert "imported 1 episodes (1 steps, 0 by the operator)" in capsys.readouterr().out
    with ZarrDataset.open(out) as ds:
        np.testing.assert_allclose(ds.load()["action"][0], [0, 0, 0.2, 0, 0, 0, -1], atol=1e-6)
        assert ds.episodes[0].checkpoint_id is None
