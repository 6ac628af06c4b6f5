"""``robo finetune``: online PPO in simulation, then (optionally) distil the refined teacher into a one-step student,
gate the student against the teacher, and export the artifact if it passed.

Stages, each writing under ``output_dir``:
1. ``ppo/``: online PPO (robo/rl/online.py) from a BC checkpoint. Diffusion checkpoints refine their denoising
   chain, Gaussian ones their chunk distribution (``method=auto``); ``method=noise`` instead steers the initial
   noise of a frozen (one-step) policy (robo/rl/noise_ppo.py). ``ppo/best`` is the best by in-training success on
   validation seeds; ``ppo/last`` the resumable state (policy, value net, optimiser, iteration, env steps,
   history); ``--resume`` continues it. Environments restart their episodes on resume.
2. ``student/``: consistency distillation of ``ppo/best`` through ``robo train --preset distill`` (the same code).
3. the student gate: teacher and student on the same test seeds (common random numbers), at least 100 episodes;
   the student ships only if its success is within ``gate_margin`` of the teacher's. ``report.json`` says why.
4. ``artifact/``: ``robo export`` of the student, refused by export itself if the gate failed.

Devices: CPU with a few envs, or a GPU box with many (``--num-envs 32 --device cuda``): the envs are sub-processes
either way; the update runs on ``device``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from robo.compare_runs import plot_success_curve
from robo.evaluate import EVAL_SEED_OFFSET, VALIDATION_SEED_OFFSET

log = logging.getLogger(__name__)
MIN_GATE_EPISODES = 100  # the rule: a student is judged on at least this many episodes
TRAINER_STATE = "online_state.pt"


@dataclass
class FinetuneConfig:
    checkpoint: Path = Path("data/runs/lift_diffusion/best")  # BC checkpoint to refine (or, for method=noise, to steer)
    output_dir: Path = Path("data/runs/lift_finetune")  # ppo/, student/, artifact/, report.json
    method: Literal["auto", "chain", "gaussian", "noise"] = "auto"  # auto: chain PPO for diffusion, gaussian PPO for gaussian
    task: str = ""  # simulated task; empty = the checkpoint's
    num_envs: int = 2  # sub-process envs stepping in lockstep
    env_steps: int = 200_000  # training budget in env steps (all envs together)
    chunks_per_iter: int = 32  # action chunks each env executes per PPO iteration
    epochs: int = 5  # passes over each iteration's data
    minibatch_size: int = 128  # chunks per PPO minibatch
    gamma: float = 0.99  # per env step; a chunk of n executed actions is discounted by gamma**n
    reward: Literal["sparse", "potential"] = "sparse"  # training reward: sparse (1 on success) or potential-shaped
    #   sparse: plus gamma*phi(s') - phi(s), phi = robosuite's staged reward (reach, grasp, ...), 0 once done, which
    #   keeps sparse's optimal policies (sim/env.py). Success, the only figure reported, is the same either way.
    gae_lambda: float = 0.95  # GAE lambda
    clip_eps: float = 0.0  # PPO clip range on per-dimension ratios; 0 = per method: chain 0.01 (DPPO), others 0.05
    target_kl: float = 0.01  # stop an iteration's updates once per-dimension approx-KL passes this (0 = off)
    value_clip: float = 0.2  # clipped value loss: the value may move +-this per iteration (0 = plain MSE)
    vf_coef: float = 0.5  # weight of the value loss
    lr: float = 3e-5  # actor learning rate (the denoiser, or the Gaussian policy)
    noise_lr: float = 3e-4  # noise-space policy learning rate (a small fresh MLP, not a pretrained denoiser)
    critic_lr: float = 1e-3  # value net learning rate
    max_grad_norm: float = 1.0  # gradient-norm clip
    bc_coef: float = 0.0  # weight of a behaviour-cloning anchor: the policy's training loss on its dataset
    #   in every PPO minibatch (DPPO's bc_loss_coeff). With few episodes per iteration the advantages are mostly
    #   noise and the chain follows it: on pure-noise advantages the shipped chunk of a Lift policy drifted 0.28
    #   (RMS, normalised actions) in 10 iterations, 0.05 with bc_coef 1 (docs/online_rl.md). Not for --method noise.
    noise_prior_coef: float = 1.0  # noise-space PPO only (chain and Gaussian PPO have bc_coef): weight of
    #   KL(steering || N(0, I)) per dimension in each minibatch's loss, keeping the chosen x_K where the frozen base
    #   was trained. Without it a Lift run's steering mean drifted to |0.77| per dimension in 16 iterations
    #   (per-iteration approx-KL < 1e-3) and success fell 0.40 -> 0.00; with 1 (or 0.3) it held (docs/online_rl.md).
    value_warmup_iters: int = 2  # first iterations fit only the value net, to Monte-Carlo returns
    value_init: Path | None = None  # safetensors of a ValueNet to start from (e.g. an earlier run's value.safetensors)
    value_from_critic: Path | None = None  # an offline IQL critic (robo improve's <out>/critic): its V becomes the
    #   value function, fine-tuned online, and the Monte-Carlo warm-up is skipped (robo/rl/critic.py: CriticValue)
    sigma_floor: float = 0.1  # chain: lower bound on every denoising step's std (sampling and likelihood; DPPO 0.1)
    mean_eta: float = 1.0  # chain: DDIM eta of each step's mean (1 = sample_chain's; 0 collapsed training success on Lift)
    gaussian_std: float = 0.0  # Gaussian PPO: start exploring at this std, normalised units (0 = the BC's own)
    #   The BC likelihood learns the demonstrations' spread (0.35 per dim on lift_c40n8), and sampling the whole
    #   executed chunk that wide fails most episodes; PPO learns the log-std on from the value set here.
    noise_clip: float = 3.0  # clip exploration noise draws at this many std (0 = off)
    ddim_steps: int = 0  # chain: denoising steps K during PPO (0 = the policy's num_inference_steps)
    trainable_last_k: int = 0  # chain: only the last K' denoising steps enter the loss (0 = all)
    executed_only: bool = True  # only the executed part of a chunk contributes to its log-prob
    eval_every: int = 10  # PPO iterations between success evaluations on validation seeds (0 = only at the end)
    eval_episodes: int = 50  # episodes per evaluation (0 = no simulated evaluation)
    seed: int = 0  # env seeds, sampling noise, minibatch order
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 1  # torch CPU threads for the update (the envs are separate processes)
    resume: bool = False  # continue ppo/last
    progress: bool = True  # progress bar
    distill_steps: int = 0  # after PPO: distil the refined teacher into a one-step student (0 = skip)
    dataset: Path | None = None  # dataset for distillation; None = the checkpoint's
    gate_episodes: int = 100  # episodes for the student gate (the student ships only with >= 100)
    gate_margin: float = 0.02  # student success may be at most this far below the teacher's
    export: bool = True  # export the student as the deploy artifact when it passes the gate


# --- building blocks ---------------------------------------------------------------------------------------------
def build_actor(policy: Any, config: FinetuneConfig) -> Any:
    from robo.rl.noise_ppo import NoiseActor, NoisePolicyConfig
    from robo.rl.online import ChainActor, GaussianActor

    method = config.method
    if method == "auto":
        method = {"diffusion": "chain", "gaussian": "gaussian"}.get(policy.kind, "")
        if not method:
            raise ValueError(f"a {policy.kind} checkpoint has no PPO of its own; use --method noise to steer it")
    if method == "chain":
        if policy.kind != "diffusion":
            raise ValueError(f"chain PPO needs a diffusion checkpoint, got a {policy.kind} policy")
        return ChainActor(policy, config.sigma_floor, config.noise_clip, config.ddim_steps,
                          trainable_last_k=config.trainable_last_k, executed_only=config.executed_only,
                          mean_eta=config.mean_eta)
    if method == "gaussian":
        if policy.kind != "gaussian":
            raise ValueError(f"Gaussian PPO needs a gaussian checkpoint, got a {policy.kind} policy")
        return GaussianActor(policy, config.noise_clip, config.executed_only)
    return NoiseActor(policy, NoisePolicyConfig(noise_clip=config.noise_clip))


def dataset_of(config: FinetuneConfig) -> Path:
    """The dataset the checkpoint was trained on (or ``--dataset``): distillation and the BC anchor use it."""
    from policies.checkpoint import read_config

    dataset = config.dataset or read_config(config.checkpoint).get("extra", {}).get("dataset")
    if not dataset:
        raise ValueError(f"{config.checkpoint} does not name its dataset; pass --dataset")
    return Path(dataset)


def behaviour_cloning_loss(policy: Any, config: FinetuneConfig) -> Callable[[], torch.Tensor]:
    """``bc_coef`` x the policy's training loss on a fresh minibatch of its dataset (seeded by ``config.seed``)."""
    from robo.data.sampler import SamplerConfig, SequenceSampler
    from robo.data.store import ZarrDataset

    if config.method == "noise":
        raise ValueError("--bc-coef anchors the policy PPO trains; noise-space PPO leaves it frozen (use 0)")
    spec = policy.spec
    sampler = SequenceSampler(ZarrDataset.open(dataset_of(config)),
                              SamplerConfig(obs_keys=list(spec.obs_keys), n_obs=spec.n_obs, horizon=spec.horizon))
    rng = np.random.default_rng(_seed_of(config.seed, 3))

    def loss(_obs: Any) -> torch.Tensor:
        return config.bc_coef * policy.compute_loss(sampler.sample(config.minibatch_size, rng))

    return loss


