"""A toy task with a known answer, for tests and quick checks of the OPE estimators and the improvement loop.

A point on a line, x' = x + 0.1 a (a clipped to [-1, 1]); reaching x >= 0.9 is success (reward 1, terminal);
episodes start at x ~ U(-0.5, 0.2) and are truncated after 40 steps. A ``PushPolicy`` pushes with a constant
``gain`` plus Gaussian noise, through the same ``predict`` interface and PolicySpec as the real policies, so the
RL code cannot tell it from one. True success of a gain is a simulation away (``true_success``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from policies.spec import PolicySpec
from robo.rl.transitions import OfflineData, TransitionConfig, build_offline_data

GOAL, STEP, HORIZON = 0.9, 0.1, 40
SPEC = PolicySpec({"pos": ((1,), "float32")}, 1, n_obs=2, horizon=8, n_action_steps=4)


@dataclass
class PushPolicy:
    gain: float  # mean push per step
    noise: float = 0.0  # std of the Gaussian noise on every action
    spec: PolicySpec = field(default_factory=lambda: dataclasses.replace(SPEC))
    kind: str = "toy"

    def predict(self, obs: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        b = len(obs["pos"])
        noise = torch.randn((b, self.spec.horizon, 1), generator=generator) if self.noise else torch.zeros(b, 1, 1)
        return (self.gain + self.noise * noise).expand(b, self.spec.horizon, 1).clamp(-1, 1)


def rollout(policy: PushPolicy, episodes: int, seed: int) -> dict[str, np.ndarray]:
    """Episodes of ``policy`` concatenated along time: pos, action, success, terminal, ends."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    pos, act, succ, term, ends = [], [], [], [], []
    for _ in range(episodes):
        x = float(rng.uniform(-0.5, 0.2))
        hist = [x, x]
        t = 0
        while t < HORIZON:
            chunk = policy.predict({"pos": np.array([[[hist[-2]], [hist[-1]]]], np.float32)}, gen)[0, :, 0].numpy()
            for a in chunk[policy.spec.n_obs - 1: policy.spec.n_obs - 1 + policy.spec.n_action_steps]:
                pos.append([x])
                act.append([a])
                x = x + STEP * float(np.clip(a, -1, 1))
                hist.append(x)
                t += 1
                done = x >= GOAL
                succ.append(done)
                term.append(done)
                if done or t >= HORIZON:
                    break
            if done:
                break
        ends.append(len(pos))
    return {"pos": np.asarray(pos, np.float32), "action": np.asarray(act, np.float32),
            "success": np.asarray(succ), "terminal": np.asarray(term), "ends": np.asarray(ends)}


def true_success(policy: PushPolicy, episodes: int = 200, seed: int = 1234) -> float:
    r = rollout(policy, episodes, seed)
    starts = np.concatenate([[0], r["ends"][:-1]])
    return float(np.mean([r["success"][s:e].any() for s, e in zip(starts, r["ends"])]))


def behaviour_data(episodes: int = 60, seed: int = 0, gains: tuple[float, float] = (-0.4, 1.0),
                   noise: float = 0.3) -> OfflineData:
    """Offline data from a behaviour that mixes push gains per episode: some succeed, many do not."""
    parts = []
    rng = np.random.default_rng(seed)
    for i in range(episodes):
        parts.append(rollout(PushPolicy(float(rng.uniform(*gains)), noise), 1, seed * 10_000 + i))
    cat = {k: np.concatenate([p[k] for p in parts]) for k in ("pos", "action", "success", "terminal")}
    ends = np.cumsum([p["ends"][0] for p in parts])
    return build_offline_data({"pos": cat["pos"]}, cat["action"], cat["success"], cat["terminal"], ends,
                              TransitionConfig(gamma=0.99, chunk=SPEC.n_action_steps), task="Toy")


def tiny_policy(kind: str = "diffusion", seed: int = 0, steps: int = 5) -> Any:
    """A small real diffusion (K = ``steps``) or Gaussian policy on a 3-D observation and 2-D actions, for tests."""
    from policies.denoisers import DenoiserConfig
    from policies.diffusion import DiffusionPolicyConfig
    from policies.encoders import EncoderConfig
    from policies.gaussian import GaussianPolicyConfig
    from policies.normalizer import Normalizer
    from policies.registry import make_policy

    torch.manual_seed(seed)
    rng = np.random.default_rng(1)
    spec = PolicySpec({"state": ((3,), "float32")}, 2, n_obs=2, horizon=8, n_action_steps=4)
    norm = Normalizer.fit({"state": rng.normal(size=(64, 3)).astype(np.float32),
                           "action": rng.uniform(-1, 1, (64, 2)).astype(np.float32)})
    enc = EncoderConfig(lowdim_hidden=32, lowdim_features=16)
    cfg = (DiffusionPolicyConfig(encoder=enc, denoiser=DenoiserConfig(kind="unet", widths=(16, 32), kernel_size=3,
                                                                       groups=4, step_embed_dim=16),
                                 num_inference_steps=steps, ema=False)
           if kind == "diffusion" else GaussianPolicyConfig(encoder=enc, hidden=(32,)))
    return make_policy(kind, spec, norm, cfg)


def tiny_obs(n: int = 16, seed: int = 0) -> dict:
    return {"state": np.random.default_rng(seed).normal(size=(n, 2, 3)).astype(np.float32)}
