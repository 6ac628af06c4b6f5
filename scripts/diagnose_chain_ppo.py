"""Chain PPO against Gaussian PPO on the toy reach task of tests/test_online_ppo.py (docs/online_rl.md, "Chain
PPO does not learn yet"): seconds per run, so a fix can be tried quickly before a Lift run.

    .venv/bin/python scripts/diagnose_chain_ppo.py --kind diffusion-mlp --start bc --clip 0.01 --lr 3e-5
    .venv/bin/python scripts/diagnose_chain_ppo.py --kind gaussian --start scratch --clip 0.2 --lr 1e-3

``--start bc`` first behaviour-clones the policy on a noisy scripted expert (action -2 * position, clipped, plus
i.i.d. Gaussian noise of ``--expert-noise`` per step: ~50 % success for the tiny diffusion policy); ``scratch``
starts untrained (~10 % success by chance). It prints the training success per 10 PPO iterations.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the toy env and tiny policies live there

from robo.rl.online import (ChainActor, GaussianActor, RolloutState, ValueNet, advantages_of,  # noqa: E402
                            collect_rollout, ppo_update)
from robo.rl.ppo import PPOConfig  # noqa: E402
from test_online_ppo import toy_venv  # noqa: E402
from policies.registry import make_policy  # noqa: E402
from test_policies import ACT, HORIZON, N_OBS, build, tiny_config  # noqa: E402


def expert_batch(rng: np.random.Generator, n: int, noise: float) -> dict:
    pos = rng.uniform(-0.35, 0.35, (n, 3)).astype(np.float32)
    obs = {"eef_pos": np.repeat(pos[:, None], N_OBS, 1), "gripper_qpos": np.full((n, N_OBS, 2), 0.02, np.float32)}
    action = np.zeros((n, HORIZON, ACT), np.float32)
    action[:, :, :3] = np.clip(-2 * pos, -0.5, 0.5)[:, None] + noise * rng.normal(size=(n, HORIZON, 3))
    return {"obs": obs, "action": np.clip(action, -0.5, 0.5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="diffusion-mlp", choices=["diffusion-mlp", "gaussian"])
    parser.add_argument("--start", default="bc", choices=["bc", "scratch"])
    parser.add_argument("--clip", type=float, default=0.01)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--bc-steps", type=int, default=4000)
    parser.add_argument("--expert-noise", type=float, default=0.6)
    parser.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "sample"],
                        help="diffusion-mlp: what the denoiser predicts (sample = the clean chunk x0)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    policy = build(args.kind, "lowdim")
    if args.kind != "gaussian" and args.prediction_type != policy.config.prediction_type:
        kind, cfg = tiny_config(args.kind)
        policy = make_policy(kind, policy.spec, policy.normalizer, replace(cfg, prediction_type=args.prediction_type))
    if args.start == "bc":
        optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
        policy.train()
        for _ in range(args.bc_steps):
            loss = policy.compute_loss(expert_batch(rng, 64, args.expert_noise))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    policy.eval()
    actor = GaussianActor(policy) if args.kind == "gaussian" else ChainActor(policy)
    venv = toy_venv(4, horizon=16, start=0.35)
    state = RolloutState(venv, list(policy.spec.obs_keys), policy.spec.n_obs, 0)
    value = ValueNet(policy)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam([{"params": actor.parameters(), "lr": args.lr},
                                  {"params": value.parameters(), "lr": 1e-3}])
    success = []
    for it in range(args.iters):
        rollout = collect_rollout(state, actor, 32, 0.99, policy.spec.n_action_steps, generator)
        adv, ret, v = advantages_of(rollout, value, 0.99, policy.spec.n_action_steps, 0.95)
        ppo_update(actor, value, rollout, adv, ret, v, optimizer, PPOConfig(clip_eps=args.clip, target_kl=0.0), 5,
                   64, 0.5, it >= 3, 0.0, np.random.default_rng(it))  # 3 value-only iterations first
        outcomes = [won for won, _ in rollout.episodes]
        success.append(float(np.mean(outcomes)) if outcomes else 0.0)
        if it % 10 == 9:
            print(f"iterations {it - 9}-{it}: training success {np.mean(success[-10:]):.3f}", flush=True)
    print(f"{args.kind} ({args.prediction_type}) from {args.start}, clip {args.clip}, lr {args.lr}: first 5 iterations "
          f"{np.mean(success[:5]):.3f}, last 10 {np.mean(success[-10:]):.3f}")


if __name__ == "__main__":
    main()
