"""``robo improve``: offline improvement of a behaviour-cloned policy, every update gated by OPE.

Read top to bottom: refuse bad input (before anything is written) -> chunk transitions from the dataset -> IQL
critic (fitted, or loaded if it belongs to this dataset) -> dynamics ensemble (for AM-Q) -> J_0 = OPE(policy) ->
rounds of offline PPO across the denoising steps, the gate asked every ``gate_every`` rounds (accept, or restore
the last accepted weights exactly) -> ``accepted/`` (what ships) and ``best/`` (best by OPE) checkpoints,
``decisions.jsonl``, TensorBoard under ``tb/``, ``improve.png`` (OPE estimate vs round with every gate decision
marked; true success where measured) and ``summary.json``.

The ungated comparison is the same command with ``--no-gated``: every update is kept (decisions are still
logged with what the gate would have said).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from robo.data.schema import DatasetError
from robo.rl.critic import IQLConfig, IQLCritic
from robo.rl.dynamics import DynamicsConfig, DynamicsEnsemble
from robo.rl.gate import Gate, GateConfig
from robo.rl.offline import OfflinePPO, OfflinePPOConfig
from robo.rl.ope import AMQ, FQE, AMQConfig, FQEConfig, OPEEstimator, executed_chunk
from robo.rl.ppo import PPOConfig
from robo.rl.transitions import OfflineData, TransitionConfig, load_offline_data, obs_windows, state_from_obs

log = logging.getLogger(__name__)


@dataclass
class ImproveConfig:
    checkpoint: Path | None = None  # behaviour-cloned diffusion (or Gaussian) policy checkpoint to improve
    dataset: Path | None = None  # Zarr dataset with success flags (and failures) the critic is fitted on
    output_dir: Path = Path("data/improve")  # accepted/, best/, critic/, decisions.jsonl, tb/, improve.png
    overwrite: bool = False  # allow writing into a non-empty output_dir
    gated: bool = True  # False: keep every update (the ungated comparison run)
    estimator: Literal["amq", "fqe"] = "amq"  # the OPE estimator the gate trusts
    delta: float = 0.05  # gate: accept iff J_new - J_old >= delta * |J_old|
    rounds: int = 20  # offline PPO rounds (each samples fresh chains at batch_size dataset states)
    # rounds between gate decisions. 4, not 2: past the first gains a 2-round candidate is 1-3 % above the accepted
    # policy, under delta, so the gate refused every later update; 4 rounds let it accumulate a gain the gate can
    # see (Lift, same start: 0.46 -> 0.68 at 20 x 4 against 0.57 at 10 x 2; docs/offline_rl.md)
    gate_every: int = 4
    batch_size: int = 256  # dataset states per round
    minibatch_size: int = 64  # states per PPO optimiser step
    epochs: int = 2  # passes over a round's chains
    lr: float = 1e-5  # policy learning rate
    sigma_min: float = 0.1  # chain std floor for sampling and likelihood during RL (measured; docs/offline_rl.md)
    clip_eps: float = 0.25  # PPO clip at the start
    clip_eps_final: float = 0.05  # PPO clip at the end (linear decay)
    trainable_last_k: int = 0  # only the last K' denoising steps enter the loss (0 = all)
    gamma: float = 0.99  # per-step discount (gamma ** n per chunk)
    state_keys: tuple[str, ...] = ()  # low-dim keys of the critic/dynamics state; empty = the default low-dim keys
    critic: Path | None = None  # a saved critic to reuse (refused unless fitted on this dataset)
    critic_steps: int = 5000  # IQL optimiser steps
    expectile: float = 0.7  # IQL expectile tau
    dynamics_steps: int = 3000  # dynamics ensemble optimiser steps
    amq_horizon: int = 10  # AM-Q model rollout length in chunks
    amq_starts: int = 128  # AM-Q start states
    amq_penalty: float = 0.0  # AM-Q disagreement penalty
    fqe_steps: int = 2000  # FQE optimiser steps per estimate
    eval_episodes: int = 0  # simulated episodes to measure true success before and after (0 = skip)
    eval_seed: int = 10_000  # first evaluation seed (the test seeds robo eval uses)
    eval_before: bool = True  # with eval_episodes: also measure the starting policy (off when known already)
    flywheel_rounds: int = 0  # after improving: rounds of rollouts -> merge -> BC retrain -> improve (0 = none)
    flywheel_rollouts: int = 20  # simulated episodes of the accepted policy per flywheel round
    flywheel_merge: Literal["success", "all"] = "success"  # BC retrains on success-filtered merged data, or all
    flywheel_bc_steps: int = 1500  # BC optimiser steps per flywheel round
    seed: int = 0  # everything random: fits, batches, chains, OPE noise
    progress: bool = True  # progress bars


ESTIMATOR_NAMES = {"amq": "AM-Q", "fqe": "FQE"}  # estimator names as the plots and docs spell them


class ImproveInputError(ValueError):
    """Input that cannot be improved (wrong task or observation set, no rewards, busy output directory)."""


def check_inputs(config: ImproveConfig) -> tuple[Any, dict[str, Any]]:
    """Refuse bad input in one line before anything is written; returns (policy, checkpoint extra)."""
    from policies.checkpoint import load_checkpoint, read_config
    from robo.data.store import ZarrDataset

    if config.checkpoint is None or config.dataset is None:
        raise ImproveInputError("pass --checkpoint (the policy to improve) and --dataset (with success flags)")
    out = Path(config.output_dir)
    if out.exists() and any(out.iterdir()) and not config.overwrite:
        raise ImproveInputError(f"{out} is not empty; pass a new --output-dir or --overwrite")
    extra = read_config(config.checkpoint).get("extra", {})
    with ZarrDataset.open(config.dataset) as ds:
        schema = ds.schema
    task = extra.get("task")
    if task and task != schema.task:
        raise ImproveInputError(f"checkpoint {config.checkpoint} was trained on task '{task}' but {config.dataset} "
                                f"holds '{schema.task}'; use a dataset of the same task")
    policy = load_checkpoint(config.checkpoint)  # shipped (EMA) weights: what RL improves
    policy.spec.check_compatible({k: (v.shape, v.dtype) for k, v in schema.obs.items()}, schema.action.shape[0])
    if policy.kind not in ("diffusion", "gaussian"):
        raise ImproveInputError(f"offline PPO improves diffusion or Gaussian policies, not '{policy.kind}'; "
                                f"improve the teacher, then distil it again")
    return policy, {**extra, "task": task or schema.task}


def fit_critic(data: OfflineData, config: ImproveConfig, out: Path, writer: Any) -> IQLCritic:
    critic = IQLCritic(data.chunks.state.shape[1], data.chunks.action.shape[1],
                       IQLConfig(expectile=config.expectile, steps=config.critic_steps, seed=config.seed,
                                 progress=config.progress))
    critic.fit(data.chunks, log=lambda s, st: [writer.add_scalar(f"critic/{k}", v, s) for k, v in st.items()])
    # What an online stage needs to reuse V (robo finetune --value-from-critic): its state and its discount.
    critic.save(out / "critic", data.fingerprint, {"dataset": str(data.path), "task": data.task,
                                                   "state_keys": list(data.state_keys), "gamma": data.config.gamma,
                                                   "chunk": data.config.chunk})
    return critic


_FITTED_DYNAMICS: dict[tuple[str, int, int], DynamicsEnsemble] = {}  # the last fitted model, by (data, steps, seed)


def make_estimator(name: str, data: OfflineData, critic: IQLCritic, config: ImproveConfig, chunk: int
                   ) -> OPEEstimator:
    if name == "fqe":
        return FQE(data, FQEConfig(steps=config.fqe_steps, seed=config.seed), chunk)
    key = (data.fingerprint, config.dynamics_steps, config.seed)
    dyn = _FITTED_DYNAMICS.get(key)
    if dyn is None:  # a model is read-only once fitted: arms of one benchmark share it instead of refitting
        dyn = DynamicsEnsemble(data.steps.state.shape[1], data.steps.action.shape[1],
                               DynamicsConfig(steps=config.dynamics_steps, seed=config.seed, progress=config.progress))
        dyn.fit(data.steps)
        _FITTED_DYNAMICS.clear()
        _FITTED_DYNAMICS[key] = dyn
    return AMQ(data, critic, dyn, AMQConfig(horizon=config.amq_horizon, starts=config.amq_starts,
                                            penalty=config.amq_penalty, seed=config.seed), chunk)


def critic_transitions(config: ImproveConfig, dataset: Path, chunk: int) -> OfflineData:
    """The chunk transitions a run with ``config`` fits its critic on; a saved critic only loads onto these."""
    return load_offline_data(dataset, TransitionConfig(gamma=config.gamma, chunk=chunk, state_keys=config.state_keys))


def advantage_fn(critic: IQLCritic, policy: Any, state_keys: tuple[str, ...]) -> Any:
    """A = min Q(s, executed chunk) - V(s) for the chunks the anchor policy sampled (batch-normalised in PPO)."""
    def fn(obs: dict, actions: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(state_from_obs(obs, state_keys))
        a = executed_chunk(policy, actions.float().cpu()).reshape(len(s), -1)
        return critic.advantage(s, a)
    return fn


def gated_improvement(policy: Any, data: OfflineData, critic: IQLCritic, estimator: OPEEstimator,
                      config: ImproveConfig, out: Path, writer: Any, on_best: Any = None, label: str = "improve"
                      ) -> tuple[Gate, list[dict[str, Any]]]:
    """The loop: PPO rounds, the gate every ``gate_every`` rounds; leaves ``policy`` at the last accepted weights."""
    ppo_cfg = OfflinePPOConfig(lr=config.lr, batch_size=config.batch_size, minibatch_size=config.minibatch_size,
                               epochs=config.epochs, sigma_min=config.sigma_min,
                               ppo=PPOConfig(clip_eps=config.clip_eps, clip_eps_final=config.clip_eps_final,
                                             trainable_last_k=config.trainable_last_k))
    ppo = OfflinePPO(policy, ppo_cfg)
    ope_seed = config.seed + 1  # one seed for every estimate of the run: common random numbers across decisions
    j0 = estimator.estimate(policy, ope_seed)
    gate = Gate(policy, ppo.optimizer, j0, GateConfig(delta=config.delta, enabled=config.gated), out, writer, on_best)
    writer.add_scalar(f"{label}/ope", j0.value, 0)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    adv = advantage_fn(critic, policy, data.state_keys)
    keys = list(dict.fromkeys([*policy.spec.obs_keys, *data.state_keys]))
    history: list[dict[str, Any]] = [{"round": 0, "ope": j0.value, "spread": j0.spread, "accepted": True}]
    bar = tqdm(range(1, config.rounds + 1), desc=label, disable=not config.progress)
    for r in bar:
        idx = rng.choice(data.chunks.index, size=config.batch_size, replace=True)
        obs = obs_windows(data, idx, policy.spec.n_obs, keys)  # the policy ignores the critic-only keys
        stats = ppo.round(obs, adv, (r - 1) / max(config.rounds - 1, 1), gen)
        last = stats["last"]
        for k, v in enumerate(last["ratio_max"]):
            writer.add_scalar(f"{label}/ratio_max_step{k}", v, r)
            writer.add_scalar(f"{label}/ratio_min_step{k}", last["ratio_min"][k], r)
            writer.add_scalar(f"{label}/clip_frac_step{k}", last["clip_frac"][k], r)
        writer.add_scalar(f"{label}/approx_kl", last["approx_kl"], r)
        if r % config.gate_every == 0 or r == config.rounds:
            result = estimator.estimate(policy, ope_seed)
            d = gate.decide(r, result)
            writer.add_scalar(f"{label}/ope", result.value, r)
            history.append({"round": r, "ope": result.value, "spread": result.spread, "accepted": d.accepted,
                            "would_accept": d.would_accept, "ratio_max_last_step": last["ratio_max"][-1],
                            "approx_kl": last["approx_kl"]})
            bar.set_postfix(ope=f"{result.value:.3f}", accepted=sum(h["accepted"] for h in history) - 1)
    return gate, history


def evaluate_true(policy: Any, task: str, config: ImproveConfig, out: Path) -> float:
    from robo.evaluate import EvalConfig, evaluate_policy

    was = policy.training
    policy.eval()
    result = evaluate_policy(policy, EvalConfig(task=task, episodes=config.eval_episodes, seed=config.eval_seed,
                                                video_episodes=0, output_dir=out, progress=config.progress))
    policy.train(was)
    return float(result["success_rate"])


def run_improve(config: ImproveConfig) -> dict[str, Any]:
    from policies.checkpoint import save_checkpoint
    from torch.utils.tensorboard import SummaryWriter

    policy, extra = check_inputs(config)
    data = critic_transitions(config, Path(config.dataset), policy.spec.n_action_steps)
    obs_windows(data, np.zeros(1, np.int64), policy.spec.n_obs, list(policy.spec.obs_keys))  # image policies refused
    loaded_critic = IQLCritic.load(config.critic, data.fingerprint) if config.critic is not None else None
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decisions.jsonl").unlink(missing_ok=True)
    (out / "improve_config.json").write_text(json.dumps(asdict(config), indent=2, default=str))
    torch.manual_seed(config.seed)
    writer = SummaryWriter(str(out / "tb"))
    task = extra["task"]
    meta = {**extra, "improved_from": str(config.checkpoint), "improve_dataset": str(config.dataset),
            "estimator": config.estimator, "gated": config.gated}
    true: dict[str, float] = {}
    if config.eval_episodes and config.eval_before:
        true["before"] = evaluate_true(policy, task, config, out / "eval_before")
    critic = loaded_critic or fit_critic(data, config, out, writer)
    estimator = make_estimator(config.estimator, data, critic, config, policy.spec.n_action_steps)

    def save_best(decision: Any) -> None:
        save_checkpoint(out / "best", policy, {**meta, "ope": decision.j_new, "round": decision.step})

    gate, history = gated_improvement(policy, data, critic, estimator, config, out, writer, save_best)
    save_checkpoint(out / "accepted", policy, {**meta, "ope": gate.j_accepted})
    if not (out / "best").exists():  # nothing beat the start: the best is the starting policy
        save_checkpoint(out / "best", policy, {**meta, "ope": gate.j_best, "round": 0})
    if config.eval_episodes:
        true["after"] = evaluate_true(policy, task, config, out / "eval_after")
    writer.close()
    plot_run(history, true, out / "improve.png", f"{task}: {ESTIMATOR_NAMES[config.estimator]} "
             f"{'gated' if config.gated else 'ungated'}")
    summary = {"task": task, "ope_start": history[0]["ope"], "ope_accepted": gate.j_accepted,
               "ope_best": gate.j_best, "decisions": len(gate.decisions),
               "accepted": sum(d.accepted for d in gate.decisions),
               "rejected": sum(not d.accepted for d in gate.decisions), "true_success": true,
               "dataset_success_rate": data.success_rate, "history": history, "output_dir": str(out)}
    if config.flywheel_rounds:
        from robo.rl.flywheel import FlywheelConfig, run_flywheel

        summary["flywheel"] = run_flywheel(out / "accepted", Path(config.dataset), config, FlywheelConfig(
            rounds=config.flywheel_rounds, rollouts=config.flywheel_rollouts, merge=config.flywheel_merge,
            bc_steps=config.flywheel_bc_steps, progress=config.progress), out / "flywheel")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def plot_run(history: list[dict[str, Any]], true: dict[str, float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = [h["round"] for h in history]
    y = [h["ope"] for h in history]
    ax.plot(x, y, color="0.6", lw=1, zorder=1)
    acc = [h for h in history[1:] if h["accepted"]]
    rej = [h for h in history[1:] if not h["accepted"]]
    ax.errorbar([h["round"] for h in history], y, yerr=[h["spread"] for h in history], fmt="none", ecolor="0.8")
    ax.scatter([h["round"] for h in acc], [h["ope"] for h in acc], marker="o", color="tab:green", label="accepted",
               zorder=3)
    ax.scatter([h["round"] for h in rej], [h["ope"] for h in rej], marker="x", color="tab:red", label="rejected",
               zorder=3)
    ax.scatter([0], [y[0]], marker="s", color="k", label="start", zorder=3)
    ax.set(xlabel="PPO round", ylabel="OPE estimate", title=title)
    if true:
        ax2 = ax.twinx()
        # "after" measures the weights that ship: the last accepted round's, which need not be the last round
        shipped_round = max(h["round"] for h in history if h["accepted"])
        xs = [0 if k == "before" else shipped_round for k in true]
        ax2.plot(xs, list(true.values()), "D--", color="tab:blue", label="true success (shipped weights)")
        ax2.set(ylabel="true success (sim)", ylim=(0, 1.05))
        ax2.legend(loc="lower right")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pipeline_stage(config: Any, run: Any) -> dict[str, Any]:
    """``robo pipeline``'s improve stage: the expert demonstrations all succeed (a degenerate critic), so record
    deliberately noisy scripted episodes beside them until some fail, merge, and run a gated improvement of the
    trained teacher on the merged data; evaluate before and after. Budgets scale with the pipeline's
    (train_steps / 3000), so a smoke-sized pipeline runs a smoke-sized stage."""
    from robo.collect import CollectConfig, collect
    from robo.data.store import ZarrDataset
    from robo.data.tools import merge

    if config.cameras:  # the critic, dynamics and AM-Q work on low-dim state; image policies are not handled yet
        print("      skipped: offline improvement of image-observation policies is not implemented yet")
        return {"improve": {"skipped": "image observations"}}
    scale = min(1.0, config.train_steps / 3000)
    noisy = run.out / f"{config.task.lower()}_noisy.zarr"
    want = max(2, int(round(config.improve_failure_demos * scale)))
    for attempt in range(4):  # top up (collect appends) until the noisy episodes include a failure
        have, failures = 0, 0
        if noisy.exists():
            with ZarrDataset.open(noisy) as ds:
                have, failures = ds.n_episodes, sum(not e.success for e in ds.episodes)
        if have >= want and failures:
            break
        collect(CollectConfig(output=noisy, task=config.task, episodes=max(want - have, 2),
                              seed=config.seed + 20_000 + have, action_noise_std=0.6, waypoint_jitter_m=0.04,
                              hesitation_prob=0.5, progress=config.progress))
    merged = run.out / "improve_data.zarr"
    if not merged.exists():
        merge([run.dataset, noisy], merged)
    out = run.out / "improve"
    summary = run_improve(ImproveConfig(
        checkpoint=run.out / "diffusion" / "best", dataset=merged, output_dir=out, overwrite=True,
        rounds=max(1, int(round(config.improve_rounds * scale))) if config.improve_rounds else 0,
        batch_size=max(16, int(256 * scale)),
        minibatch_size=max(8, int(64 * scale)), critic_steps=max(20, int(2000 * scale)),
        dynamics_steps=max(20, int(1500 * scale)), amq_starts=max(8, int(128 * scale)),
        amq_horizon=max(2, int(10 * scale)), eval_episodes=config.eval_episodes, seed=config.seed,
        progress=config.progress))
    t = summary["true_success"]
    print(f"      OPE {summary['ope_start']:.3f} -> {summary['ope_accepted']:.3f} ({summary['accepted']} accepted, "
          f"{summary['rejected']} rejected); true success {t.get('before', float('nan')):.2f} -> "
          f"{t.get('after', float('nan')):.2f}")
    return {"improve": {"accepted": str(out / "accepted"), "ope_start": summary["ope_start"],
                        "ope_accepted": summary["ope_accepted"], "decisions": summary["decisions"],
                        "accepted_updates": summary["accepted"], "true_success": t}}
