"""``robo eval``: success rate of a checkpoint over N seeded episodes in simulation, with a confidence interval,
rollout videos and a PNG summary.

Episodes run in waves of ``num_envs`` sub-process environments stepping in lockstep; the policy is called once
per wave step for all of them through the same :class:`hardware.runner.PolicyRunner` the ROS node uses, so the
evaluated observation history and chunk execution are the deployed ones. Evaluation seeds start at 10 000 so they
never coincide with the demonstration seeds (0, 1, ...); in-training selection uses validation seeds from
90 000 (``VALIDATION_SEED_OFFSET``), so the checkpoint picked is never scored on the reported test episodes.

Reproducible: the environments are seeded per episode and the policy's sampling noise per wave (from the
evaluation seed and the wave's first episode), so the same command gives the same per-episode outcomes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hardware.deploy_policy import NumpyPolicy
from hardware.runner import Hold, PolicyRunner, RunnerConfig

EVAL_SEED_OFFSET = 10_000  # test episodes: robo eval and every reported figure
VALIDATION_SEED_OFFSET = 90_000  # in-training selection episodes, disjoint from the test seeds


@dataclass
class EvalConfig:
    checkpoint: Path | None = None  # checkpoint directory (robo eval); None when a policy object is passed
    task: str = ""  # simulated task; empty = the checkpoint's training task
    episodes: int = 50  # evaluation episodes
    seed: int = EVAL_SEED_OFFSET  # seed of the first episode (episode i uses seed + i)
    num_envs: int = 2  # sub-process environments stepping in lockstep
    n_action_steps: int = 0  # actions executed per chunk; 0 = the checkpoint's value
    plan_ahead: bool = True  # the ROS node's schedule (its default): each chunk planned one step early, so what is
    #   evaluated is what is deployed (hardware/runner.py); --no-plan-ahead plans in the step instead
    inference_steps: int = 0  # denoising steps for diffusion/consistency policies; 0 = the policy's default
    scheduler: str = ""  # diffusion only: "ddim" (default) or "ddpm"
    cameras: tuple[str, ...] = ()  # sim cameras; empty = those the policy's observation keys need
    image_size: int = 84  # camera image size (square)
    horizon: int = 0  # episode step limit; 0 = the task's default
    video_episodes: int = 2  # rollout videos to write (mp4, agentview)
    output_dir: Path = Path("data/eval")  # results.json, summary.png, videos
    progress: bool = True  # progress bar


@dataclass
class EvalResult:
    success_rate: float
    ci95: tuple[float, float]  # Wilson score interval
    episodes: int
    successes: list[bool] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    # Per-episode fingerprint of every executed action (SHA-256 of the float32 bytes, 16 hex digits): two runs of
    # the same command must agree on these, not only on outcomes.
    action_digests: list[str] = field(default_factory=list)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a success rate (sensible at 0 or n successes, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def cameras_for(obs_keys: list[str]) -> tuple[str, ...]:
    """The sim cameras a policy's observation keys need (``agentview_rgb`` -> ``agentview``)."""
    from sim.env import CAMERA_KEY_PREFIX

    cams = []
    for key in obs_keys:
        for cam, prefix in CAMERA_KEY_PREFIX.items():
            if key.startswith(prefix + "_") and cam not in cams:
                cams.append(cam)
    return tuple(cams)


def evaluate_policy(policy: Any, config: EvalConfig) -> dict[str, Any]:
    """Roll ``policy`` out in simulation; writes results.json, summary.png and videos under ``config.output_dir``."""
    from policies.checkpoint import check_against
    from sim.env import EnvConfig
    from sim.vector import make_vector_env

    spec = policy.spec
    obs_keys = list(spec.obs_keys)
    task = config.task or getattr(policy, "extra", {}).get("task", "")
    if not task:
        raise ValueError("no task given and the checkpoint does not name one; pass --task")
    cameras = tuple(config.cameras) or cameras_for(obs_keys)
    depth = any(k.endswith("_depth") for k in obs_keys)
    env_cfg = EnvConfig(task=task, cameras=cameras, image_height=config.image_size, image_width=config.image_size,
                        depth=depth, horizon=config.horizon or None)
    num_envs = max(1, min(config.num_envs, config.episodes))
    venv = make_vector_env(env_cfg, num_envs, seeds=config.seed)
    try:
        obs_space = venv.single_observation_space
        check_against(policy, {k: (obs_space[k].shape, str(obs_space[k].dtype)) for k in obs_space.spaces},
                      venv.single_action_space.shape[0])
        runner_cfg = RunnerConfig(n_obs=spec.n_obs, n_action_steps=config.n_action_steps or spec.n_action_steps,
                                  plan_ahead=config.plan_ahead and (config.n_action_steps or spec.n_action_steps) > 1)
        adapter = NumpyPolicy(policy, config.inference_steps, config.scheduler)
        # The deployed safety filter, with the sim's world-frame workspace: what is evaluated is what is deployed.
        from hardware.kinematics import FRANKA
        from hardware.safety import SIM_PANDA_LIMITS

        runner = PolicyRunner(adapter, {k: (tuple(obs_space[k].shape), str(obs_space[k].dtype)) for k in obs_keys},
                              runner_cfg, batch=num_envs, safety=SIM_PANDA_LIMITS, kinematics=FRANKA)
        result = _run_waves(venv, runner, adapter, obs_keys, config, num_envs)
    finally:
        venv.close()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"task": task, **asdict(result), "config": {k: str(v) for k, v in asdict(config).items()}}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    plot_summary(result, task, out / "summary.png")
    return summary


