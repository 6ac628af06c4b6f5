"""The policy node and the MuJoCo sim mock as separate processes over real DDS on loopback (started through
`robo deploy`, as an operator would): limits, disarm and dry run, the trained policy against `robo eval`, the other
command interfaces, operator takeover, the teleop bridge, and the harness's own guards (a stranger in the
domain, SIGTERM)."""

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from hardware.deploy_config import load_deploy_config
from hardware.ros_convert import pose_to_arrays
from robo.bench.node import LOWDIM, REPO, fresh_checkpoint, unsafe_commands, wait_for

DDS_FIXTURE = REPO / "tests" / "fixtures" / "lift_onestep" / "best"  # scripts/make_dds_fixture.sh


def parent_pid(pid):
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])


# ---------------------------------------------------------------------------------------------- over DDS
@pytest.mark.ros
@pytest.mark.usefixtures("own_ros_domain")
def test_node_drives_the_sim_mock_over_dds_within_limits(tmp_path):
    """`robo deploy` starts the sim mock and the policy node (two processes, DDS on loopback); a probe in this
    process watches: commands flow at the control rate, each stays within one step of a measured pose and inside
    the workspace, the arm moves, disarming stops commands and dry run diverts them to ~/proposed."""
    from robo.bench.node import Probe

    ckpt = fresh_checkpoint(tmp_path / "ckpt", LOWDIM)
    limits = load_deploy_config(REPO / "hardware" / "robots" / "sim_panda_deploy.yaml").safety
    probe = Probe()
    deploy = subprocess.Popen([sys.executable, "-m", "robo.cli", "deploy", "--launch", "launch/sim.launch.yaml",
                               "--checkpoint", str(ckpt), "--seconds", "170"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: len(probe.commands) >= 60 or deploy.poll() is not None, 150), "no commands in 150 s"
        assert deploy.poll() is None, deploy.stdout.read()
        probe.check_alone(robots=1)  # our mock, and no other left running in this domain
        commands, poses = list(probe.commands), list(probe.poses)
        # Each target is within one step of a pose the mock published just before it (the node integrates from
        # the measured pose), and never further outside the box than that pose.
        for recv, cmd in commands[5:]:
            recent = [p for t, p in poses if recv - 0.4 < t <= recv]
            sent = {f"{i}": (0.0, *pose_to_arrays(p)) for i, p in enumerate(recent)}
            ok = []
            for key in sent:
                cmd.header.frame_id = key
                ok.append(not unsafe_commands([(recv, cmd)], sent, limits))
            assert any(ok), "a command is more than one step away from every recent measured pose"
        positions = np.array([pose_to_arrays(p)[0] for _, p in poses])
        assert np.ptp(positions, axis=0).max() > 0.005, "the simulated arm did not move"
        # Diagnostics are published on their own period: the newest may predate the probe's last commands.
        assert wait_for(lambda: bool(probe.diagnostics) and probe.diagnostics[-1]["commands"] >= 60, 10)
        diag = probe.diagnostics[-1]
        assert diag["armed"] and not diag["stale_streams"]

        assert probe.call("/robo_policy_node/arm", False)
        time.sleep(0.3)
        count = len(probe.commands)
        time.sleep(1.0)
        assert len(probe.commands) == count, "commands kept coming after disarm"
        assert probe.call("/robo_policy_node/dry_run", True) and probe.call("/robo_policy_node/arm", True)
        assert wait_for(lambda: len(probe.proposed) >= 10, 10)
        assert len(probe.commands) == count, "dry run executed commands"
    finally:
        probe.close()
        if deploy.poll() is None:
            deploy.send_signal(subprocess.signal.SIGINT)
        out, _ = deploy.communicate(timeout=30)
    assert "starting" in out and "Traceback" not in out, out[-2000:]


def test_the_dds_fixture_loads_with_the_strict_loader():
    """The committed one-step Lift policy that the DDS test deploys was saved by the current code: the strict loader
    takes it and the sim's low-dim observations feed it. If this fails, remake it: bash scripts/make_dds_fixture.sh."""
    from policies.checkpoint import check_against, load_checkpoint, read_config

    try:
        policy = load_checkpoint(DDS_FIXTURE)
        check_against(policy, LOWDIM, 7)
    except ValueError as err:
        pytest.fail(f"{err} -- remake the fixture with: bash scripts/make_dds_fixture.sh")
    assert policy.spec.n_action_steps == 8 and read_config(DDS_FIXTURE)["extra"]["task"] == "Lift"
    assert sum(f.stat().st_size for f in DDS_FIXTURE.iterdir()) < 4_000_000, "keep the committed fixture small"


@pytest.mark.ros
@pytest.mark.usefixtures("own_ros_domain")
def test_trained_policy_over_dds_agrees_with_robo_eval(tmp_path):
    """The committed one-step Lift policy (tests/fixtures/lift_onestep: see its README) deployed as an operator
    would: `robo deploy --launch launch/sim.launch.yaml` starts the sim mock and the policy node (separate
    processes, DDS on loopback). Once the node commands, the mock restarts its seeds (/sim/reset) and the next 10
    episodes (seeds 10000-10009) count, the node re-armed before each (a fresh history, as eval starts an episode);
    `robo eval` then runs the same checkpoint on the same seeds and horizon with the node's schedule (plan-ahead).
    Same filter, same runner, same noise (the node's noise_seed restarts the policy's noise at each arming as eval
    does per episode), so the success counts agree within two episodes: the DDS loop runs on wall-clock time on a
    shared CPU (late observations are held, late actions dropped: the node's diagnostics count them), which can
    turn a borderline grasp into a regrasp or a miss. On the shared 2-core machine, process planner, every one of 14
    completed runs with the seeded noise scored 10/10 against eval's 10/10 (three more failed in the harness: once
    the mock's Ctrl-C traceback, since fixed in hardware/ros_spin.py, twice this seeds check: a failed episode ran to
    200 steps because the mock never got the test's parameter file, a CLI bug now fixed), with episode lengths within a step or two of eval's, or
    ~14 % longer in the runs where the node's timer fired just before the mock published (the node then acts on a
    state one 50 ms period old, and its absolute pose target undershoots by the last step's motion). The deployed
    policy must itself succeed in at least 8 of 10 (an untrained policy scores 0/10 on both paths), so a broken
    deployment cannot pass by agreeing on failure."""
    import yaml
    from std_srvs.srv import Trigger

    from robo.bench.node import Probe
    from robo.evaluate import EvalConfig, evaluate_checkpoint

    checkpoint, episodes, horizon = DDS_FIXTURE, 10, 150  # successes take ~40 steps, a regrasp ~30 more
    mock = yaml.safe_load((REPO / "launch" / "params" / "sim_mock.yaml").read_text())
    mock["/**"]["ros__parameters"].update(horizon=horizon, seed=10_000)
    (tmp_path / "mock.yaml").write_text(yaml.safe_dump(mock))
    # The node restarts the policy's noise at each arming from (noise_seed, k), as robo eval --seed 10000 does for
    # its episode k: both paths draw the same noise, so they differ only by what DDS and wall-clock time change.
    params = yaml.safe_load((REPO / "hardware" / "robots" / "sim_panda_deploy.yaml").read_text())
    params["/**"]["ros__parameters"]["noise_seed"] = 10_000
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(params))
    probe = Probe()
    probe.check_alone(robots=0, discovery_s=2.0)  # nothing left running in this domain by an earlier run
    started = time.monotonic()
    deploy = subprocess.Popen([sys.executable, "-m", "robo.cli", "deploy", "--launch", "launch/sim.launch.yaml",
                               "--checkpoint", str(checkpoint), "--arg", f"mock_params:={tmp_path / 'mock.yaml'}",
                               "--arg", f"params:={tmp_path / 'node.yaml'}",
                               "--seconds", "400"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        # The mock starts stepping before the node is up: once commands flow, start a fresh episode.
        assert wait_for(lambda: len(probe.commands) >= 10 or deploy.poll() is not None, 150), "no commands in 150 s"
        assert deploy.poll() is None, deploy.stdout.read()
        probe.check_alone(robots=1)
        client = probe.node.create_client(Trigger, "/sim/reset")
        assert client.wait_for_service(timeout_sec=20), "no /sim/reset service"
        future = client.call_async(Trigger.Request())
        assert wait_for(future.done, 20) and future.result().success, "the mock did not reset"
        answer = dict(part.split() for part in future.result().message.split(", "))  # "episode N, seed S, mock P"
        first_episode, mock_pid = int(answer["episode"]), int(answer["mock"])
        assert parent_pid(mock_pid) == deploy.pid, f"/sim/reset was answered by process {mock_pid}, not our mock"
        counted = time.monotonic()

        def finished():
            return [e for e in probe.episodes if e.get("mock") == mock_pid and e["episode"] >= first_episode]

        # Between episodes the operator re-arms the node (~/arm true), which starts a fresh observation history and
        # gripper latch, as robo eval starts each episode: nothing of the last episode leaks into the next.
        assert probe.call("/robo_policy_node/arm", True)
        deadline, seen = time.monotonic() + 40 + episodes * 12, 0
        while len(finished()) < episodes and deploy.poll() is None and time.monotonic() < deadline:
            if len(finished()) > seen:
                seen = len(finished())
                assert probe.call("/robo_policy_node/arm", True)
            time.sleep(0.005)
        assert len(finished()) >= episodes, f"{len(finished())} of {episodes} episodes over DDS"
        assert deploy.poll() is None, deploy.stdout.read()
        dds_s = time.monotonic() - counted
        # Mock ticks (pose publications) in the counted window after which no new command arrived before the next.
        ticks = [t for t, _ in probe.poses if t >= counted]
        sent = np.array([t for t, _ in probe.commands if t >= counted])
        idle = sum(not np.any((sent > a) & (sent <= b)) for a, b in zip(ticks, ticks[1:]))
        diag = {k: v for k, v in (probe.diagnostics or [{}])[-1].items()
                if k in ("holds", "dropped_actions", "late_plans", "missed_deadlines", "overruns", "loop_ms_p99")}
    finally:
        probe.close()
        if deploy.poll() is None:
            deploy.send_signal(subprocess.signal.SIGINT)
        out, _ = deploy.communicate(timeout=30)
    assert "Traceback" not in out, out[-2000:]
    over_dds = sorted(finished(), key=lambda e: e["episode"])[:episodes]
    seeds = [e["seed"] for e in over_dds]
    # The mock runs on the test's parameter file: its episodes end at the test's horizon. (Until the CLI kept every
    # repeated --arg, the second one dropped mock_params and the mock ran at Lift's default 200: seen only when an
    # episode failed, in full-suite runs.)
    assert f"horizon {horizon}," in out, "the sim mock did not get the test's parameter file"
    assert seeds == list(range(10_000, 10_000 + episodes)) and all(
        e["steps"] <= horizon and e["horizon"] == horizon for e in over_dds), \
        f"seeds {seeds}, lengths {[e['steps'] for e in over_dds]}, first counted episode {first_episode}"
    node = load_deploy_config(REPO / "hardware" / "robots" / "sim_panda_deploy.yaml")  # what launch/sim runs
    evaluated = evaluate_checkpoint(EvalConfig(checkpoint=checkpoint, episodes=episodes, seed=10_000, num_envs=1,
                                               horizon=horizon, plan_ahead=node.plan_ahead, video_episodes=0,
                                               output_dir=tmp_path / "eval", progress=False))
    assert evaluated["seeds"] == seeds
    dds, sim = sum(e["success"] for e in over_dds), sum(evaluated["successes"])
    report = (f"seeds {seeds[0]}-{seeds[-1]}, horizon {horizon}: over DDS {dds}/{episodes} "
              f"(lengths {[e['steps'] for e in over_dds]}, {dds_s:.0f} s), robo eval {sim}/{episodes} "
              f"(lengths {evaluated['lengths']}); {time.monotonic() - started:.0f} s in all; node {diag}; "
              f"{idle} of {len(ticks) - 1} mock ticks without a new command")
    print(report)
    assert dds >= 8, report
    assert abs(dds - sim) <= 2, report


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.parametrize("output", ["joint_trajectory", "twist"])
@pytest.mark.usefixtures("own_ros_domain")
def test_joint_trajectory_and_twist_interfaces_with_a_camera_over_dds(tmp_path, output):
    """The other two command interfaces, with an image policy fed by the mock's rendered camera (rgb8 over DDS):
    the node commands, the mock executes (the arm moves), and nothing goes stale for long."""
    import yaml

    from robo.bench.node import Probe

    ckpt = fresh_checkpoint(tmp_path / "ckpt", {**LOWDIM, "agentview_rgb": ((84, 84, 3), "uint8")})
    params = yaml.safe_load((REPO / "hardware" / "robots" / "sim_panda_deploy.yaml").read_text())
    params["/**"]["ros__parameters"].update(output=output,
                                            image_topics=["agentview_rgb=/camera/agentview/color/image_raw"])
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(params))
    mock = yaml.safe_load((REPO / "launch" / "params" / "sim_mock.yaml").read_text())
    mock["/**"]["ros__parameters"].update(cameras=["agentview"])
    (tmp_path / "mock.yaml").write_text(yaml.safe_dump(mock))
    probe = Probe()
    deploy = subprocess.Popen([sys.executable, "-m", "robo.cli", "deploy", "--checkpoint", str(ckpt), "--arg",
                               f"params:={tmp_path / 'node.yaml'}", f"mock_params:={tmp_path / 'mock.yaml'}",
                               "--seconds", "170"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        assert wait_for(lambda: bool(probe.diagnostics) and probe.diagnostics[-1].get("commands", 0) >= 40, 150)
        probe.check_alone(robots=1)
        positions = np.array([pose_to_arrays(p)[0] for _, p in probe.poses])
        assert np.ptp(positions, axis=0).max() > 0.005, "the simulated arm did not move"
        diag = probe.diagnostics[-1]
        assert diag["commands"] > diag.get("hold_ticks", 0), diag
    finally:
        probe.close()
        deploy.send_signal(subprocess.signal.SIGINT)
        out, _ = deploy.communicate(timeout=30)
    assert "Traceback" not in out, out[-2000:]


@pytest.mark.ros
@pytest.mark.usefixtures("own_ros_domain")
def test_a_sim_mock_left_running_in_the_domain_is_named_not_joined(tmp_path):
    """A mock left running (here: started on purpose) would feed the node its state and answer /sim/reset beside
    the one under test; the probe's check says so before anything is counted."""
    from robo.bench.ros_probe import MOCK_PARAMS, Probe, RosProcess

    stranger = RosProcess("sim.ros_mock", MOCK_PARAMS, {}, tmp_path / "stranger.log")
    probe = Probe()
    try:
        assert wait_for(lambda: probe.node.count_publishers("/joint_states") > 1, 60), stranger.log()[-1000:]
        with pytest.raises(RuntimeError, match="another sim mock or driver runs in this domain"):
            probe.check_alone(robots=0)
        probe.check_alone(robots=1)  # as the bench expects with its own mock
    finally:
        probe.close()
        stranger.stop()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a shell without job control does to `cmd &`


@pytest.mark.ros
@pytest.mark.usefixtures("own_ros_domain")
@pytest.mark.parametrize("stop", ["sigterm", "sigint_from_a_background_shell"])
def test_a_stop_signal_to_robo_deploy_stops_what_it_started(tmp_path, stop):
    """`timeout`, `kill` or systemd end `robo deploy` with SIGTERM; Ctrl-C sends SIGINT, also when the launcher was
    started by a shell that ignores SIGINT for background jobs. Its children (mock, node) stop with it instead of
    living on in the ROS domain."""
    ckpt = fresh_checkpoint(tmp_path / "ckpt", LOWDIM)
    deploy = subprocess.Popen([sys.executable, "-m", "robo.cli", "deploy", "--checkpoint", str(ckpt)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              preexec_fn=_ignore_sigint if stop != "sigterm" else None)
    children_file = f"/proc/{deploy.pid}/task/{deploy.pid}/children"
    try:
        assert wait_for(lambda: len(open(children_file).read().split()) == 2, 30), "robo deploy started no children"
        children = [int(pid) for pid in open(children_file).read().split()]
        time.sleep(3)  # let them get into their imports or their spin
        deploy.send_signal(signal.SIGTERM if stop == "sigterm" else signal.SIGINT)
        assert deploy.wait(timeout=30) == 0  # a stop asked for
        assert wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in children), 5), \
            "a child of robo deploy outlived it"
    finally:
        if deploy.poll() is None:
            deploy.kill()
        deploy.communicate(timeout=30)


def test_the_unsafe_command_check_can_fail():
    """The checker the DDS tests and the fuzz bench rely on flags each kind of violation."""
    from hardware.safety import SafetyLimits

    def cmd(frame, pos, quat=(1.0, 0, 0, 0)):
        return (0.0, SimpleNamespace(header=SimpleNamespace(frame_id=frame), pose=SimpleNamespace(
            position=SimpleNamespace(x=pos[0], y=pos[1], z=pos[2]),
            orientation=SimpleNamespace(x=quat[0], y=quat[1], z=quat[2], w=quat[3]))))

    limits = SafetyLimits(workspace_low=(0, -1, 0), workspace_high=(1, 1, 1))
    sent = {"a": (0.0, np.array([0.5, 0, 0.5]), np.array([1.0, 0, 0, 0])),
            "out": (0.0, np.array([1.2, 0, 0.5]), np.array([1.0, 0, 0, 0]))}
    assert unsafe_commands([cmd("a", (0.54, 0, 0.5)), cmd("out", (1.16, 0, 0.5))], sent, limits) == []
    problems = unsafe_commands([cmd("a", (0.56, 0, 0.5)), cmd("out", (1.21, 0, 0.5)), cmd("zz", (0.5, 0, 0.5)),
                                cmd("a", (0.5, 0, 0.5), (0, 0, 0, 1.0)), cmd("a", (np.nan, 0, 0.5))], sent, limits)
    assert len(problems) == 5 and "step" in problems[0] and "leaves the workspace" in problems[1]
    assert "unknown pose" in problems[2] and "rotation" in problems[3] and "malformed" in problems[4]


@pytest.mark.ros
@pytest.mark.usefixtures("own_ros_domain")
def test_operator_takeover_is_filtered_recorded_and_hands_back(tmp_path):
    """A probe plays the arm; an operator twist takes over at once (its step, through the same filter, becomes the
    command), the policy resumes when the twist stops, and the session bag holds commands and per-tick
    provenance."""
    from geometry_msgs.msg import TwistStamped
    from rclpy.qos import qos_profile_sensor_data
    from rosbags.rosbag2 import Reader
    from std_msgs.msg import String

    from robo.bench.ros_probe import Probe, RosProcess

    ckpt = fresh_checkpoint(tmp_path / "ckpt", LOWDIM)
    bag = tmp_path / "session"
    probe = Probe()
    twist_pub = probe.node.create_publisher(TwistStamped, "/operator/twist", qos_profile_sensor_data)
    provenance = []
    probe.node.create_subscription(String, "/robo_policy_node/provenance", lambda m: provenance.append(m.data), 100)
    node = RosProcess("hardware.ros_node", REPO / "hardware" / "robots" / "sim_panda_deploy.yaml",
                      {"checkpoint": str(ckpt), "record_bag": str(bag)}, tmp_path / "node.log")
    seq = [0]

    def tick(operator=None):
        seq[0] += 1
        probe.publish_state(seq[0])
        if operator is not None:
            msg = TwistStamped()
            msg.header.stamp = probe.node.get_clock().now().to_msg()
            msg.twist.linear.x = operator
            twist_pub.publish(msg)
        time.sleep(0.02)

    try:
        assert wait_for(lambda: tick() or bool(probe.commands), 150, step_s=0.0), node.log()[-1000:]
        probe.check_alone(robots=0)  # the probe plays the arm, alone in this domain
        probe.commands.clear()
        for _ in range(40):
            tick(operator=0.2)  # 0.2 m/s: 1 cm per 50 ms period
        operated = [m for _, m in list(probe.commands)[5:] if m.header.frame_id in probe.sent]
        assert operated, "no commands while the operator drove"
        for msg in operated:
            step = pose_to_arrays(msg)[0] - probe.sent[msg.header.frame_id][1]
            np.testing.assert_allclose(step, [0.01, 0, 0], atol=1e-6)
        for _ in range(40):
            tick()  # operator gone: the policy takes over again
        sources = [json_source(p) for p in provenance]
        last_operator = max(i for i, s in enumerate(sources) if s == "operator")
        assert "policy" in sources[last_operator:], "the policy did not resume after the operator let go"
    finally:
        node.stop()
        probe.close()
    with Reader(bag) as reader:
        topics = {c.topic: c.msgcount for c in reader.connections}
    assert topics["/robo_policy_node/provenance"] >= 20 and topics["/cartesian_impedance_controller/target_pose"] > 0
    assert topics["/operator/twist"] > 0 and topics["/eef_pose"] > 0
    # The bag imports: the operator's steps are flagged, and each is its 1 cm step along x (action 0.2).
    from policies.checkpoint import read_config
    from robo.bench.ros_probe import HOME_POS
    from robo.data.session_import import import_session
    from robo.data.store import ZarrDataset

    report = import_session(bag, tmp_path / "session.zarr")
    with ZarrDataset.open(tmp_path / "session.zarr") as ds:
        data, info = ds.load(), ds.episodes[0]
    flagged = data["intervention"]
    assert report.operator_steps == flagged.sum() > 0 and (~flagged).sum() > 0
    n = int(flagged.sum())
    np.testing.assert_allclose(data["action"][flagged, :6], np.tile([0.2, 0, 0, 0, 0, 0], (n, 1)), atol=1e-5)
    np.testing.assert_allclose(data["eef_pos"][flagged], np.tile(HOME_POS, (n, 1)), atol=1e-6)
    assert info.source == "deployment"
    assert info.checkpoint_id == f"{ckpt.resolve()}#{read_config(ckpt)['weights_sha256'][:12]}"


def json_source(text):
    import json

    return json.loads(text)["source"]


@pytest.mark.ros
def test_teleop_bridge_publishes_only_while_the_operator_is_active():
    """Keyboard samples become the operator twist (unit action -> output_max per control period) and gripper;
    nothing is published once the operator has been quiet for hold_s, so the policy gets the arm back."""
    import threading

    import rclpy
    from geometry_msgs.msg import TwistStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    from std_msgs.msg import Float64

    from hardware.teleop import KeyboardConfig, KeyboardTeleop
    from hardware.teleop_node import TeleopNode

    keyboard = pytest.importorskip("pynput.keyboard")
    contexts = []
    for _ in range(2):
        ctx = rclpy.Context()
        rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
        contexts.append(ctx)
    device = KeyboardTeleop(KeyboardConfig(listen=False))
    bridge = TeleopNode(context=contexts[0], device=device, overrides={"hold_s": 0.3})
    listener = rclpy.create_node("operator_listener", context=contexts[1])
    twists, grips = [], []
    listener.create_subscription(TwistStamped, "/operator/twist", twists.append, 50)
    listener.create_subscription(Float64, "/operator/gripper", lambda m: grips.append(m.data), 50)
    executors = []
    for ctx, node in zip(contexts, (bridge, listener)):
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        threading.Thread(target=ex.spin, daemon=True).start()
        executors.append(ex)
    try:
        assert wait_for(lambda: listener.count_publishers("/operator/twist") > 0, 20)
        time.sleep(0.5)
        assert twists == []  # idle device: the policy keeps the arm
        device.on_press(keyboard.KeyCode.from_char("w"))
        assert wait_for(lambda: len(twists) >= 10, 10)
        msg = twists[-1]
        assert msg.twist.linear.x == pytest.approx(1.0) and msg.twist.linear.y == 0  # 0.05 m per 0.05 s
        assert grips[-1] == -1.0  # open until toggled
        device.on_release(keyboard.KeyCode.from_char("w"))
        time.sleep(0.6)  # hold_s passes
        count = len(twists)
        time.sleep(0.4)
        assert len(twists) == count, "kept publishing after the operator went quiet"
    finally:
        for ex in executors:
            ex.shutdown()
        bridge.destroy_node()
        listener.destroy_node()
        for ctx in contexts:
            rclpy.try_shutdown(context=ctx)
