"""``robo bench ope``: does off-policy evaluation tell the truth? AM-Q and FQE against simulated success.

A set of policies of clearly different quality (each checkpoint given, times each action-noise level: the
policy's own chunk plus Gaussian noise of that std, clipped) is scored by both estimators, all with the same
seed (common random numbers), and by simulation (``episodes`` seeded test episodes each). Reported: Spearman
rank correlation of each estimator with true success, regret@1 (true success of the best policy minus that of
the one the estimator ranks first), and the gate's accuracy on pairs (over ordered pairs whose true success
differs by more than ``pair_margin``: the gate "accept new over old" agrees with the truth), beside a random
ranking's expected accuracy (0.5) as the baseline. A PNG scatter of estimate vs truth; the table; one JSON line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robo.bench.common import print_json_line, print_table


@dataclass
class OPEBenchConfig:
    dataset: Path = Path("data/demos/lift_noisy.zarr")  # data with failures for the critic, dynamics and FQE
    checkpoints: tuple[Path, ...] = ()  # policies (BC at several lengths, improved ones); PATH@0,0.1 = these noises
    noise_levels: tuple[float, ...] = (0.0, 0.3, 0.6, 1.0)  # action noise std added to each checkpoint's chunks
    episodes: int = 100  # simulated test episodes per policy (true success)
    num_envs: int = 2  # parallel sim envs for the true success
    delta: float = 0.05  # the gate's relative margin for the pair accuracy
    pair_margin: float = 0.05  # pairs whose true success differs by at most this are ties: not scored
    critic: Path | None = None  # a saved critic fitted on this dataset (e.g. robo improve's critic/); None = fit one
    critic_steps: int = 5000  # IQL optimiser steps
    dynamics_steps: int = 3000  # dynamics ensemble optimiser steps
    fqe_steps: int = 2000  # FQE optimiser steps per policy
    amq_horizon: int = 10  # AM-Q rollout chunks
    amq_starts: int = 128  # AM-Q start states
    seed: int = 0  # fits and the common OPE seed
    output_dir: Path = Path("data/bench/ope")  # results.json, scatter.png, truth_<weights>_noise<n>/ per policy
    progress: bool = True  # progress bars


class NoisyPolicy:
    """A policy's chunks plus Gaussian noise of std ``noise`` (action units), clipped: a worse policy of known
    ordering, through the same interface."""

    def __init__(self, base: Any, noise: float, name: str):
        self.base, self.noise, self.name = base, float(noise), name
        self.spec, self.kind, self.extra = base.spec, base.kind, getattr(base, "extra", {})

    def predict(self, obs: dict, generator: torch.Generator | None = None, **kwargs: Any) -> torch.Tensor:
        chunk = self.base.predict(obs, generator=generator, **kwargs)
        if not self.noise:
            return chunk
        eps = torch.randn(chunk.shape, generator=generator,
                          device=generator.device if generator is not None else "cpu").to(chunk.device)
        return (chunk + self.noise * eps).clamp(-1.0, 1.0)

    def eval(self) -> NoisyPolicy:
        self.base.eval()
        return self


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties sharing their average rank (what Spearman's coefficient needs)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (Pearson on average ranks); NaN when either side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def regret_at_1(estimate: np.ndarray, truth: np.ndarray) -> float:
    return float(truth.max() - truth[int(np.argmax(estimate))])


def gate_accuracy(estimate: np.ndarray, truth: np.ndarray, delta: float, margin: float) -> tuple[float, int]:
    """Over ordered pairs (old, new) with |truth difference| > margin: the gate accepts new iff it is truly better."""
    right = total = 0
    for i in range(len(truth)):
        for j in range(len(truth)):
            if i == j or abs(truth[j] - truth[i]) <= margin:
                continue
            accept = estimate[j] - estimate[i] >= delta * abs(estimate[i])
            right += int(accept == (truth[j] > truth[i]))
            total += 1
    return (right / total if total else float("nan")), total


def run_ope_bench(config: OPEBenchConfig) -> dict[str, Any]:
    from policies.checkpoint import load_checkpoint, read_config
    from robo.rl.critic import IQLCritic
    from robo.rl.improve import ImproveConfig, fit_critic, make_estimator
    from robo.rl.transitions import TransitionConfig, load_offline_data

    if not config.checkpoints:
        raise ValueError("pass --checkpoints (one or more policy checkpoints to rank)")
    torch.manual_seed(config.seed)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = [parse_checkpoint_entry(c, config.noise_levels) for c in config.checkpoints]
    bases = [load_checkpoint(path) for path, _ in entries]
    task = read_config(entries[0][0]).get("extra", {}).get("task", "")
    chunk = bases[0].spec.n_action_steps
    if any(b.spec.n_action_steps != chunk for b in bases):
        raise ValueError("all checkpoints must execute the same number of actions per chunk (the critic's chunk)")
    policies, weights = [], []
    for base, (path, noises) in zip(bases, entries):
        for n in noises:
            policies.append(NoisyPolicy(base, n, f"{path.parent.name}/{path.name}+noise{n:g}"))
            weights.append(weights_hash(path))
    data = load_offline_data(config.dataset, TransitionConfig(chunk=chunk))
    icfg = ImproveConfig(critic_steps=config.critic_steps, dynamics_steps=config.dynamics_steps,
                         fqe_steps=config.fqe_steps, amq_horizon=config.amq_horizon, amq_starts=config.amq_starts,
                         seed=config.seed, progress=config.progress)

    class _NoWriter:
        def add_scalar(self, *args: Any) -> None:
            pass

    critic = (IQLCritic.load(config.critic, data.fingerprint) if config.critic is not None
              else fit_critic(data, icfg, out, _NoWriter()))
    amq = make_estimator("amq", data, critic, icfg, chunk)
    fqe = make_estimator("fqe", data, critic, icfg, chunk)
    rows = []
    for p, w in zip(policies, weights):
        a, f = amq.estimate(p, config.seed + 1), fqe.estimate(p, config.seed + 1)
        success = true_success(p, w, task, config)
        rows.append({"policy": p.name, "amq": a.value, "amq_spread": a.spread, "fqe": f.value,
                     "fqe_spread": f.spread, "true_success": success})
    truth = np.array([r["true_success"] for r in rows])
    figures: dict[str, Any] = {"policies": len(rows), "episodes_per_policy": config.episodes, "task": task}
    for name in ("amq", "fqe"):
        est = np.array([r[name] for r in rows])
        figures[f"spearman_{name}"] = spearman(est, truth)
        figures[f"regret_at_1_{name}"] = regret_at_1(est, truth)
        figures[f"gate_accuracy_{name}"], figures["scored_pairs"] = gate_accuracy(est, truth, config.delta,
                                                                                 config.pair_margin)
    better = "amq" if np.nan_to_num(figures["spearman_amq"], nan=-2) >= np.nan_to_num(figures["spearman_fqe"],
                                                                                           nan=-2) else "fqe"
    figures.update({"better_estimator": better, "regret_at_1": figures[f"regret_at_1_{better}"],
                    "gate_accuracy": figures[f"gate_accuracy_{better}"], "gate_accuracy_random_baseline": 0.5})
    (out / "results.json").write_text(json.dumps({"rows": rows, "figures": figures}, indent=2))
    plot_scatter(rows, figures, out / "scatter.png")
    table = [(r["policy"], f"true {r['true_success']:.2f}", f"AM-Q {r['amq']:.3f}  FQE {r['fqe']:.3f}") for r in rows]
    table += [(f"spearman {n}", f"{figures[f'spearman_{n}']:.2f}", f"regret@1 {figures[f'regret_at_1_{n}']:.2f}, "
               f"gate accuracy {figures[f'gate_accuracy_{n}']:.2f} (random 0.50)") for n in ("amq", "fqe")]
    print_table(f"OPE vs truth on {task} ({len(rows)} policies x {config.episodes} episodes)", table)
    print_json_line(figures)
    return figures


def parse_checkpoint_entry(entry: Path | str, default_noise: tuple[float, ...]) -> tuple[Path, tuple[float, ...]]:
    """``PATH`` (scored at every ``--noise-levels``) or ``PATH@N1,N2`` (at these noise levels only): a good policy
    needs small noise steps to give graded truths, a poor one needs none."""
    text = str(entry)
    if "@" not in text:
        return Path(text), tuple(default_noise)
    path, _, levels = text.rpartition("@")
    try:
        noises = tuple(float(x) for x in levels.split(",") if x)
    except ValueError:
        raise ValueError(f"'{text}': write PATH@N1,N2 with numeric noise levels, e.g. {path}@0,0.1,0.2") from None
    if not noises or any(n < 0 for n in noises):
        raise ValueError(f"'{text}': give one or more noise levels >= 0 after '@', e.g. {path}@0,0.1")
    return Path(path), noises


def weights_hash(checkpoint: Path) -> str:
    """The checkpoint's recorded weights hash; hashed here for checkpoints saved before it was recorded."""
    from policies.checkpoint import WEIGHTS_FILE, read_config

    recorded = read_config(checkpoint).get("weights_sha256")
    return recorded or hashlib.sha256((Path(checkpoint) / WEIGHTS_FILE).read_bytes()).hexdigest()


