"""``robo bench latency``: per-action-chunk latency on one CPU thread at batch 1.

The same diffusion policy is timed under DDPM (100 steps), DDIM (10 steps) and as its one-step distilled students
(the UNet student of preset ``distill``, a copy of the teacher's network, and the MLP student of ``distill_mlp``),
with low-dim observations and with two 84x84 cameras. Beside them, in the same run: the floor the denoiser's FLOP
count implies at this CPU's measured single-thread matmul rate, and a "straightforward" temporal UNet (widths
64/128/256, two blocks per level, ~4.6M parameters) per denoiser call, as the baseline for the network design.
Weights do not change the cost, so without ``--checkpoint`` freshly initialised policies are timed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from robo.bench.common import print_json_line, print_table

LOWDIM = {"eef_pos": ((3,), "float32"), "eef_quat": ((4,), "float32"), "gripper_qpos": ((2,), "float32"),
          "object_state": ((10,), "float32")}
CAMERAS = {"agentview_rgb": ((84, 84, 3), "uint8"), "eye_in_hand_rgb": ((84, 84, 3), "uint8")}


@dataclass
class LatencyBenchConfig:
    checkpoint: Path | None = None  # a trained low-dim diffusion checkpoint to time (default: fresh weights)
    calls: int = 200  # timed calls per configuration (DDPM-100 uses a fifth of them)
    warmup: int = 10  # untimed calls first
    seed: int = 0  # input and noise seed


def _policy(obs_spec: dict, config: dict | None = None) -> Any:
    from policies import Normalizer, PolicySpec, make_policy

    rng = np.random.default_rng(0)
    data = {k: (rng.integers(0, 255, (4, *shape), dtype=np.uint8) if dtype == "uint8"
                else rng.normal(size=(64, *shape)).astype(dtype)) for k, (shape, dtype) in obs_spec.items()}
    data["action"] = rng.uniform(-1, 1, (64, 7)).astype(np.float32)
    return make_policy("diffusion", PolicySpec(obs_spec, 7), Normalizer.fit(data), config).eval()


def _obs(spec: Any, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for key, (shape, dtype) in spec.obs_keys.items():
        full = (batch, spec.n_obs, *shape)
        out[key] = rng.integers(0, 255, full, dtype=np.uint8) if dtype == "uint8" else rng.normal(size=full).astype(dtype)
    return out


def _time(fn: Callable[[], Any], calls: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    samples = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter()
        fn()
        samples[i] = time.perf_counter() - start
    return float(np.percentile(samples, 50) * 1e3), float(np.percentile(samples, 99) * 1e3)


def _matmul_gflops() -> float:
    """Single-thread fp32 matmul rate on this machine, now."""
    import torch

    a, b = torch.randn(512, 512), torch.randn(512, 512)
    for _ in range(3):
        a @ b
    start, n = time.perf_counter(), 40
    for _ in range(n):
        a @ b
    return 2 * 512**3 * n / (time.perf_counter() - start) / 1e9


def _denoiser_flops(policy: Any, obs: dict) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cond = policy.conditioned(obs)
    x = policy.initial_noise(1, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        policy.denoiser.step(x, torch.tensor([10]), cond)
    return int(counter.get_total_flops())


def run_latency_bench(config: LatencyBenchConfig) -> dict[str, float]:
    import torch  # imported here so `robo --help` does not pay for it

    from policies.checkpoint import load_checkpoint
    from policies.consistency import ConsistencyPolicy
    from robo.train import load_preset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            policy = load_checkpoint(config.checkpoint).eval() if config.checkpoint else _policy(LOWDIM)
            student = ConsistencyPolicy.from_teacher(policy).eval()
            mlp_student = ConsistencyPolicy.from_teacher(policy, load_preset("distill_mlp")["policy"]).eval()
            rgb_policy = _policy({**CAMERAS, **{k: v for k, v in LOWDIM.items() if k != "object_state"}})
            rgb_student = ConsistencyPolicy.from_teacher(rgb_policy).eval()
            baseline = _policy(LOWDIM, {"denoiser": {"kind": "unet", "widths": [64, 128, 256], "blocks_per_level": 2}})
            obs, rgb_obs = _obs(policy.spec), _obs(rgb_policy.spec)
            gen = torch.Generator().manual_seed(config.seed)
            n, w = config.calls, config.warmup
            figures: dict[str, float] = {}
            figures["ddpm100_ms"], figures["ddpm100_p99_ms"] = _time(lambda: policy.predict(obs, scheduler="ddpm", steps=100, generator=gen), max(10, n // 5), 2)
            figures["ddim10_ms"], figures["ddim10_p99_ms"] = _time(lambda: policy.predict(obs, generator=gen), n, w)
            figures["onestep_ms"], figures["onestep_p99_ms"] = _time(lambda: student.predict(obs, generator=gen), n, w)
            figures["onestep_mlp_ms"], figures["onestep_mlp_p99_ms"] = _time(lambda: mlp_student.predict(obs, generator=gen), n, w)
            figures["ddim10_rgb_ms"], figures["ddim10_rgb_p99_ms"] = _time(lambda: rgb_policy.predict(rgb_obs, generator=gen), max(20, n // 4), w)
            figures["onestep_rgb_ms"], figures["onestep_rgb_p99_ms"] = _time(lambda: rgb_student.predict(rgb_obs, generator=gen), max(20, n // 4), w)
            cond, x, t = policy.conditioned(obs), policy.initial_noise(1, gen), torch.tensor([10])
            figures["denoiser_call_ms"], _ = _time(lambda: policy.denoiser.step(x, t, cond), n, w)
            bcond, bx = baseline.conditioned(obs), baseline.initial_noise(1, gen)
            figures["baseline_unet_call_ms"], _ = _time(lambda: baseline.denoiser.step(bx, t, bcond), n, w)
            flops = _denoiser_flops(policy, obs)
            figures["matmul_gflops_1thread"] = _matmul_gflops()
            figures["denoiser_mflops"] = flops / 1e6
            figures["denoiser_floor_ms"] = flops / (figures["matmul_gflops_1thread"] * 1e9) * 1e3
            figures["denoiser_params_m"] = sum(p.numel() for p in policy.denoiser.parameters()) / 1e6
            figures["baseline_params_m"] = sum(p.numel() for p in baseline.denoiser.parameters()) / 1e6
            figures["speedup"] = figures["ddim10_ms"] / figures["onestep_ms"]
            figures["speedup_mlp"] = figures["ddim10_ms"] / figures["onestep_mlp_ms"]
            figures["mlp_student_params_m"] = sum(p.numel() for p in mlp_student.denoiser.parameters()) / 1e6
    finally:
        torch.set_num_threads(threads)
    f = figures
    print_table("robo bench latency (batch 1, one CPU thread, ms per action chunk: p50 / p99)", [
        ("DDPM 100 steps, low-dim", f"{f['ddpm100_ms']:.2f} / {f['ddpm100_p99_ms']:.2f}", "diffusers DDPMScheduler"),
        ("DDIM 10 steps, low-dim", f"{f['ddim10_ms']:.2f} / {f['ddim10_p99_ms']:.2f}", ""),
        ("one-step student (UNet), low-dim", f"{f['onestep_ms']:.2f} / {f['onestep_p99_ms']:.2f}", f"{f['speedup']:.1f}x faster than DDIM 10"),
        ("one-step student (MLP), low-dim", f"{f['onestep_mlp_ms']:.2f} / {f['onestep_mlp_p99_ms']:.2f}",
         f"{f['speedup_mlp']:.1f}x faster than DDIM 10; preset distill_mlp, {f['mlp_student_params_m']:.2f}M params"),
        ("DDIM 10 steps, 2 cameras 84x84", f"{f['ddim10_rgb_ms']:.2f} / {f['ddim10_rgb_p99_ms']:.2f}", "encoder runs once per chunk"),
        ("one-step student, 2 cameras", f"{f['onestep_rgb_ms']:.2f} / {f['onestep_rgb_p99_ms']:.2f}", ""),
        ("denoiser call (ours)", f"{f['denoiser_call_ms']:.3f}", f"{f['denoiser_params_m']:.2f}M params, {f['denoiser_mflops']:.1f} MFLOP"),
        ("FLOP floor of that call", f"{f['denoiser_floor_ms']:.3f}", f"at {f['matmul_gflops_1thread']:.0f} GFLOP/s measured matmul"),
        ("baseline UNet call", f"{f['baseline_unet_call_ms']:.3f}", f"widths 64/128/256, 2 blocks, {f['baseline_params_m']:.2f}M params"),
    ])
    print_json_line(figures)
    return figures
