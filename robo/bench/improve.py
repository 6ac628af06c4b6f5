"""``robo bench improve``: does gated offline improvement raise true success, and does the gate protect it?

From one behaviour-cloned checkpoint and one dataset (with failures), all on the same test seeds:
  bc        the starting policy
  gated     ``robo improve`` (gate on AM-Q, or FQE with ``estimator``): what ships is the last accepted policy
  ungated   the same updates with the gate off (every update kept), reusing the gated run's critic
  unio4     the Uni-O4 ensemble (K Gaussian BC members with the diversity term, each improved under the gate;
            the best member by OPE ships)
  flywheel  optional: ``flywheel_rounds`` rounds of rollouts -> merge -> BC retrain -> gated improve
The baseline is the BC policy measured in the same run; figures are differences in true success.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from robo.bench.common import print_json_line, print_table


@dataclass
class ImproveBenchConfig:
    checkpoint: Path = Path("data/runs/lift_noisy/diffusion/best")  # BC diffusion policy from suboptimal demos
    dataset: Path = Path("data/demos/lift_noisy.zarr")  # its dataset (with failures)
    episodes: int = 100  # simulated test episodes per policy
    rounds: int = 20  # offline PPO rounds per improvement run
    gate_every: int = 4  # rounds between gate decisions (robo improve's default; why there)
    estimator: Literal["amq", "fqe"] = "amq"  # the OPE estimator every gate (gated run and Uni-O4) trusts
    lr: float = 1e-5  # policy learning rate
    sigma_min: float = 0.1  # RL std floor
    critic_steps: int = 5000  # IQL optimiser steps
    dynamics_steps: int = 3000  # dynamics ensemble optimiser steps
    amq_horizon: int = 10  # AM-Q rollout chunks
    amq_starts: int = 128  # AM-Q start states
    fqe_steps: int = 2000  # FQE optimiser steps per estimate (with estimator fqe)
    state_keys: tuple[str, ...] = ()  # low-dim keys of the critic/dynamics state; empty = the default low-dim keys
    unio4_members: int = 4  # Uni-O4 ensemble size (0 = skip the baseline)
    unio4_bc_steps: int = 2000  # Uni-O4 BC steps
    unio4_rounds: int = 10  # offline PPO rounds per Uni-O4 member
    flywheel_rounds: int = 0  # flywheel rounds after the gated run (0 = skip)
    flywheel_rollouts: int = 20  # rollouts per flywheel round
    flywheel_bc_steps: int = 1500  # BC steps per flywheel round
    seed: int = 0  # every fit, batch and the OPE noise
    output_dir: Path = Path("data/bench/improve")  # one folder per arm
    progress: bool = True  # progress bars


def run_improve_bench(config: ImproveBenchConfig) -> dict[str, Any]:
    from policies.checkpoint import load_checkpoint, read_config
    from robo.rl.improve import (ESTIMATOR_NAMES, ImproveConfig, critic_transitions, evaluate_true, make_estimator,
                                 run_improve)
    from robo.rl.unio4 import UniO4Config, run_unio4, train_ensemble

    out = Path(config.output_dir)
    base = ImproveConfig(checkpoint=config.checkpoint, dataset=config.dataset, rounds=config.rounds,
                         gate_every=config.gate_every, estimator=config.estimator, lr=config.lr,
                         sigma_min=config.sigma_min,
                         critic_steps=config.critic_steps, dynamics_steps=config.dynamics_steps,
                         amq_horizon=config.amq_horizon, amq_starts=config.amq_starts,
                         fqe_steps=config.fqe_steps, state_keys=config.state_keys, eval_episodes=config.episodes,
                         seed=config.seed, progress=config.progress, overwrite=True)
    gated = run_improve(dataclasses.replace(base, output_dir=out / "gated"))
    ungated = run_improve(dataclasses.replace(base, output_dir=out / "ungated", gated=False, eval_before=False,
                                              critic=out / "gated" / "critic"))
    figures: dict[str, Any] = {"task": gated["task"], "episodes": config.episodes, "estimator": config.estimator,
                               "success_bc": gated["true_success"]["before"],
                               "success_gated": gated["true_success"]["after"],
                               "success_ungated": ungated["true_success"]["after"],
                               "gated_accepted": gated["accepted"], "gated_rejected": gated["rejected"],
                               "ope_bc": gated["ope_start"], "ope_gated": gated["ope_accepted"],
                               "ope_ungated_last": ungated["history"][-1]["ope"]}
    if config.unio4_members:
        from robo.rl.critic import IQLCritic

        bc = load_checkpoint(config.checkpoint)
        task = read_config(config.checkpoint).get("extra", {}).get("task", gated["task"])
        data = critic_transitions(base, config.dataset, bc.spec.n_action_steps)  # the gated run's critic's data
        critic = IQLCritic.load(out / "gated" / "critic", data.fingerprint)
        ucfg = dataclasses.replace(base, rounds=config.unio4_rounds)
        members = train_ensemble(config.dataset, bc.spec, UniO4Config(members=config.unio4_members,
                                                                      bc_steps=config.unio4_bc_steps,
                                                                      seed=config.seed, progress=config.progress),
                                 task)
        estimator = make_estimator(config.estimator, data, critic, ucfg, bc.spec.n_action_steps)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "unio4" / "tb"))
        result = run_unio4(members, data, critic, estimator, ucfg, out / "unio4", writer)
        writer.close()
        from policies.checkpoint import save_checkpoint

        save_checkpoint(out / "unio4" / "best", result["policy"], {"task": task, "unio4_member": result["best_member"]})
        figures["success_unio4"] = evaluate_true(result["policy"], task, base, out / "unio4" / "eval")
        figures["unio4_best_member"] = result["best_member"]
        (out / "unio4" / "members.json").write_text(json.dumps(result["members"], indent=2))
    else:
        figures["success_unio4"] = float("nan")
    if config.flywheel_rounds:
        from robo.rl.flywheel import FlywheelConfig, run_flywheel

        records = run_flywheel(out / "gated" / "accepted", config.dataset, base,
                               FlywheelConfig(rounds=config.flywheel_rounds, rollouts=config.flywheel_rollouts,
                                              bc_steps=config.flywheel_bc_steps, progress=config.progress),
                               out / "flywheel")
        # what ships after the flywheel: the last candidate its round gate accepted, else the gated policy
        shipped = figures["success_gated"]
        for record in records:
            if record["round_gate"]["accepted"]:
                shipped = record["true_success"].get("after", float("nan"))
        figures["success_flywheel"] = shipped
        figures["flywheel_rounds_accepted"] = sum(r["round_gate"]["accepted"] for r in records)
        figures["flywheel_candidates"] = [r["true_success"].get("after", float("nan")) for r in records]
        figures["flywheel_rollouts"] = config.flywheel_rounds * config.flywheel_rollouts
    bc_s = figures["success_bc"]
    # the gated pipeline ships the flywheel's policy when the flywheel ran, else the gated run's
    figures["success_shipped"] = figures.get("success_flywheel", figures["success_gated"])
    figures["gated_gain"] = figures["success_shipped"] - bc_s
    figures["gated_never_dropped_5pts"] = bool(min(figures["success_gated"], figures["success_shipped"])
                                               >= bc_s - 0.05)
    (out / "results.json").write_text(json.dumps(figures, indent=2))
    rows = [("BC (baseline)", f"{bc_s:.2f}", "starting policy"),
            (f"gated ({ESTIMATOR_NAMES[config.estimator]})", f"{figures['success_gated']:.2f}",
             f"{figures['success_gated'] - bc_s:+.2f} vs BC; "
             f"{gated['accepted']} accepted / {gated['rejected']} rejected"),
            ("ungated", f"{figures['success_ungated']:.2f}", f"{figures['success_ungated'] - bc_s:+.2f} vs BC"),
            ("Uni-O4", f"{figures['success_unio4']:.2f}", f"{config.unio4_members} Gaussian members")]
    if "success_flywheel" in figures:
        rows.append(("flywheel (what ships)", f"{figures['success_flywheel']:.2f}",
                     f"{figures['flywheel_rollouts']} rollouts; {figures['flywheel_rounds_accepted']} of "
                     f"{config.flywheel_rounds} rounds accepted"))
    print_table(f"offline improvement on {figures['task']}: true success over {config.episodes} episodes", rows)
    print_json_line(figures)
    return figures