def true_success(policy: NoisyPolicy, weights: str, task: str, config: OPEBenchConfig) -> float:
    """Simulated success over the test seeds, in ``truth_<weights>_noise<n>/`` under the output folder. The
    simulation is the bench's cost, so a finished evaluation is reused when its record (weights hash, noise, and the
    evaluation's episodes, first seed and task) matches exactly: a rerun with another critic or estimator setting
    re-simulates nothing, and a changed policy or protocol is never reused."""
    from robo.evaluate import EvalConfig, evaluate_policy

    folder = Path(config.output_dir) / f"truth_{weights[-12:]}_noise{policy.noise:g}"
    eval_config = EvalConfig(task=task, episodes=config.episodes, num_envs=config.num_envs, video_episodes=0,
                             output_dir=folder, progress=config.progress)
    key = {"weights_sha256": weights, "noise": policy.noise, "episodes": eval_config.episodes,
           "seed": eval_config.seed, "task": task}
    record = folder / "truth.json"
    if record.exists():
        saved = json.loads(record.read_text())
        if saved.get("key") == key:
            print(f"{policy.name}: true success {saved['success_rate']:.2f} reused from {record}")
            return float(saved["success_rate"])
    r = evaluate_policy(policy, eval_config)
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"key": key, "policy": policy.name, "success_rate": r["success_rate"]}, indent=2))
    return float(r["success_rate"])


def plot_scatter(rows: list[dict[str, Any]], figures: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    truth = [r["true_success"] for r in rows]
    for ax, name, label in zip(axes, ("amq", "fqe"), ("AM-Q", "FQE")):
        ax.errorbar(truth, [r[name] for r in rows], yerr=[r[f"{name}_spread"] for r in rows], fmt="o", capsize=3)
        ax.set(xlabel="true success (sim)", ylabel=f"{label} estimate",
               title=f"{label}: Spearman {figures[f'spearman_{name}']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
