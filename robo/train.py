"""``robo train``: behaviour cloning of a diffusion, consistency or Gaussian policy from a Zarr dataset.

Read top to bottom: config -> data (split by episode, normaliser fitted on the training episodes) -> policy ->
AdamW with warm-up + cosine decay -> loop (progress bar, TensorBoard, validation loss, periodic simulated success)
-> checkpoints (``last`` every evaluation, ``best`` by success rate, or by validation loss when not evaluating).

Devices: CPU or CUDA (bf16 autocast on CUDA). Several GPUs: ``torchrun --nproc_per_node N -m robo.cli train ...``;
every rank samples its own batches, gradients are averaged with an all-reduce after each backward, rank 0 logs,
evaluates and saves. Resume with ``--resume``: weights, EMA, optimiser, LR schedule and step come back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from tqdm import tqdm

from robo.data.sampler import SamplerConfig, SequenceSampler, split_episodes
from robo.data.schema import DatasetError
from robo.data.store import ZarrDataset

log = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).parent / "presets"
# The low-dim observation a policy sees by default: what both the sim and (with object_state from perception or
# not at all) the robot provide. joint_pos is left out: end-effector state carries the same information here.
DEFAULT_LOWDIM_KEYS = ("eef_pos", "eef_quat", "gripper_qpos", "object_state")


@dataclass
class TrainConfig:
    dataset: Path = Path("data/demos/lift_lowdim.zarr")  # Zarr dataset to train on
    output_dir: Path = Path("data/runs/lift_diffusion")  # checkpoints, TensorBoard logs, plots
    policy: Literal["diffusion", "consistency", "gaussian"] = "diffusion"  # policy class
    teacher: Path | None = None  # diffusion checkpoint to distil into a one-step consistency student (policy=consistency)
    obs_keys: tuple[str, ...] = ()  # observation keys; empty = the dataset's low-dim keys among DEFAULT_LOWDIM_KEYS
    n_obs: int = 2  # observation history
    horizon: int = 16  # predicted action chunk
    n_action_steps: int = 8  # actions executed per chunk (evaluation and deployment)
    steps: int = 5000  # optimiser steps
    batch_size: int = 256  # samples per step (per GPU with DDP)
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 1e-6  # AdamW weight decay
    warmup_steps: int = 200  # linear LR warm-up
    val_ratio: float = 0.05  # fraction of episodes held out for validation loss
    val_every: int = 500  # steps between validation losses
    eval_every: int = 0  # steps between simulated success evaluations (0 = only at the end)
    eval_episodes: int = 20  # episodes per simulated evaluation (0 = never evaluate in sim)
    eval_envs: int = 2  # parallel sim envs during evaluation
    seed: int = 0  # torch / numpy / sampling seed
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads (0 = torch's default)
    resume: bool = False  # continue from output_dir/last if it exists
    progress: bool = True  # progress bar
    policy_config: dict[str, Any] = field(default_factory=dict)  # the policy's config fields (from a preset)


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A preset YAML: ``train:`` (TrainConfig fields) and ``policy:`` (policy config fields)."""
    path = Path(name_or_path)
    if not path.exists():
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise DatasetError(f"no preset '{name_or_path}'; available: {names} (or a path to a YAML file)")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - {"train", "policy"}
    if unknown:
        raise DatasetError(f"preset {path}: unknown sections {sorted(unknown)}; expected train, policy")
    return data


def build_config(preset: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """defaults < preset < explicit command-line values."""
    values: dict[str, Any] = {}
    if preset:
        data = load_preset(preset)
        values.update(data.get("train") or {})
        values["policy_config"] = data.get("policy") or {}
    values.update(overrides)
    known = set(TrainConfig.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise DatasetError(f"unknown training options {sorted(unknown)}")
    for key in ("dataset", "output_dir", "teacher"):
        if values.get(key) is not None:
            values[key] = Path(values[key])
    if "obs_keys" in values:
        values["obs_keys"] = tuple(values["obs_keys"])
    return TrainConfig(**values)


def resolve_obs_keys(config: TrainConfig, dataset: ZarrDataset) -> tuple[str, ...]:
    if config.obs_keys:
        return tuple(config.obs_keys)
    keys = tuple(k for k in DEFAULT_LOWDIM_KEYS if k in dataset.schema.obs)
    if not keys:
        raise DatasetError(f"{dataset.path} has none of the default low-dim keys {DEFAULT_LOWDIM_KEYS}; pass --obs-keys")
    return keys


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _to_device(batch: dict, device: torch.device) -> dict:
    obs = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device, non_blocking=True) for k, v in batch["obs"].items()}
    return {"obs": obs, "action": torch.from_numpy(batch["action"]).to(device, non_blocking=True)}


