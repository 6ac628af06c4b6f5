"""``robo train``: behaviour cloning of a diffusion, consistency or Gaussian policy from a Zarr dataset.

Read top to bottom: config -> data (split by episode, normaliser fitted on the training episodes) -> policy ->
AdamW with warm-up + cosine decay -> loop (progress bar, TensorBoard, validation loss, periodic simulated success)
-> checkpoints.

What is evaluated is what ships. Validation loss and in-training success are measured on the weights that
``robo eval`` and the robot load (the EMA), success on validation seeds (90 000+) disjoint from the test seeds
(10 000+); ``best/`` is the best of those, ``last/`` the resumable state.

Reproducible by construction. Every step's randomness is a pure function of (seed, step): the global batch's
sample indices come from a numpy generator seeded with (seed, step), and each slice of it runs its loss under the
torch generator seeded with (seed, step, slice). So a resumed run continues exactly where it stopped (2N steps
straight and N + resume N give bit-identical weights on the CPU with the same thread count), and the result does
not depend on how the global batch is split: over DDP ranks or ``--grad-accum`` micro-batches on one process.

Checkpoints: ``last/`` (raw weights, EMA, optimiser, LR schedule, step, history) every ``checkpoint_every`` steps,
written as one atomic unit; ``--stop-after N`` ends the invocation at step N as if it were interrupted (time-boxed
jobs); ``--resume`` continues from ``last/`` with the original LR schedule.

Devices: CPU or CUDA (bf16 autocast on CUDA). Several GPUs (or CPU processes with gloo):
``torchrun --nproc_per_node N -m robo.cli train ...``; ``batch_size`` is the global batch, each rank takes its own
disjoint slice, gradients are summed in one all-reduce, rank 0 logs, evaluates and saves between barriers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
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
from robo.distributed import Distributed
from robo.evaluate import VALIDATION_SEED_OFFSET

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
    batch_size: int = 256  # global samples per optimiser step, split evenly over DDP ranks and grad_accum slices
    grad_accum: int = 1  # micro-batches per optimiser step on each rank (same result as that many more ranks)
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 1e-6  # AdamW weight decay
    warmup_steps: int = 200  # linear LR warm-up
    val_ratio: float = 0.05  # fraction of episodes held out for validation loss
    val_every: int = 500  # steps between validation losses
    eval_every: int = 0  # steps between simulated success evaluations (0 = only at the end)
    eval_episodes: int = 20  # episodes per simulated evaluation (0 = never evaluate in sim)
    eval_envs: int = 2  # parallel sim envs during evaluation
    eval_seed: int = VALIDATION_SEED_OFFSET  # first seed of in-training (selection) episodes; tests use 10000+
    seed: int = 0  # weights initialisation, episode split, and every step's batch and noise
    checkpoint_every: int = 500  # steps between resumable checkpoints in last/ (0 = only at the end)
    stop_after: int = 0  # end this invocation at this step as if interrupted, keeping last/ (0 = run to steps)
    ddp_timeout_min: float = 60.0  # collective time-out under torchrun (covers rank 0's simulated evaluation)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads (0 = torch's default)
    resume: bool = False  # continue from output_dir/last (exactly: weights, EMA, optimiser, schedule, step)
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


def _batch_items(seed: int, step: int, n_items: int, batch: int) -> np.ndarray:
    """The global batch of step ``step``: sample indices drawn from a generator seeded with (seed, step)."""
    return np.random.default_rng([seed, step, 0]).integers(0, n_items, size=batch)


def _slice_seed(seed: int, step: int, slice_index: int) -> int:
    """The torch seed for one slice of a step's global batch (diffusion noise, timesteps, crops)."""
    return int(np.random.SeedSequence([seed, step, 1, slice_index]).generate_state(1, np.uint64)[0]) >> 1