def _run_waves(venv: Any, runner: PolicyRunner, adapter: _PolicyAdapter, obs_keys: list[str], config: EvalConfig,
               num_envs: int) -> EvalResult:
    successes, lengths, seeds, videos, digests = [], [], [], [], []
    bar = tqdm(total=config.episodes, desc="eval", unit="ep", disable=not config.progress)
    for wave_start in range(0, config.episodes, num_envs):
        n = min(num_envs, config.episodes - wave_start)
        wave_seeds = [config.seed + wave_start + i for i in range(num_envs)]
        obs, _ = venv.reset(seed=wave_seeds)
        runner.reset()
        adapter.reseed(config.seed, wave_start)
        done = np.zeros(num_envs, bool)
        success = np.zeros(num_envs, bool)
        length = np.zeros(num_envs, int)
        record = [wave_start + i < config.video_episodes for i in range(num_envs)]
        frames: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
        hashes = [hashlib.sha256() for _ in range(num_envs)]
        while not done[:n].all():
            if any(record):
                rendered = venv.call("render_frame")
                for i in range(num_envs):
                    if record[i] and not done[i]:
                        frames[i].append(rendered[i])
            actions = runner.act_batch(obs)  # all keys: the safety filter reads the measured pose
            if isinstance(actions, Hold):
                raise RuntimeError(f"the runner held in simulation: {actions.reason}")
            actions = actions.astype(np.float32)
            for i in np.flatnonzero(~done):
                hashes[i].update(actions[i].tobytes())
            obs, _, terminated, truncated, info = venv.step(actions)
            active = ~done
            length += active
            success |= active & _step_success(info, num_envs)
            done |= terminated | truncated
        for i in range(n):
            successes.append(bool(success[i]))
            lengths.append(int(length[i]))
            seeds.append(wave_seeds[i])
            digests.append(hashes[i].hexdigest()[:16])
            if record[i] and frames[i]:
                videos.append(str(_write_video(frames[i], Path(config.output_dir), wave_seeds[i], success[i])))
        bar.update(n)
        bar.set_postfix(success=f"{np.mean(successes):.2f}")
    bar.close()
    k = int(np.sum(successes))
    return EvalResult(success_rate=k / len(successes), ci95=wilson_interval(k, len(successes)),
                      episodes=len(successes), successes=successes, lengths=lengths, seeds=seeds, videos=videos,
                      action_digests=digests)


def _step_success(info: dict, num_envs: int) -> np.ndarray:
    """Per-env success of this step under either gymnasium autoreset mode: with SAME_STEP, an env that just
    finished reports its last step in ``final_info`` (and the new episode's reset info at top level)."""
    success = np.asarray(info.get("success", np.zeros(num_envs, bool)), bool)
    final = info.get("final_info")
    if isinstance(final, dict) and "success" in final:
        finished = np.asarray(info.get("_final_info", np.zeros(num_envs, bool)), bool)
        success = np.where(finished, np.asarray(final["success"], bool), success)
    return success


def _write_video(frames: list[np.ndarray], out: Path, seed: int, success: bool) -> Path:
    import imageio.v2 as imageio

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"rollout_seed{seed}_{'success' if success else 'failure'}.mp4"
    with imageio.get_writer(path, fps=20, codec="libx264", quality=7, macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(frame)
    return path


def plot_summary(result: EvalResult, task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [1, 2]})
    lo, hi = result.ci95
    # The Wilson bounds can round a hair past the rate (e.g. 6/6 gives hi = 1.0 - 1e-17): errors never go negative.
    errors = [[max(0.0, result.success_rate - lo)], [max(0.0, hi - result.success_rate)]]
    left.bar([0], [result.success_rate], yerr=errors,
             color="tab:green", capsize=8, width=0.5)
    left.set(xticks=[], ylim=(0, 1.05), ylabel="success rate",
             title=f"{task}: {sum(result.successes)}/{result.episodes} ({lo:.2f}-{hi:.2f} 95% CI)")
    lengths = np.asarray(result.lengths)
    ok = np.asarray(result.successes, bool)
    bins = np.linspace(0, max(1, lengths.max() if len(lengths) else 1), 20)
    right.hist([lengths[ok], lengths[~ok]], bins=bins, stacked=True, color=["tab:green", "tab:red"],
               label=["success", "failure"])
    right.set(xlabel="episode length (steps)", ylabel="episodes", title="episode lengths")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_checkpoint(config: EvalConfig) -> dict[str, Any]:
    from policies.checkpoint import load_checkpoint, read_config

    from robo.rl.noise_ppo import load_noise_policy, read_noise_policy

    if config.checkpoint is None:
        raise ValueError("pass a checkpoint directory")
    steering = read_noise_policy(config.checkpoint)
    if steering is not None:  # a noise-space PPO run's folder: its base policy fed the steered noise, as shipped
        policy: Any = load_noise_policy(config.checkpoint).shipped()
        policy.extra = read_config(steering["base_checkpoint"]).get("extra", {})
    else:
        policy = load_checkpoint(config.checkpoint)
        policy.extra = read_config(config.checkpoint).get("extra", {})
    policy.eval()
    return evaluate_policy(policy, config)