def _device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0]) >> 1


def measure_raw_steps_per_s(venv: Any, steps: int) -> float:
    """Env steps/s of the same vector env with no policy in the loop (holding still): the throughput baseline."""
    from robo.rl.online import HOLD_ACTION

    action = np.repeat(HOLD_ACTION[None, :venv.single_action_space.shape[0]], venv.num_envs, 0)
    venv.reset(seed=0)
    venv.step(action)  # the first step pays for lazy initialisation in the workers
    started = time.perf_counter()
    for _ in range(steps):
        venv.step(action)
    return steps * venv.num_envs / (time.perf_counter() - started)


def sim_evaluator(task: str, num_envs: int, out: Path) -> Callable[[Any, int, int, str], dict[str, Any]]:
    """evaluate(policy, seed, episodes, name) through robo.evaluate (the PolicyRunner path the robot uses)."""
    from robo.evaluate import EvalConfig, evaluate_policy

    def evaluate(policy: Any, seed: int, episodes: int, name: str) -> dict[str, Any]:
        cfg = EvalConfig(task=task, episodes=episodes, seed=seed, num_envs=num_envs, output_dir=out / name,
                         video_episodes=0, progress=False)
        return evaluate_policy(policy, cfg)

    return evaluate


# --- stage 1: online PPO -----------------------------------------------------------------------------------------
def train_online(config: FinetuneConfig, venv: Any = None,
                 evaluator: Callable[[Any, int, int, str], dict[str, Any]] | None = None) -> dict[str, Any]:
    """PPO until ``env_steps``; returns a summary. ``venv`` / ``evaluator`` default to the simulated task (tests
    pass a toy vector env and no evaluator)."""
    from policies.checkpoint import load_checkpoint, read_config, save_checkpoint
    from robo.rl.noise_ppo import NoiseActor, save_noise_policy
    from robo.rl.online import RolloutState, ValueNet, advantages_of, collect_rollout, flat_observations, ppo_update
    from robo.rl.ppo import PPOConfig
    from torch.utils.tensorboard import SummaryWriter

    device = _device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.output_dir) / "ppo"
    last_dir, best_dir = out / "last", out / "best"
    resuming = (last_dir / TRAINER_STATE).exists()
    if resuming and not config.resume:
        raise ValueError(f"{out} already holds a PPO run: pass --resume to continue it, or choose a new --output-dir")
    source = Path(config.checkpoint)
    extra = dict(read_config(source).get("extra") or {})
    noise = config.method == "noise"
    from_last = resuming and not noise
    policy = load_checkpoint(last_dir if from_last else source, device=device, use_ema=not from_last)
    policy.ema = None  # PPO moves the weights themselves; a stale BC EMA must never be what ships
    policy.extra = extra
    task = config.task or extra.get("task", "")
    spec = policy.spec
    actor = build_actor(policy, config)
    if config.gaussian_std and not from_last:  # a resumed run continues the std it had learned
        if not hasattr(actor, "set_std"):
            raise ValueError("--gaussian-std sets the exploration of Gaussian PPO; this run is not one")
        actor.set_std(config.gaussian_std)
    if config.value_from_critic is not None and config.value_init is not None:
        raise ValueError("pass --value-init or --value-from-critic, not both")
    if config.value_from_critic is not None and config.reward != "sparse":
        raise ValueError("an offline critic values the sparse reward it was trained on; use --reward sparse with "
                         "--value-from-critic")
    if config.value_from_critic is not None:
        from robo.rl.critic import CriticValue

        value: Any = CriticValue.from_saved(config.value_from_critic, task, config.gamma, spec.n_action_steps,
                                            list(spec.obs_keys)).to(device)
    else:
        value = ValueNet(policy).to(device)
    trainable = [p for p in actor.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam([{"params": trainable, "lr": config.noise_lr if noise else config.lr},
                                  {"params": list(value.parameters()), "lr": config.critic_lr}])
    state: dict[str, Any] = {"iteration": 0, "env_steps": 0, "best": -1.0,
                             "history": {"env_steps": [], "train_success": [], "eval_env_steps": [], "eval_success": [],
                                         "steps_per_s": []}}
    if resuming:
        saved = torch.load(last_dir / TRAINER_STATE, map_location=device, weights_only=True)
        value.load_state_dict(saved["value"])
        optimizer.load_state_dict(saved["optimizer"])
        if noise:
            actor.load_state_dict(saved["actor"])
        state = saved["state"]
        log.info("resumed PPO at iteration %d (%d env steps)", state["iteration"], state["env_steps"])
    elif config.value_init is not None:
        from safetensors.torch import load_file

        value.load_state_dict(load_file(str(config.value_init)))
    aux_loss = behaviour_cloning_loss(policy, config) if config.bc_coef > 0 else None
    if noise and config.noise_prior_coef > 0:
        aux_loss = lambda obs: config.noise_prior_coef * actor.prior_kl(obs)  # noqa: E731
    clip_eps = config.clip_eps or (0.01 if actor.num_logp_steps > 1 else 0.05)
    ppo_cfg = PPOConfig(clip_eps=clip_eps, target_kl=config.target_kl, max_grad_norm=config.max_grad_norm,
                        value_clip=config.value_clip, trainable_last_k=0)  # last-K' is handled inside ChainActor
    n_exec = spec.n_action_steps
    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune_config.json").write_text(json.dumps(asdict(config), indent=2, default=str))
    own_venv = venv is None
    if own_venv:
        from sim.env import EnvConfig
        from sim.vector import make_vector_env

        venv = make_vector_env(EnvConfig(task=task, reward=config.reward, potential_gamma=config.gamma), config.num_envs)
    if evaluator is None and config.eval_episodes > 0:
        evaluator = sim_evaluator(task, config.num_envs, out / "eval")
    shipped = (lambda: actor.shipped()) if noise else (lambda: policy)  # noqa: E731
    writer = SummaryWriter(str(out / "tb"))
    method = type(actor).__name__.removesuffix("Actor").lower()  # chain | gaussian | noise, after "auto"
    extra.update(stage=f"online_ppo_{method}", init_checkpoint=str(source))

    def save(directory: Path, figures: dict[str, Any], trainer: bool) -> None:
        if noise:
            save_noise_policy(directory, actor, str(source),
                              {"stage": extra["stage"], **figures, "env_steps": state["env_steps"]})
            if trainer:
                torch.save({"value": value.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                            "actor": actor.state_dict()}, directory / TRAINER_STATE)
            return
        also = (lambda d: torch.save({"value": value.state_dict(), "optimizer": optimizer.state_dict(),
                                      "state": state}, d / TRAINER_STATE)) if trainer else None
        save_checkpoint(directory, policy, {**extra, **figures, "env_steps": state["env_steps"]}, also=also)

    summary: dict[str, Any] = {"task": task, "method": method, "policy_kind": policy.kind}
    try:
        raw_sps = measure_raw_steps_per_s(venv, 50)
        rollout_state = RolloutState(venv, list(spec.obs_keys), spec.n_obs, _seed_of(config.seed, state["iteration"]))
        if evaluator is not None and not resuming:
            with torch.no_grad():
                before = evaluator(shipped(), VALIDATION_SEED_OFFSET, config.eval_episodes, "iter0")
            state["history"]["eval_env_steps"].append(0)
            state["history"]["eval_success"].append(before["success_rate"])
            # The starting policy is a candidate too: if PPO only makes it worse, best/ is what we started from.
            state["best"] = before["success_rate"]
            save(best_dir, {"success_rate": before["success_rate"], "eval_seed": VALIDATION_SEED_OFFSET,
                            "eval_episodes": config.eval_episodes}, trainer=False)
        bar = tqdm(total=config.env_steps, initial=state["env_steps"], desc=f"ppo {config.method}", unit="step",
                   disable=not config.progress)
        train_time, train_steps, rollout_time, env_time = 0.0, 0, 0.0, 0.0
        while state["env_steps"] < config.env_steps:
            it = state["iteration"]
            started_value = config.value_init is not None or config.value_from_critic is not None
            warmup = it < config.value_warmup_iters and not (resuming or started_value)
            generator = torch.Generator().manual_seed(_seed_of(config.seed, it, 1))
            started = time.perf_counter()
            policy.eval()
            rollout = collect_rollout(rollout_state, actor, config.chunks_per_iter, config.gamma, n_exec, generator)
            rollout_time += time.perf_counter() - started
            env_time += rollout.env_seconds
            adv, ret, v_old = advantages_of(rollout, value, config.gamma, n_exec, 1.0 if warmup else config.gae_lambda)
            policy.train()
            progress = state["env_steps"] / config.env_steps
            stats = ppo_update(actor, value, rollout, adv, ret, v_old, optimizer, ppo_cfg, config.epochs,
                               config.minibatch_size, config.vf_coef, not warmup, progress,
                               np.random.default_rng(_seed_of(config.seed, it, 2)), aux_loss=aux_loss)
            policy.eval()
            elapsed = time.perf_counter() - started
            train_time, train_steps = train_time + elapsed, train_steps + rollout.env_steps
            state["env_steps"] += rollout.env_steps
            state["iteration"] = it + 1
            sps = rollout.env_steps / elapsed
            wins = [s for s, _ in rollout.episodes]
            h = state["history"]
            h["env_steps"].append(state["env_steps"])
            h["train_success"].append(float(np.mean(wins)) if wins else float("nan"))
            h["steps_per_s"].append(sps)
            _log_iteration(writer, state["env_steps"], stats, sps, wins, warmup)
            for tag, figure in getattr(actor, "diagnostics", dict)().items():  # what each actor has to watch
                h.setdefault(tag.replace("/", "_"), []).append(figure)
                writer.add_scalar(tag, figure, state["env_steps"])
            if noise:  # the drift PPO's per-iteration KL hides: how far the steering now is from the base's noise
                with torch.no_grad():
                    kl_base = float(actor.prior_kl(flat_observations(rollout.obs)))
                h.setdefault("noise_kl_to_base", []).append(kl_base)
                writer.add_scalar("noise/kl_to_base", kl_base, state["env_steps"])
            bar.update(rollout.env_steps)
            bar.set_postfix(kl=f"{stats.approx_kl:.4f}", ev=f"{stats.explained_variance:.2f}",
                            succ=f"{h['train_success'][-1]:.2f}", sps=f"{sps:.0f}")
            finished = state["env_steps"] >= config.env_steps
            if evaluator is not None and (finished or (config.eval_every and state["iteration"] % config.eval_every == 0)):
                with torch.no_grad():
                    result = evaluator(shipped(), VALIDATION_SEED_OFFSET, config.eval_episodes, f"iter{state['iteration']}")
                h["eval_env_steps"].append(state["env_steps"])
                h["eval_success"].append(result["success_rate"])
                writer.add_scalar("eval/success_rate", result["success_rate"], state["env_steps"])
                if result["success_rate"] > state["best"]:
                    state["best"] = result["success_rate"]
                    save(best_dir, {"success_rate": result["success_rate"], "eval_seed": VALIDATION_SEED_OFFSET,
                                    "eval_episodes": config.eval_episodes}, trainer=False)
            if finished or state["iteration"] % 5 == 0:
                save(last_dir, {}, trainer=True)
        bar.close()
        if not best_dir.exists():
            save(best_dir, {}, trainer=False)
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in value.state_dict().items()},
                  str(out / "value.safetensors"))
        summary.update(env_steps=state["env_steps"], iterations=state["iteration"], raw_steps_per_s=raw_sps,
                       ppo_steps_per_s=train_steps / max(train_time, 1e-9) if train_steps else None,
                       # where the time goes: sampling + env stepping vs the PPO update
                       rollout_steps_per_s=train_steps / max(rollout_time, 1e-9) if train_steps else None,
                       # the same envs' own rate in this run: steps / time inside venv.step (resets included)
                       sim_steps_per_s=train_steps / max(env_time, 1e-9) if train_steps else None,
                       update_fraction=(train_time - rollout_time) / max(train_time, 1e-9) if train_steps else None,
                       best_dir=str(best_dir), history=state["history"])
        if summary["ppo_steps_per_s"]:
            # PPO env steps/s over the simulation's own steps/s in the same run, on the same envs and cores: the
            # share of wall time the simulator gets. (raw_steps_per_s, a hold-still probe before training, has no
            # resets and is taken at another moment of a shared machine's load; it is reported beside it.)
            summary["steps_per_s_ratio"] = summary["ppo_steps_per_s"] / summary["sim_steps_per_s"]
    finally:
        writer.close()
        if own_venv:
            venv.close()
    plot_success_curve({method: state["history"]}, out / "success_curve.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _log_iteration(writer: Any, step: int, stats: Any, sps: float, wins: list[bool], warmup: bool) -> None:
    writer.add_scalar("ppo/approx_kl", stats.approx_kl, step)
    writer.add_scalar("ppo/clip_frac", stats.clip_frac, step)
    writer.add_scalar("ppo/value_loss", stats.value_loss, step)
    writer.add_scalar("ppo/explained_variance", stats.explained_variance, step)
    writer.add_scalar("ppo/minibatches", stats.minibatches, step)
    writer.add_scalar("ppo/stopped_early", float(stats.stopped_early), step)
    writer.add_scalar("ppo/value_warmup", float(warmup), step)
    writer.add_scalar("perf/env_steps_per_s", sps, step)
    if wins:
        writer.add_scalar("train/success_rate", float(np.mean(wins)), step)
    for k, (q05, q50, q95) in enumerate(stats.ratio_quantiles):
        writer.add_scalars(f"ratio/step{k}", {"q05": q05, "q50": q50, "q95": q95}, step)


# --- stages 2-4: distil, gate, export ----------------------------------------------------------------------------
def gate_decision(teacher: list[bool], student: list[bool], margin: float,
                  min_episodes: int = MIN_GATE_EPISODES) -> dict[str, Any]:
    """The student ships iff it was judged on >= ``min_episodes`` episodes (the same seeds as the teacher) and its
    success is at most ``margin`` below the teacher's. Returns the verdict with a one-line reason."""
    n = min(len(teacher), len(student))
    t, s = float(np.mean(teacher)) if teacher else 0.0, float(np.mean(student)) if student else 0.0
    verdict = {"teacher_success": t, "student_success": s, "episodes": n, "margin": margin}
    if len(teacher) != len(student):
        return {**verdict, "passed": False, "reason": "teacher and student were not judged on the same episodes"}
    if n < min_episodes:
        return {**verdict, "passed": False,
                "reason": f"judged on {n} episodes; the gate needs at least {min_episodes} (rerun with more)"}
    if s < t - margin - 1e-12:
        return {**verdict, "passed": False,
                "reason": f"student {s:.3f} is {t - s:.3f} below the teacher {t:.3f} (allowed {margin:.3f}); "
                          f"distil longer or from a better teacher"}
    return {**verdict, "passed": True, "reason": f"student {s:.3f} vs teacher {t:.3f} over {n} episodes"}


def student_gate(teacher_ckpt: Path, student_ckpt: Path, config: FinetuneConfig, task: str) -> dict[str, Any]:
    """Evaluate both on the same test seeds (common random numbers) and decide."""
    from robo.evaluate import EvalConfig, evaluate_checkpoint

    results = {}
    for name, ckpt in (("teacher", teacher_ckpt), ("student", student_ckpt)):
        results[name] = evaluate_checkpoint(EvalConfig(
            checkpoint=ckpt, task=task, episodes=config.gate_episodes, seed=EVAL_SEED_OFFSET,
            num_envs=config.num_envs, output_dir=Path(config.output_dir) / f"gate_{name}", video_episodes=0,
            progress=config.progress))
    return gate_decision(results["teacher"]["successes"], results["student"]["successes"], config.gate_margin)


def finetune(config: FinetuneConfig) -> dict[str, Any]:
    """All stages; writes ``report.json`` under ``output_dir`` and returns it."""
    out = Path(config.output_dir)
    ppo = train_online(config)
    report: dict[str, Any] = {"ppo": {k: v for k, v in ppo.items() if k != "history"}}
    # Validation success before PPO (env step 0), after it (the last evaluation, at the final env step) and of
    # ppo/best (the best of them, the start included); None where no evaluation ran (eval_episodes 0).
    h = ppo.get("history") or {}
    evals = list(zip(h.get("eval_env_steps", []), h.get("eval_success", [])))
    report["ppo"].update(
        success_before=evals[0][1] if evals and evals[0][0] == 0 else None,
        success_after=evals[-1][1] if evals and evals[-1][0] == ppo.get("env_steps") else None,
        best_success=max(s for _, s in evals) if evals else None, eval_episodes=config.eval_episodes)
    if config.distill_steps > 0:
        if config.method == "noise":
            raise ValueError("noise-space PPO leaves the policy frozen: there is nothing new to distil")
        from robo.train import build_config, train

        teacher = Path(ppo["best_dir"])
        student_out = out / "student"
        train(build_config("distill", {"dataset": dataset_of(config), "output_dir": student_out, "teacher": teacher,
                                       "seed": config.seed, "steps": config.distill_steps, "eval_episodes": 0,
                                       "resume": config.resume and (student_out / "last").exists(),
                                       "progress": config.progress}))
        gate = student_gate(teacher, student_out / "best", config, ppo["task"])
        report["student_gate"] = gate
        print(f"student gate: {'PASSED' if gate['passed'] else 'FAILED'}: {gate['reason']}")
        (out / "report.json").write_text(json.dumps(report, indent=2))
        if config.export and gate["passed"]:
            from robo.export import ExportConfig, export

            manifest = export(ExportConfig(checkpoint=student_out / "best", output=out / "artifact",
                                           gate_report=out / "report.json"))
            report["artifact"] = {"path": str(out / "artifact"), "content_sha256": manifest["content_sha256"]}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report
