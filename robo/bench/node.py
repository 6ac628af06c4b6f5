"""``robo bench node``: the policy node as a separate process, measured through real DDS on loopback.

* Latency: a probe process publishes the arm state at ``state_hz``; the end-effector pose carries a sequence
  number in its frame_id, which the node copies into the command it computes from it (commands take the measured
  pose's frame), so each command is matched to the exact observation it came from. Observation-to-command latency
  = command receipt - observation publication, so it includes both DDS hops, the wait for the next control tick
  (at most one state period) and the tick itself. Runs at 50 and 100 Hz low-dim, and at 20 Hz with two 84x84
  cameras. The baseline in the same run is the node's own tick time (diagnostics), i.e. what DDS and the timer add.
* Missed deadlines: control periods the node's timer skipped, plus ticks longer than a period (node diagnostics).
* CPU: the node process's user+system time over the run, as percent of one core.
* Fuzz: at least ``fuzz_messages`` malformed / NaN / out-of-range / stale / out-of-order messages at the 100 Hz
  node; every command it publishes is checked against the limits and against the pose it was computed from.

Weights do not change the cost, so freshly initialised one-step (consistency) policies are used, saved as real
checkpoints and loaded by the node through the normal loader.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hardware.ros_convert import stamp_to_sec
from robo.bench.common import print_json_line, print_table
from robo.bench.soak import soak, soak_rows
from robo.bench.ros_probe import (CAMERAS, HOME_POS, HOME_QUAT, LOWDIM, MOCK_PARAMS, REPO, SIM_PARAMS, Probe,
                                  RosProcess, time_msg, fresh_checkpoint, unsafe_commands, wait_for)

__all__ = ["CAMERAS", "LOWDIM", "NodeBenchConfig", "Probe", "REPO", "fresh_checkpoint", "run_node_bench",
           "unsafe_commands", "wait_for"]


@dataclass
class NodeBenchConfig:
    seconds: float = 10.0  # measured seconds per latency configuration
    state_hz: float = 500.5  # rate of the probe's joint state / pose (bounds the wait for a tick)
    fuzz_messages: int = 100_000  # malformed / NaN / out-of-range / stale / out-of-order messages
    minutes: float = 0.0  # soak: run the node this long at 100 Hz instead (0 = no soak)
    soak_peer: str = "sim"  # soak against: sim = the MuJoCo sim mock at 100 Hz (as deployed); probe = synthetic state
    cameras: bool = True  # also time the 20 Hz configuration with two 84x84 cameras
    startup_timeout_s: float = 120.0  # how long to wait for the node's first command
    frame_cache: bool = True  # also time a two-camera policy with and without the encoder's frame-feature cache
    plan_ahead: bool = True  # the node plans each chunk one tick early, off the control thread (its default)
    planner: str = "process"  # where the node plans ahead: process (its default) or thread
    output_dir: Path = Path("data/bench/node")  # the soak's soak.json (every sample) and soak.png
    pin_node: bool = False  # also pin the node to the last CPU (cpu_affinity) and add an unpinned 100 Hz run as the
    #   baseline; on the shared 2-core machine it measured no clear gain (docs/benchmarks.md)


# --------------------------------------------------------------------------------------------- measurements
class NodeUnderTest:
    """A policy node process on a fresh checkpoint plus the probe that talks to it; with ``sim_peer`` the MuJoCo sim
    mock (its own process, stepping at the node's rate) plays the robot instead and the probe only listens."""

    def __init__(self, workdir: Path, name: str, rate: float, obs_spec: dict[str, Any], image_keys: tuple[str, ...],
                 sim_peer: bool = False, plan_ahead: bool = True, planner: str = "process", pin: bool = False):
        """``pin``: the node is pinned to the last CPU (``cpu_affinity``), as a robot PC would give its control
        process an isolated core (only with 2 or more CPUs; the probe is not pinned, its state stream must not
        fall behind)."""
        self.rate = rate
        cpus = sorted(os.sched_getaffinity(0))
        self.pinned = pin and len(cpus) >= 2
        self.mock = (RosProcess("sim.ros_mock", MOCK_PARAMS, {"control_hz": float(rate)}, workdir / f"{name}_mock.log")
                     if sim_peer else None)
        ckpt = fresh_checkpoint(workdir / f"{name}_ckpt", obs_spec)
        overrides = {"checkpoint": str(ckpt), "control_hz": float(rate), "safety.control_dt": 1.0 / rate,
                     "start_armed": True, "plan_ahead": plan_ahead, "planner": planner,
                     "cpu_affinity": cpus[-1:] if self.pinned else [],
                     "image_topics": [f"{k}=/camera/{k.rsplit('_', 1)[0]}/color/image_raw" for k in image_keys]}
        # The probe publishes the pose itself; hearing its own 500 Hz stream back would only load this process.
        self.probe = Probe(image_keys, record_poses=sim_peer)
        self.proc = RosProcess("hardware.ros_node", SIM_PARAMS, overrides, workdir / f"{name}.log")
        from hardware.deploy_config import load_deploy_config

        rate_params = {"control_hz": float(rate), "safety.control_dt": 1.0 / rate}
        self.limits = load_deploy_config(SIM_PARAMS, rate_params).safety
        self.seq = 0
        self.rng = np.random.default_rng(0)

    def start(self, timeout_s: float) -> None:
        def first_command() -> bool:
            self.publish_valid()
            if self.probe.image_pubs:
                self.probe.publish_images(self.rng)
            if self.proc.proc.poll() is not None:
                raise RuntimeError(f"the policy node exited: {self.proc.log()[-500:]}")
            if self.mock is not None and self.mock.proc.poll() is not None:
                raise RuntimeError(f"the sim mock exited: {self.mock.log()[-500:]}")
            return bool(self.probe.commands)

        if not wait_for(first_command, timeout_s, step_s=0.02):
            raise RuntimeError(f"no command from the node within {timeout_s:.0f} s; its log: {self.proc.log()[-500:]}")
        self.probe.check_alone(robots=1 if self.mock is not None else 0)  # discovered by now: the node commands

    def publish_valid(self) -> None:
        if self.mock is not None:  # the sim mock publishes the state
            return
        self.seq += 1
        self.probe.publish_state(self.seq)

    def diag(self) -> dict[str, Any]:
        n = len(self.probe.diagnostics)
        wait_for(lambda: len(self.probe.diagnostics) > n, 3.0)
        return self.probe.diagnostics[-1] if self.probe.diagnostics else {}

    def stop(self) -> None:
        self.proc.stop()
        if self.mock is not None:
            self.mock.stop()
        self.probe.close()


def measure_latency(nut: NodeUnderTest, seconds: float, state_hz: float) -> dict[str, Any]:
    """Observation-to-command latency while the state streams. Commands decided (their header stamp: the tick's
    start) after the probe stopped publishing are not counted: the node then re-commands from an aging pose until
    it is stale, which tests the staleness limit, not latency. The probe's garbage collector is off while it measures (a harness pause would
    read as the node's latency)."""
    probe = nut.probe
    before = nut.diag()
    probe.commands.clear()
    gc.collect()
    gc.disable()
    try:
        cpu0, t0 = nut.proc.cpu_seconds(), time.monotonic()
        next_state, next_image = t0, t0
        while time.monotonic() - t0 < seconds:
            now = time.monotonic()
            if now >= next_state:
                nut.publish_valid()
                next_state += 1.0 / state_hz
            if probe.image_pubs and now >= next_image:
                probe.publish_images(nut.rng)
                next_image += 1.0 / 30.0  # a 30 fps camera
            time.sleep(max(0.0, min(next_state, next_image if probe.image_pubs else next_state) - time.monotonic()))
        t_end, t_end_wall = time.monotonic(), time.time()
        elapsed = t_end - t0
        cpu = (nut.proc.cpu_seconds() - cpu0) / elapsed * 100
        time.sleep(0.05)  # commands computed from the last poses are still on their way
    finally:
        gc.enable()
    after = nut.diag()
    sent = probe.sent
    wall_to_mono = time.monotonic() - time.time()
    # Per command: (arrival - observation sent, tick start - observation sent). The second part is how old the
    # newest state was when the tick began (at most one state period plus DDS), the rest is the node's tick up to
    # the publish and the DDS hop back.
    parts = np.array([(recv - sent[m.header.frame_id][0], stamp_to_sec(m.header.stamp) + wall_to_mono
                       - sent[m.header.frame_id][0]) for recv, m in list(probe.commands)
                      if m.header.frame_id in sent and stamp_to_sec(m.header.stamp) <= t_end_wall]).reshape(-1, 2) * 1e3
    lat, age = parts[:, 0], parts[:, 1]
    missed = (after.get("missed_deadlines", 0) - before.get("missed_deadlines", 0)
              + after.get("overruns", 0) - before.get("overruns", 0))
    return {"rate_hz": nut.rate, "commands": int(lat.size), "expected": int(elapsed * nut.rate),
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
            "tick_p50_ms": after.get("loop_ms_p50", float("nan")), "tick_p99_ms": after.get("loop_ms_p99", float("nan")),
            "age_at_tick_p50_ms": float(np.percentile(age, 50)) if age.size else float("nan"),
            "tick_to_arrival_p50_ms": float(np.percentile(lat - age, 50)) if lat.size else float("nan"),
            "tick_to_arrival_p99_ms": float(np.percentile(lat - age, 99)) if lat.size else float("nan"),
            "sections_p50_ms": after.get("loop_sections_ms_p50", {}), "plan_p50_ms": after.get("plan_ms_p50", float("nan")),
            "plan_p99_ms": after.get("plan_ms_p99", float("nan")), "late_plans": after.get("late_plans", 0) - before.get("late_plans", 0),
            "missed": int(missed), "cpu_percent": float(cpu),
            "unsafe": len(unsafe_commands(list(probe.commands), probe.sent, nut.limits))}


def fuzz(nut: NodeUnderTest, messages: int, seed: int = 0) -> dict[str, Any]:
    """Send ``messages`` bad messages (interleaved with valid state so the node keeps commanding) and check every
    command published meanwhile. Returns counts and the first problems found."""
    probe, rng = nut.probe, np.random.default_rng(seed)
    names = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1", "panda_finger_joint2"]
    probe.commands.clear()
    sent, kinds = 0, defaultdict(int)
    stale_windows: list[tuple[float, float]] = []
    from hardware.deploy_config import load_deploy_config

    max_age = load_deploy_config(SIM_PARAMS).max_state_age_s  # the node's own limit for state streams
    JointState, PoseStamped, Arr = probe.msgs["JointState"], probe.msgs["PoseStamped"], probe.msgs["Float32MultiArray"]
    while sent < messages:
        kind = int(rng.integers(0, 12))
        now_s = probe.node.get_clock().now().nanoseconds * 1e-9
        nut.seq += 1
        if kind == 0:  # a valid state, so the node keeps producing commands to check
            nut.publish_valid()
            sent += 3
            kinds["valid"] += 3
            continue
        if kind == 1:  # NaN / inf / huge joints
            js = JointState(name=names, position=[float(rng.choice([np.nan, np.inf, 1e9]))] * 9)
            js.header.stamp = time_msg(now_s)
            probe.joint_pub.publish(js)
            kinds["bad_joints"] += 1
        elif kind == 2:  # missing joints / names and positions of different lengths
            js = JointState(name=names[:int(rng.integers(0, 9))], position=[0.0] * int(rng.integers(0, 9)))
            js.header.stamp = time_msg(now_s)
            probe.joint_pub.publish(js)
            kinds["malformed_joints"] += 1
        elif kind in (3, 4, 5):  # NaN pose, non-unit quaternion, pose far outside the workspace
            pos = rng.normal(size=3) * (5.0 if kind == 5 else 0.1) + HOME_POS
            quat = HOME_QUAT * (rng.uniform(1.5, 10) if kind == 4 else 1.0)
            if kind == 3:
                pos[int(rng.integers(0, 3))] = np.nan
            msg = PoseStamped()
            msg.header.stamp, msg.header.frame_id = time_msg(now_s), f"s{nut.seq}"
            p, o = msg.pose.position, msg.pose.orientation
            p.x, p.y, p.z = (float(v) for v in pos)
            o.x, o.y, o.z, o.w = (float(v) for v in quat)
            probe.sent[f"s{nut.seq}"] = (time.monotonic(), pos, quat)
            probe.pose_pub.publish(msg)
            kinds[("nan_pose", "bad_quaternion", "out_of_range_pose")[kind - 3]] += 1
        elif kind in (6, 7, 8):  # out of order (-0.5 s), future (+0.5 s), clock jump (-100 s)
            offset = {6: -0.5, 7: 0.5, 8: -100.0}[kind]
            pos = HOME_POS + rng.normal(size=3) * 0.05
            probe.publish_state(nut.seq, pos=pos, stamp_s=now_s + offset)
            sent += 2
            kinds[("out_of_order", "future_stamp", "clock_jump")[kind - 6]] += 3
        elif kind == 9:  # object state of the wrong size or NaN
            size = int(rng.choice([0, 3, 9, 11, 10]))
            data = [float("nan") if size == 10 else 0.0] * size
            probe.object_pub.publish(Arr(data=data))
            kinds["bad_object_state"] += 1
        elif kind == 10 and rng.random() < 0.002:  # a stale gap: nothing for 3x the age limit
            start = time.time()  # wall clock: compared with the commands' decision stamps
            time.sleep(3 * max_age)
            stale_windows.append((start, time.time()))
            kinds["stale_gaps"] += 1
            continue
        else:  # out-of-range joint values (beyond the joint limits)
            probe.publish_state(nut.seq, joints=[float(v) for v in rng.uniform(-4, 4, 9)])
            sent += 2
            kinds["out_of_range_joints"] += 3
        sent += 1
        if sent % 200 < 3:
            time.sleep(0.002)  # let the node's executor breathe, like a real (bursty) network
    time.sleep(0.5)
    commands = list(probe.commands)
    problems = unsafe_commands(commands, probe.sent, nut.limits)
    # A command's stamp is when the node decided it; by then its inputs may be at most max_age old.
    for _, cmd in commands:
        source = probe.sent.get(cmd.header.frame_id)
        if source is not None and np.allclose(_position(cmd), source[1], atol=1e-9):
            continue  # the watchdog's hold: stay at the last valid measured pose (what it is for)
        decided = stamp_to_sec(cmd.header.stamp)
        for start, end in stale_windows:
            if start + max_age + 0.002 < decided < end:
                problems.append(f"command decided {decided - start:.3f} s into a stale gap")
    return {"messages": sent, "commands": len(commands), "unsafe": len(problems), "problems": problems[:5],
            "kinds": dict(kinds), "diag": nut.diag()}


def _position(msg: Any) -> np.ndarray:
    p = msg.pose.position
    return np.array([p.x, p.y, p.z])


def measure_frame_cache(calls: int = 40) -> dict[str, float]:
    """Per-chunk time of a one-step policy with the default encoder and two 84x84 cameras (n_obs 2, a new frame
    every call, one torch thread), with the frame-feature cache off (baseline) and on."""
    import torch

    from policies import Normalizer, PolicySpec, make_policy

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    spec_obs = {**LOWDIM, **CAMERAS}
    rng = np.random.default_rng(0)
    data = {k: (rng.integers(0, 255, (4, *s), dtype=np.uint8) if d == "uint8" else rng.normal(size=(16, *s)).astype(d))
            for k, (s, d) in spec_obs.items()}
    data["action"] = rng.uniform(-1, 1, (16, 7)).astype(np.float32)
    policy = make_policy("consistency", PolicySpec(spec_obs, 7, n_obs=2), Normalizer.fit(data), None).eval()
    frames = [{k: rng.integers(0, 255, s, dtype=np.uint8) if d == "uint8" else rng.normal(size=s).astype(d)
               for k, (s, d) in spec_obs.items()} for _ in range(calls + 1)]

    def run(cache: bool) -> np.ndarray:
        policy.encoder.cache_frames = cache
        times = []
        for i in range(calls):
            obs = {k: np.stack([frames[i][k], frames[i + 1][k]])[None] for k in spec_obs}
            start = time.perf_counter()
            with torch.no_grad():
                policy.predict(obs)
            times.append(time.perf_counter() - start)
        return np.percentile(np.array(times[5:]) * 1e3, [50, 99])

    try:
        run(False)  # warm-up
        off, on = run(False), run(True)
    finally:
        torch.set_num_threads(threads)
    return {"uncached_p50_ms": float(off[0]), "uncached_p99_ms": float(off[1]), "cached_p50_ms": float(on[0]),
            "cached_p99_ms": float(on[1]), "speedup": float(off[0] / on[0])}


def run_node_bench(config: NodeBenchConfig) -> dict[str, Any]:
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    figures: dict[str, Any] = {}
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="robo_bench_node_") as tmp:
        work = Path(tmp)
        if config.minutes > 0:
            if config.soak_peer not in ("sim", "probe"):
                raise ValueError(f"--soak-peer must be sim or probe, not {config.soak_peer!r}")
            nut = NodeUnderTest(work, "soak", 100.0, LOWDIM, (), sim_peer=config.soak_peer == "sim",
                                plan_ahead=config.plan_ahead, planner=config.planner)
            try:
                nut.start(config.startup_timeout_s)
                result = soak(nut, config.minutes, config.output_dir)
            finally:
                nut.stop()
            peer = "MuJoCo sim mock at 100 Hz" if nut.mock else "probe state at 200 Hz"
            rows = soak_rows(result, peer)
            print_table("robo bench node --minutes (policy node soak through DDS)", rows)
            figures = {"soak_minutes": result["minutes"], "soak_peer": config.soak_peer,
                       **{k: (round(v, 3) if isinstance(v, float) and v == v else (None if isinstance(v, float) else v))
                          for k, v in result.items() if k != "minutes"},
                       "p50_ms": None, "p99_ms": None, "unsafe_published": 0, "fuzz_messages": 0, "cpu_percent": None}
            print_json_line(figures)
            return figures
        pin = config.pin_node
        runs = [("lowdim_50hz", 50.0, LOWDIM, (), pin), ("lowdim_100hz", 100.0, LOWDIM, (), pin)]
        if pin:
            runs.append(("lowdim_100hz_unpinned", 100.0, LOWDIM, (), False))
        if config.cameras:
            runs.append(("cameras_20hz", 20.0, {**LOWDIM, **CAMERAS}, tuple(CAMERAS), pin))
        if config.seconds <= 0:  # only the in-process measurements
            runs = []
        results, fuzz_result = {}, None
        for name, rate, spec, images, pinned in runs:
            nut = NodeUnderTest(work, name, rate, spec, images, plan_ahead=config.plan_ahead, planner=config.planner,
                                pin=pinned)
            try:
                nut.start(config.startup_timeout_s)
                results[name] = {**measure_latency(nut, config.seconds, config.state_hz), "pinned": nut.pinned}
                if name == "lowdim_100hz" and config.fuzz_messages > 0:
                    fuzz_result = fuzz(nut, config.fuzz_messages)
            finally:
                nut.stop()
        for name, r in results.items():
            rows.append((f"{name} obs->command p50 / p99",
                         f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} ms",
                         f"node tick alone {r['tick_p50_ms']:.2f} / {r['tick_p99_ms']:.2f} ms"))
            rows.append((f"{name}   of which tick start -> arrival", f"{r['tick_to_arrival_p50_ms']:.2f} / "
                         f"{r['tick_to_arrival_p99_ms']:.2f} ms", f"state age at tick start p50 {r['age_at_tick_p50_ms']:.2f} ms"))
            sections = ", ".join(f"{k} {v:.2f}" for k, v in r["sections_p50_ms"].items())
            rows.append((f"{name} tick sections p50", sections or "-", f"plans {r['plan_p50_ms']:.1f} / "
                         f"{r['plan_p99_ms']:.1f} ms, {r['late_plans']} late ({config.planner} planner"
                         f"{', node on its own core' if r['pinned'] else ', nothing pinned'})"))
            rows.append((f"{name} missed deadlines", str(r["missed"]), f"{r['commands']} commands, {r['expected']} periods"))
            rows.append((f"{name} node CPU", f"{r['cpu_percent']:.1f} %", "of one core"))
        if fuzz_result is not None:
            rows.append(("fuzz messages", str(fuzz_result["messages"]), ", ".join(f"{k} {v}" for k, v in sorted(fuzz_result["kinds"].items()))))
            rows.append(("commands during fuzz", str(fuzz_result["commands"]), f"holds {fuzz_result['diag'].get('hold_ticks', 0)}"))
            rows.append(("unsafe commands", str(fuzz_result["unsafe"]), "; ".join(fuzz_result["problems"][:2]) or "none"))
        cache = measure_frame_cache() if config.frame_cache else None
        if cache is not None:
            rows.append(("2-camera chunk, frame cache on", f"{cache['cached_p50_ms']:.1f} / {cache['cached_p99_ms']:.1f} ms",
                         f"off (baseline) {cache['uncached_p50_ms']:.1f} / {cache['uncached_p99_ms']:.1f} ms: "
                         f"{cache['speedup']:.2f}x"))
        print_table("robo bench node (policy node and probe in separate processes, DDS on loopback)", rows)
        nan = {"p50_ms": float("nan"), "p99_ms": float("nan"), "cpu_percent": float("nan")}
        main_run = results.get("lowdim_100hz", next(iter(results.values()), nan))
        unsafe = sum(r["unsafe"] for r in results.values()) + (fuzz_result["unsafe"] if fuzz_result else 0)
        def num(value: float) -> float | None:  # JSON has no NaN: a figure not measured in this run is null
            return None if value != value else round(value, 3)

        figures = {"p50_ms": num(main_run["p50_ms"]), "p99_ms": num(main_run["p99_ms"]),
                   "missed": int(sum(r["missed"] for r in results.values())), "unsafe_published": int(unsafe),
                   "fuzz_messages": int(fuzz_result["messages"]) if fuzz_result else 0,
                   "cpu_percent": num(main_run["cpu_percent"]),
                   **{f"{n}_{k}": round(v, 3) for n, r in results.items() for k, v in r.items()
                      if k in ("p50_ms", "p99_ms", "missed", "cpu_percent", "tick_p99_ms", "tick_to_arrival_p99_ms",
                               "late_plans")},
                   "planner": config.planner if config.plan_ahead else "none",
                   **({f"frame_cache_{k}": round(v, 3) for k, v in cache.items()} if cache else {})}
        print_json_line(figures)
    return figures
