"""``robo bench store``: recording headroom of the Zarr store and sampler throughput from RAM.

Recording: two 640x480 RGB streams, one 640x480 depth stream and low-dim state at 30 Hz (frames rendered by the
Lift sim plus camera-like noise), streamed through
``EpisodeWriter`` on one pinned core; headroom = the 33.3 ms control period / measured time per committed step
(including the commit). Baseline: the same bytes appended raw, uncompressed, to one flat file.
Sampling: batched windows (2 observations, 16 actions, edge padding) from a dataset held in RAM. Baseline: a
plain per-window Python loop slicing the same numpy arrays.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robo.bench.common import one_core, print_json_line, print_table
from robo.data.sampler import SamplerConfig, SequenceSampler
from robo.data.schema import ArraySpec, DatasetSchema, EpisodeInfo
from robo.data.store import ZarrDataset

_FRAMES = 16  # distinct rendered frames cycled through during recording


@dataclass
class StoreBenchConfig:
    record_steps: int = 300  # steps per recorded episode (10 s at 30 Hz)
    record_episodes: int = 2  # recorded episodes (the figure is over all of them)
    fps: float = 30.0  # control rate whose period is the budget
    sample_episodes: int = 100  # episodes in the sampling dataset
    sample_episode_len: int = 200  # steps per sampling episode
    batch_size: int = 256  # windows per sampled batch
    sample_seconds: float = 3.0  # time spent sampling for each of ours and the baseline
    workdir: Path | None = None  # where to write (default: a temporary folder, removed afterwards)


def _camera_frames(n_frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """640x480 frames rendered by the Lift sim (agentview, eye-in-hand, aligned depth) with camera-like sensor
    noise added (RGB sigma 1.5 levels, depth sigma 2 mm): clean renders would compress unrealistically well."""
    from sim.env import EnvConfig, SimEnv

    env = SimEnv(EnvConfig(task="Lift", cameras=("agentview", "robot0_eye_in_hand"), image_height=480,
                           image_width=640, depth=True))
    try:
        obs, _ = env.reset(seed=0)
        frames = {"agentview_rgb": [], "eye_in_hand_rgb": [], "agentview_depth": []}
        for _ in range(n_frames):
            for key in frames:
                frames[key].append(obs[key])
            obs, *_ = env.step(rng.uniform(-0.3, 0.3, 7).astype(np.float32))
    finally:
        env.close()
    rgb = [np.clip(np.stack(frames[k]) + rng.normal(0, 1.5, (n_frames, 480, 640, 3)), 0, 255).astype(np.uint8)
           for k in ("agentview_rgb", "eye_in_hand_rgb")]
    depth = np.clip(np.stack(frames["agentview_depth"]) + rng.normal(0, 2.0, (n_frames, 480, 640, 1)), 0, 65535)
    return rgb[0], rgb[1], depth.astype(np.uint16)


def _record_schema(fps: float) -> DatasetSchema:
    return DatasetSchema(
        obs={"agentview_rgb": ArraySpec((480, 640, 3), "uint8"), "eye_in_hand_rgb": ArraySpec((480, 640, 3), "uint8"),
             "agentview_depth": ArraySpec((480, 640, 1), "uint16"), "eef_pos": ArraySpec((3,), "float32"),
             "eef_quat": ArraySpec((4,), "float32"), "gripper_qpos": ArraySpec((2,), "float32"),
             "joint_pos": ArraySpec((7,), "float32")},
        action=ArraySpec((7,), "float32"), fps=fps, task="bench")


def bench_recording(config: StoreBenchConfig, workdir: Path) -> dict[str, float]:
    rng = np.random.default_rng(0)
    rgb, rgb2, depth = _camera_frames(_FRAMES, rng)
    lowdim = {"eef_pos": 3, "eef_quat": 4, "gripper_qpos": 2, "joint_pos": 7}
    n = config.record_steps
    ours, raw = [], []
    with one_core():
        ds = ZarrDataset.create(workdir / "record.zarr", _record_schema(config.fps))
        for episode in range(config.record_episodes):
            start = time.perf_counter()
            writer = ds.new_episode()
            for t in range(n):
                obs = {"agentview_rgb": rgb[t % _FRAMES], "eye_in_hand_rgb": rgb2[t % _FRAMES],
                       "agentview_depth": depth[t % _FRAMES],
                       **{k: rng.standard_normal(d).astype(np.float32) for k, d in lowdim.items()}}
                writer.add_step(obs, rng.uniform(-1, 1, 7).astype(np.float32), timestamp=t / config.fps)
            writer.commit(EpisodeInfo("scripted", True, seed=episode))
            ours.append((time.perf_counter() - start) / n)
            # Baseline: the same bytes, raw, appended to one flat file (what a naive recorder does).
            start = time.perf_counter()
            with open(workdir / f"raw_{episode}.bin", "wb") as f:
                for t in range(n):
                    for array in (rgb[t % _FRAMES], rgb2[t % _FRAMES], depth[t % _FRAMES]):
                        f.write(array.tobytes())
                    for d in lowdim.values():
                        f.write(rng.standard_normal(d).astype(np.float32).tobytes())
                f.flush()
            raw.append((time.perf_counter() - start) / n)
        ds.close()
    ours_ms, raw_ms = float(np.median(ours) * 1e3), float(np.median(raw) * 1e3)
    disk = sum(p.stat().st_size for p in (workdir / "record.zarr").rglob("*") if p.is_file())
    raw_bytes = sum(p.stat().st_size for p in workdir.glob("raw_*.bin"))
    return {"record_ms_per_step": ours_ms, "raw_ms_per_step": raw_ms, "record_headroom": 1e3 / config.fps / ours_ms,
            "raw_headroom": 1e3 / config.fps / raw_ms, "compression_ratio": raw_bytes / max(disk, 1)}


def _sampling_dataset(config: StoreBenchConfig, path: Path) -> ZarrDataset:
    schema = DatasetSchema(obs={"eef_pos": ArraySpec((3,), "float32"), "object_state": ArraySpec((10,), "float32"),
                                "agentview_rgb": ArraySpec((84, 84, 3), "uint8")},
                           action=ArraySpec((7,), "float32"), fps=20, task="bench")
    rng = np.random.default_rng(1)
    ds = ZarrDataset.create(path, schema)
    length = config.sample_episode_len
    for episode in range(config.sample_episodes):
        ds.append_episode({"eef_pos": rng.standard_normal((length, 3)), "object_state": rng.standard_normal((length, 10)),
                           "agentview_rgb": rng.integers(0, 255, (length, 84, 84, 3), dtype=np.uint8),
                           "action": rng.uniform(-1, 1, (length, 7))}, EpisodeInfo("scripted", True, seed=episode))
    return ds


def _baseline_windows(data: dict[str, np.ndarray], ends: np.ndarray, items: np.ndarray, n_obs: int, horizon: int) -> None:
    """Plain per-window loop: find the episode, slice, pad by repeating edge frames."""
    starts = np.concatenate([[0], ends[:-1]])
    for t in items:
        ep = int(np.searchsorted(ends, t, side="right"))
        lo, hi = starts[ep], ends[ep]
        for key, value in data.items():
            length = n_obs if key != "action" else horizon
            first = t - n_obs + 1
            rows = [value[min(max(i, lo), hi - 1)] for i in range(first, first + length)]
            np.stack(rows)


def bench_sampling(config: StoreBenchConfig, workdir: Path) -> dict[str, float]:
    ds = _sampling_dataset(config, workdir / "sample.zarr")
    cfg = SamplerConfig(obs_keys=("eef_pos", "object_state", "agentview_rgb"), n_obs=2, horizon=16)
    sampler = SequenceSampler(ds, cfg)
    rng = np.random.default_rng(0)
    data = ds.load(list(cfg.obs_keys) + ["action"])

    def rate(fn) -> float:
        windows, start = 0, time.perf_counter()
        while time.perf_counter() - start < config.sample_seconds:
            fn(rng.integers(0, len(sampler), config.batch_size))
            windows += config.batch_size
        return windows / (time.perf_counter() - start)

    ours = rate(sampler.get_batch)
    base = rate(lambda items: _baseline_windows(data, ds.episode_ends, items, cfg.n_obs, cfg.horizon))
    ds.close()
    return {"sample_windows_per_s": ours, "baseline_windows_per_s": base, "sample_speedup": ours / base}


def run_store_bench(config: StoreBenchConfig) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="robo-bench-", dir=config.workdir))
    try:
        rec = bench_recording(config, workdir)
        smp = bench_sampling(config, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    budget = 1e3 / config.fps
    print_table("robo bench store (recording on one pinned core; sampling from RAM)", [
        ("record ms / committed step", f"{rec['record_ms_per_step']:.2f}", f"raw flat file {rec['raw_ms_per_step']:.2f}"),
        ("record headroom (x)", f"{rec['record_headroom']:.1f}", f"{budget:.1f} ms budget; raw {rec['raw_headroom']:.1f}"),
        ("on-disk compression (x)", f"{rec['compression_ratio']:.2f}", "raw bytes / store bytes"),
        ("sampler windows / s", f"{smp['sample_windows_per_s']:.0f}", f"per-window loop {smp['baseline_windows_per_s']:.0f}"),
        ("sampler speed-up (x)", f"{smp['sample_speedup']:.1f}", f"batch {config.batch_size}, 2 obs + 16 actions"),
    ])
    figures = {**rec, **smp}
    print_json_line(figures)
    return figures
