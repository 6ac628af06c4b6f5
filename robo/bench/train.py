"""``robo bench train``: training samples per second for the default policies, beside a baseline network.

Times full optimiser steps (sampling from an in-RAM dataset, normalisation, forward, backward, AdamW, EMA) for the
default low-dim diffusion UNet, the consistency policy and the Gaussian MLP, and the "straightforward" UNet (widths
64/128/256, two blocks per level) as the baseline, all in the same run on synthetic episodes.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robo.bench.common import print_json_line, print_table
from robo.data.sampler import SamplerConfig, SequenceSampler
from robo.data.schema import ArraySpec, DatasetSchema, EpisodeInfo
from robo.data.store import ZarrDataset


@dataclass
class TrainBenchConfig:
    batch_size: int = 256  # samples per optimiser step
    seconds: float = 8.0  # timed seconds per configuration
    threads: int = 0  # torch threads (0 = torch's default)
    device: str = "cpu"  # cpu or cuda


def _dataset(path: Path) -> ZarrDataset:
    schema = DatasetSchema(obs={"eef_pos": ArraySpec((3,), "float32"), "eef_quat": ArraySpec((4,), "float32"),
                                "gripper_qpos": ArraySpec((2,), "float32"), "object_state": ArraySpec((10,), "float32")},
                           action=ArraySpec((7,), "float32"), fps=20, task="bench")
    ds = ZarrDataset.create(path, schema)
    rng = np.random.default_rng(0)
    for e in range(50):
        n = 120
        ds.append_episode({k: rng.normal(size=(n, *s.shape)).astype(np.float32) for k, s in schema.obs.items()}
                          | {"action": rng.uniform(-1, 1, (n, 7))}, EpisodeInfo("scripted", True, seed=e))
    return ds


def _samples_per_s(kind: str, policy_config: dict | None, sampler: SequenceSampler, config: TrainBenchConfig) -> float:
    import torch

    from policies import PolicySpec, make_policy

    ds = sampler._dataset
    spec = PolicySpec.from_obs({k: ds.schema.obs[k] for k in sampler.config.obs_keys}, 7)
    policy = make_policy(kind, spec, sampler.fit_normalizer(), policy_config).to(config.device)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    rng = np.random.default_rng(0)

    def step() -> None:
        batch = sampler.sample(config.batch_size, rng)
        batch = {"obs": {k: torch.from_numpy(v).to(config.device) for k, v in batch["obs"].items()},
                 "action": torch.from_numpy(batch["action"]).to(config.device)}
        loss = policy.compute_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        policy.after_optimizer_step()

    for _ in range(3):
        step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < config.seconds:
        step()
        steps += 1
    return steps * config.batch_size / (time.perf_counter() - start)


def run_train_bench(config: TrainBenchConfig) -> dict[str, float]:
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    workdir = Path(tempfile.mkdtemp(prefix="robo-bench-train-"))
    try:
        ds = _dataset(workdir / "ds.zarr")
        sampler = SequenceSampler(ds, SamplerConfig(obs_keys=tuple(ds.schema.obs)))
        figures = {
            "diffusion_samples_per_s": _samples_per_s("diffusion", None, sampler, config),
            "consistency_samples_per_s": _samples_per_s("consistency", None, sampler, config),
            "gaussian_samples_per_s": _samples_per_s("gaussian", None, sampler, config),
            "baseline_unet_samples_per_s": _samples_per_s(
                "diffusion", {"denoiser": {"kind": "unet", "widths": [64, 128, 256], "blocks_per_level": 2}}, sampler, config),
        }
        ds.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    figures["diffusion_vs_baseline"] = figures["diffusion_samples_per_s"] / figures["baseline_unet_samples_per_s"]
    f = figures
    print_table(f"robo bench train (batch {config.batch_size}, {config.device}, {torch.get_num_threads()} threads)", [
        ("diffusion UNet 64/128 (default)", f"{f['diffusion_samples_per_s']:.0f}", "samples / s"),
        ("consistency (native)", f"{f['consistency_samples_per_s']:.0f}", "samples / s"),
        ("Gaussian MLP", f"{f['gaussian_samples_per_s']:.0f}", "samples / s"),
        ("baseline UNet 64/128/256, 2 blocks", f"{f['baseline_unet_samples_per_s']:.0f}", "samples / s"),
        ("default vs baseline", f"{f['diffusion_vs_baseline']:.2f}x", ""),
    ])
    print_json_line(figures)
    return figures