class _Distributed:
    """torchrun environment: rank/world size and a gradient all-reduce (a no-op on one process)."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1:
            import torch.distributed as dist

            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.dist = dist

    @property
    def main(self) -> bool:
        return self.rank == 0

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        for p in params:
            if p.grad is not None:
                self.dist.all_reduce(p.grad)
                p.grad /= self.world

    def close(self) -> None:
        if self.world > 1:
            self.dist.destroy_process_group()


def train(config: TrainConfig) -> dict[str, Any]:
    """Train and return a summary (paths and figures); writes under ``config.output_dir``."""
    from policies import PolicySpec, make_policy, save_checkpoint
    from policies.checkpoint import load_checkpoint

    device = _device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    ddp = _Distributed(device)
    if device.type == "cuda" and ddp.world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.manual_seed(config.seed + ddp.rank)
    rng = np.random.default_rng(config.seed + ddp.rank)
    out = Path(config.output_dir)

    dataset = ZarrDataset.open(config.dataset)
    teacher = None
    if config.teacher is not None:
        if config.policy != "consistency":
            raise DatasetError("--teacher distils a diffusion checkpoint into a consistency student; add --policy consistency")
        teacher = load_checkpoint(config.teacher, device=device)  # EMA weights: the teacher we evaluate
        # The student sees what the teacher saw, normalised the same way.
        config.obs_keys, config.n_obs, config.horizon = tuple(teacher.spec.obs_keys), teacher.spec.n_obs, teacher.spec.horizon
    obs_keys = resolve_obs_keys(config, dataset)
    train_eps, val_eps = split_episodes(dataset.n_episodes, config.val_ratio, seed=config.seed)
    sampler_cfg = SamplerConfig(obs_keys=obs_keys, n_obs=config.n_obs, horizon=config.horizon)
    train_sampler = SequenceSampler(dataset, sampler_cfg, train_eps)
    val_sampler = SequenceSampler(dataset, sampler_cfg, val_eps) if len(val_eps) else None
    normalizer = train_sampler.fit_normalizer()
    spec = PolicySpec.from_obs({k: (dataset.schema.obs[k].shape, dataset.schema.obs[k].dtype) for k in obs_keys},
                               dataset.schema.action.shape[0], n_obs=config.n_obs, horizon=config.horizon,
                               n_action_steps=config.n_action_steps)
    if teacher is not None:
        from policies.consistency import ConsistencyPolicy

        policy = ConsistencyPolicy.from_teacher(teacher).to(device)
        teacher.requires_grad_(False)
    else:
        policy = make_policy(config.policy, spec, normalizer, config.policy_config or None).to(device)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(config.warmup_steps, config.steps))
    start_step, best = 0, {"success_rate": -1.0, "val_loss": math.inf}
    last_dir, best_dir = out / "last", out / "best"
    if config.resume and (last_dir / "trainer_state.pt").exists():
        policy = load_checkpoint(last_dir, device=device)
        if teacher is not None:
            policy.attach_teacher(teacher)
        params = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(config.warmup_steps, config.steps))
        state = torch.load(last_dir / "trainer_state.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start_step, best = int(state["step"]), dict(state["best"])
        log.info("resumed from %s at step %d", last_dir, start_step)

    writer = None
    if ddp.main:
        from torch.utils.tensorboard import SummaryWriter

        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2, default=str))
        writer = SummaryWriter(str(out / "tb"))
    extra = {"task": dataset.schema.task, "dataset": str(config.dataset), "fps": dataset.schema.fps,
             "teacher": str(config.teacher) if config.teacher else None,
             "robot_config": dataset.schema.robot_config, "train_episodes": int(len(train_eps))}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    history: dict[str, list] = {"step": [], "loss": [], "val_step": [], "val_loss": [], "eval_step": [], "success": []}

    def checkpoint(step: int, directory: Path, figures: dict) -> None:
        save_checkpoint(directory, policy, {**extra, "step": step, **figures})
        torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "step": step,
                    "best": best}, directory / "trainer_state.pt")

    policy.train()
    bar = tqdm(range(start_step, config.steps), desc=f"train {config.policy}", disable=not (config.progress and ddp.main),
               initial=start_step, total=config.steps)
    started, samples = time.perf_counter(), 0
    for step in bar:
        batch = _to_device(train_sampler.sample(config.batch_size, rng), device)
        with autocast:
            loss = policy.compute_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ddp.average_gradients(params)
        optimizer.step()
        schedule.step()
        policy.after_optimizer_step()
        samples += config.batch_size
        done = step + 1
        if not ddp.main:
            continue
        if done % 25 == 0 or done == config.steps:
            rate = samples / (time.perf_counter() - started)
            writer.add_scalar("train/loss", loss.item(), done)
            writer.add_scalar("train/lr", schedule.get_last_lr()[0], done)
            writer.add_scalar("train/samples_per_s", rate, done)
            history["step"].append(done)
            history["loss"].append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}", samples_per_s=f"{rate:.0f}")
        if val_sampler is not None and (done % config.val_every == 0 or done == config.steps):
            val = validation_loss(policy, val_sampler, config.batch_size, device)
            writer.add_scalar("val/loss", val, done)
            history["val_step"].append(done)
            history["val_loss"].append(val)
            if config.eval_episodes == 0 and val < best["val_loss"]:
                best["val_loss"] = val
                checkpoint(done, best_dir, {"val_loss": val})
        evaluate_now = config.eval_episodes > 0 and (
            done == config.steps or (config.eval_every and done % config.eval_every == 0))
        if evaluate_now:
            result = _evaluate_in_sim(policy, config, dataset.schema.task, out / f"eval_{done}")
            writer.add_scalar("eval/success_rate", result["success_rate"], done)
            history["eval_step"].append(done)
            history["success"].append(result["success_rate"])
            if result["success_rate"] > best["success_rate"]:
                best["success_rate"] = result["success_rate"]
                checkpoint(done, best_dir, {"success_rate": result["success_rate"]})
            checkpoint(done, last_dir, {"success_rate": result["success_rate"]})
        elif done == config.steps:
            checkpoint(done, last_dir, {})
    bar.close()
    best_json = {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in best.items()}  # valid JSON
    summary = {"output_dir": str(out), "steps": config.steps, "obs_keys": list(obs_keys),
               "samples_per_s": samples / max(time.perf_counter() - started, 1e-9), "best": best_json}
    if ddp.main:
        writer.close()
        if not best_dir.exists():  # no evaluation and no validation split: the last checkpoint is the best we know
            checkpoint(config.steps, best_dir, {})
        plot_training(history, out / "training.png")
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    ddp.close()
    return summary


@torch.no_grad()
def validation_loss(policy: Any, sampler: SequenceSampler, batch_size: int, device: torch.device,
                    batches: int = 8) -> float:
    """Mean loss over fixed validation batches (same items every time, so curves are comparable)."""
    was_training = policy.training
    policy.eval()
    rng = np.random.default_rng(12345)
    losses = [policy.compute_loss(_to_device(sampler.sample(batch_size, rng), device)).item() for _ in range(batches)]
    policy.train(was_training)
    return float(np.mean(losses))


def _evaluate_in_sim(policy: Any, config: TrainConfig, task: str, out: Path) -> dict:
    from robo.evaluate import EvalConfig, evaluate_policy

    was_training = policy.training
    policy.eval()
    result = evaluate_policy(policy, EvalConfig(task=task, episodes=config.eval_episodes, num_envs=config.eval_envs,
                                                output_dir=out, video_episodes=0, progress=False))
    policy.train(was_training)
    return result


def _warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def plot_training(history: dict[str, list], path: Path) -> None:
    """PNG of the training loss, validation loss and (if evaluated) success rate against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if history["eval_step"] else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.4))
    axes[0].plot(history["step"], history["loss"], lw=1)
    axes[0].set(title="training loss", xlabel="step", yscale="log")
    axes[1].plot(history["val_step"], history["val_loss"], marker="o")
    axes[1].set(title="validation loss", xlabel="step", yscale="log")
    if panels == 3:
        axes[2].plot(history["eval_step"], history["success"], marker="o", color="tab:green")
        axes[2].set(title="simulated success rate", xlabel="step", ylim=(-0.02, 1.02))
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