@contextlib.contextmanager
def _seeded_torch(device: torch.device, seed: int):
    """Run a block on torch's global generator seeded with ``seed``, then put the outer state back."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


TRAINER_STATE = "trainer_state.pt"  # optimiser, schedule, step, history: saved inside last/ with the weights


def _has_state(directory: Path) -> bool:
    from policies.checkpoint import recover_interrupted_save

    recover_interrupted_save(directory)  # a save that a crash interrupted is finished first
    return (directory / TRAINER_STATE).is_file()


def train(config: TrainConfig) -> dict[str, Any]:
    """Train and return a summary (paths and figures); writes under ``config.output_dir``."""
    from policies import PolicySpec, make_policy, save_checkpoint
    from policies.checkpoint import load_checkpoint

    device = _device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    ddp = Distributed(device, config.ddp_timeout_min)
    device = ddp.device(device)
    slices = ddp.world * config.grad_accum
    if config.grad_accum < 1 or config.batch_size % slices:
        raise DatasetError(f"batch_size {config.batch_size} must split evenly over {ddp.world} rank(s) x "
                           f"{config.grad_accum} micro-batch(es); change --batch-size or --grad-accum")
    micro = config.batch_size // slices
    out = Path(config.output_dir)
    last_dir, best_dir = out / "last", out / "best"
    resuming = _has_state(last_dir)
    if resuming and not config.resume:
        raise DatasetError(f"{out} already holds a run (last/ is resumable): pass --resume to continue it, or "
                           f"choose a new --output-dir")

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
    spec = PolicySpec.from_obs({k: (dataset.schema.obs[k].shape, dataset.schema.obs[k].dtype) for k in obs_keys},
                               dataset.schema.action.shape[0], n_obs=config.n_obs, horizon=config.horizon,
                               n_action_steps=config.n_action_steps)

    # The policy: fresh (same seed on every rank, then rank 0's weights broadcast) or the raw weights + EMA of last/.
    torch.manual_seed(config.seed)
    state: dict[str, Any] = {}
    if resuming:
        policy = load_checkpoint(last_dir, device=device, use_ema=False)
        spec.check_compatible(policy.spec)
        if teacher is not None:
            policy.attach_teacher(teacher)
        state = torch.load(last_dir / TRAINER_STATE, map_location=device, weights_only=True)
    elif teacher is not None:
        from policies.consistency import ConsistencyPolicy

        policy = ConsistencyPolicy.from_teacher(teacher, config.policy_config).to(device)
    else:
        policy_config = dict(config.policy_config)
        if policy_config.get("curriculum_steps") == -1:  # "the whole run": fixed now, saved with the weights
            policy_config["curriculum_steps"] = config.steps
        policy = make_policy(config.policy, spec, train_sampler.fit_normalizer(), policy_config or None).to(device)
    if teacher is not None:
        teacher.requires_grad_(False)
    ddp.broadcast_policy(policy)
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    # The schedule's length is the run's: a resumed run keeps it even if --steps changed, so the LR never jumps.
    schedule_steps = int(state.get("schedule_steps", config.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(config.warmup_steps, schedule_steps))
    start_step, best = 0, {"success_rate": -1.0, "val_loss": math.inf}
    history: dict[str, list] = {"step": [], "loss": [], "val_step": [], "val_loss": [], "eval_step": [], "success": []}
    if resuming:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start_step, best, history = int(state["step"]), dict(state["best"]), dict(state["history"])
        if schedule_steps != config.steps:
            log.warning("the LR schedule keeps this run's original length (%d steps), not --steps %d; steps past "
                        "it run at its final learning rate", schedule_steps, config.steps)
        if int(state.get("batch_size", config.batch_size)) != config.batch_size:
            log.warning("batch_size changed from %s to %d: the resumed run will not match an uninterrupted one",
                        state.get("batch_size"), config.batch_size)
        log.info("resumed from %s at step %d", last_dir, start_step)
    end_step = min(config.steps, config.stop_after) if config.stop_after > 0 else config.steps

    writer = None
    if ddp.main:
        from torch.utils.tensorboard import SummaryWriter

        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2, default=str))
        writer = SummaryWriter(str(out / "tb"), purge_step=start_step or None)
    extra = {"task": dataset.schema.task, "dataset": str(config.dataset), "fps": dataset.schema.fps,
             "teacher": str(config.teacher) if config.teacher else None, "seed": config.seed,
             "robot_config": dataset.schema.robot_config, "train_episodes": int(len(train_eps))}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def save_state(step: int) -> None:
        """last/: the policy (raw weights + EMA) and the trainer state, one atomic unit."""
        trainer = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "step": step,
                   "schedule_steps": schedule_steps, "batch_size": config.batch_size, "best": best,
                   "history": history}
        save_checkpoint(last_dir, policy, {**extra, "step": step},
                        also=lambda d: torch.save(trainer, d / TRAINER_STATE))

    def save_best(step: int, figures: dict) -> None:
        # Raw weights and EMA are both saved; load_checkpoint runs the EMA: the weights that were scored.
        save_checkpoint(best_dir, policy, {**extra, "step": step, **figures})

    bar = tqdm(range(start_step, end_step), desc=f"train {config.policy}", disable=not (config.progress and ddp.main),
               initial=start_step, total=config.steps)
    started, samples = time.perf_counter(), 0
    for step in bar:
        items = _batch_items(config.seed, step, len(train_sampler), config.batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=device)
        for j in range(config.grad_accum):
            k = ddp.rank * config.grad_accum + j  # this slice's place in the global batch
            batch = _to_device(train_sampler.get_batch(items[k * micro:(k + 1) * micro]), device)
            with _seeded_torch(device, _slice_seed(config.seed, step, k)):
                with autocast:
                    loss = policy.compute_loss(batch)
                loss.backward()
            loss_sum += loss.detach()
        ddp.sum_gradients(params)
        if slices > 1:  # summed over slices -> the mean over the global batch
            for p in params:
                if p.grad is not None:
                    p.grad /= slices
        optimizer.step()
        schedule.step()
        policy.after_optimizer_step()
        samples += config.batch_size
        done = step + 1
        log_now = done % 25 == 0 or done == config.steps  # not end_step: an interruption leaves no trace
        if log_now and ddp.world > 1:  # every rank reaches this at the same steps
            ddp.dist.all_reduce(loss_sum)
        validate = val_sampler is not None and (done % config.val_every == 0 or done == config.steps)
        evaluate_now = config.eval_episodes > 0 and (
            done == config.steps or (config.eval_every and done % config.eval_every == 0))
        if ddp.main:
            if log_now:
                mean_loss = loss_sum.item() / slices
                rate = samples / (time.perf_counter() - started)
                writer.add_scalar("train/loss", mean_loss, done)
                writer.add_scalar("train/lr", schedule.get_last_lr()[0], done)
                writer.add_scalar("train/samples_per_s", rate, done)  # all ranks together
                history["step"].append(done)
                history["loss"].append(mean_loss)
                bar.set_postfix(loss=f"{mean_loss:.4f}", samples_per_s=f"{rate:.0f}")
            if validate:
                val = validation_loss(policy, val_sampler, config.batch_size, device)
                writer.add_scalar("val/loss", val, done)
                history["val_step"].append(done)
                history["val_loss"].append(val)
                if config.eval_episodes == 0 and val < best["val_loss"]:
                    best["val_loss"] = val
                    save_best(done, {"val_loss": val})
            if evaluate_now:
                result = _evaluate_in_sim(policy, config, dataset.schema.task, out / f"eval_{done}", device)
                writer.add_scalar("eval/success_rate", result["success_rate"], done)
                history["eval_step"].append(done)
                history["success"].append(result["success_rate"])
                if result["success_rate"] > best["success_rate"]:
                    best["success_rate"] = result["success_rate"]
                    save_best(done, {"success_rate": result["success_rate"], "eval_seed": config.eval_seed,
                                     "eval_episodes": config.eval_episodes})
            if done == end_step or (config.checkpoint_every and done % config.checkpoint_every == 0):
                save_state(done)
        if validate or evaluate_now:
            ddp.barrier()  # the other ranks wait here, not inside the next all-reduce
    bar.close()
    identical = ddp.replicas_identical(policy)
    if not identical:
        log.error("the DDP replicas diverged: their weights differ after training (report this as a bug)")
    finished = end_step == config.steps
    best_json = {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in best.items()}  # valid JSON
    summary = {"output_dir": str(out), "steps": config.steps, "step": end_step, "finished": finished,
               "obs_keys": list(obs_keys), "world_size": ddp.world,
               "replicas_identical": identical,
               "samples_per_s": samples / max(time.perf_counter() - started, 1e-9), "best": best_json}
    if ddp.main:
        writer.close()
        if finished and not best_dir.exists():  # nothing to select on: the last weights are the best we know
            save_best(end_step, {})
        plot_training(history, out / "training.png")
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    ddp.close()
    return summary


@torch.no_grad()
def validation_loss(policy: Any, sampler: SequenceSampler, batch_size: int, device: torch.device,
                    batches: int = 8) -> float:
    """Mean loss of the shipped weights over fixed validation batches with fixed diffusion noise and timesteps,
    so two evaluations differ only because the weights did."""
    items = np.random.default_rng(12345).integers(0, len(sampler), size=(batches, batch_size))
    losses = []
    with policy.shipped_weights():
        for i, batch_items in enumerate(items):
            with _seeded_torch(device, 12345 + i):
                losses.append(policy.compute_loss(_to_device(sampler.get_batch(batch_items), device)).item())
    return float(np.mean(losses))


def _evaluate_in_sim(policy: Any, config: TrainConfig, task: str, out: Path, device: torch.device) -> dict:
    """Success of the shipped weights on the validation seeds (never the test seeds robo eval reports)."""
    from robo.evaluate import EvalConfig, evaluate_policy

    eval_cfg = EvalConfig(task=task, episodes=config.eval_episodes, num_envs=config.eval_envs, seed=config.eval_seed,
                          output_dir=out, video_episodes=0, progress=False)
    with policy.shipped_weights(), _seeded_torch(device, config.eval_seed):
        return evaluate_policy(policy, eval_cfg)


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
