"""How far chain PPO moves a policy when its advantages carry no signal (docs/online_rl.md, "The BC anchor").

PPO updates on pure-noise advantages (standard normal, one per chunk) with the trainer's ChainActor and clipped
surrogate: 64 chunks per iteration, 5 epochs, as `robo finetune` runs by default on 2 envs. Observations come from
the checkpoint's dataset; no simulator is needed. Printed every 5 iterations: the RMS change, in normalised action
units over the executed part of the chunk, of the deterministic chunk that ships (DDIM eta 0) and of the
eta-1 chain sampled with the same noise, on 256 fixed observations.

    .venv/bin/python scripts/chain_drift_under_noise.py --checkpoint data/headline/bc1500/best --iters 10
    .venv/bin/python scripts/chain_drift_under_noise.py --checkpoint data/headline/bc1500/best --iters 10 --bc-coef 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies.checkpoint import load_checkpoint, read_config  # noqa: E402
from robo.data.sampler import SamplerConfig, SequenceSampler  # noqa: E402
from robo.data.store import ZarrDataset  # noqa: E402
from robo.rl.online import ChainActor  # noqa: E402
from robo.rl.ppo import PPOConfig, ppo_step  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a diffusion checkpoint")
    parser.add_argument("--dataset", type=Path, default=None, help="default: the checkpoint's")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--clip", type=float, default=0.01)
    parser.add_argument("--sigma-floor", type=float, default=0.1)
    parser.add_argument("--bc-coef", type=float, default=0.0, help="weight of the behaviour-cloning anchor")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    policy = load_checkpoint(args.checkpoint)
    policy.ema = None
    policy.eval()
    spec = policy.spec
    dataset = args.dataset or Path(read_config(args.checkpoint)["extra"]["dataset"])
    sampler = SequenceSampler(ZarrDataset.open(dataset), SamplerConfig(obs_keys=list(spec.obs_keys), n_obs=spec.n_obs,
                                                                       horizon=spec.horizon))
    rng = np.random.default_rng(0)
    probe = sampler.sample(256, rng)["obs"]
    actor = ChainActor(policy, sigma_floor=args.sigma_floor)
    optimizer = torch.optim.Adam(actor.parameters(), lr=args.lr)
    mask = actor.time_mask

    @torch.no_grad()
    def chunks() -> tuple[torch.Tensor, torch.Tensor]:
        det = policy.predict(probe, generator=torch.Generator().manual_seed(123))
        sto, _, _ = actor.act(probe, torch.Generator().manual_seed(321))
        norm = lambda a: policy.normalize_action(torch.as_tensor(a))[:, mask]  # noqa: E731
        return norm(det), norm(sto)

    det0, sto0 = chunks()
    generator = torch.Generator().manual_seed(0)
    anchor = (lambda: args.bc_coef * policy.compute_loss(sampler.sample(64, rng))) if args.bc_coef > 0 else None
    for it in range(args.iters):
        obs = sampler.sample(64, rng)["obs"]
        _, record, logp = actor.act(obs, generator)
        advantages = torch.randn(64, generator=generator)
        for _ in range(5):
            result = ppo_step(optimizer, actor.parameters(), lambda: actor.logprob(obs, record), logp, advantages,
                              PPOConfig(clip_eps=args.clip), 0.0, extra_loss=anchor)
        if it % 5 == 4 or it == args.iters - 1:
            det, sto = chunks()
            rms = lambda a, b: float((a - b).square().mean().sqrt())  # noqa: E731
            print(f"iteration {it + 1}: RMS change, deterministic chunk {rms(det, det0):.4f}, eta-1 chain (same noise) "
                  f"{rms(sto, sto0):.4f}; approx-KL {float(result.stats['approx_kl_mean']):.1e}", flush=True)


if __name__ == "__main__":
    main()
