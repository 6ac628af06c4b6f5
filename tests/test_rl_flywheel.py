"""Flywheel rollouts land in a dataset with provenance, and merge with the demonstrations they extend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policies.denoisers import DenoiserConfig
from policies.diffusion import DiffusionPolicyConfig
from policies.encoders import EncoderConfig
from policies.normalizer import Normalizer
from policies.registry import make_policy
from policies.spec import PolicySpec
from robo.data.store import ZarrDataset
from robo.rl.flywheel import record_rollouts

torch.set_num_threads(1)


@pytest.mark.slow
def test_rollouts_are_recorded_with_provenance(tmp_path):
    keys = {"eef_pos": (3,), "gripper_qpos": (2,)}
    spec = PolicySpec({k: (s, "float32") for k, s in keys.items()}, 7, n_obs=2, horizon=8, n_action_steps=4)
    rng = np.random.default_rng(0)
    norm = Normalizer.fit({**{k: rng.normal(size=(32, *s)).astype(np.float32) for k, s in keys.items()},
                           "action": rng.uniform(-1, 1, (32, 7)).astype(np.float32)})
    policy = make_policy("diffusion", spec, norm, DiffusionPolicyConfig(
        encoder=EncoderConfig(lowdim_hidden=16, lowdim_features=8), num_inference_steps=2, ema=False,
        denoiser=DenoiserConfig(kind="mlp", mlp_hidden=16, mlp_layers=1, step_embed_dim=8)))
    out = tmp_path / "roll.zarr"
    stats = record_rollouts(policy, "ckpt#abc", "Lift", out, episodes=2, seed=50_000, progress=False, horizon=12)
    assert stats["episodes"] == 2
    with ZarrDataset.open(out) as ds:
        assert ds.n_episodes == 2 and ds.n_steps == 24
        assert all(e.source == "policy" and e.checkpoint_id == "ckpt#abc" for e in ds.episodes)
        assert [e.seed for e in ds.episodes] == [50_000, 50_001]
        assert ds.array("truncated")[:][[11, 23]].all()
