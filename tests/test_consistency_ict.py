"""Improved consistency training options (pseudo-Huber loss, lognormal level sampling, 1/dsigma weighting, the
discretisation curriculum, no EMA teacher): each does what it says, learns, and survives a checkpoint round trip."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from policies.checkpoint import load_checkpoint, save_checkpoint
from policies.consistency import (ConsistencyPolicyConfig, curriculum_scales, karras_sigmas,
                                  lognormal_pair_weights)
from policies.registry import make_policy
from test_policies import TINY_ENC, TINY_UNET, loss_at_seed, make_batch, make_spec_norm, train

ICT = ConsistencyPolicyConfig(encoder=TINY_ENC, denoiser=TINY_UNET, loss="pseudo_huber", level_sampling="lognormal",
                              weighted=True, curriculum_steps=40, num_scales_start=5, num_scales=40, target_ema=0.0)


def test_curriculum_doubles_in_equal_stages_and_holds_at_the_end():
    c = replace(ICT, curriculum_steps=400, num_scales_start=10, num_scales=80)  # log2(8) + 1 = 4 stages of 100
    assert [curriculum_scales(c, s) for s in (0, 99, 100, 199, 200, 300, 399, 10_000)] == [10, 10, 20, 20, 40, 80,
                                                                                          80, 80]


def test_lognormal_pair_weights_favour_the_middle_levels():
    sigmas = karras_sigmas(ICT)
    w = lognormal_pair_weights(sigmas)
    assert w.shape == (len(sigmas) - 1,) and bool((w > 0).all())
    peak = int(w.argmax())
    assert 0.05 < float(sigmas[peak]) < 2.0  # lognormal(-1.1, 2) has its mode near e^-5.1 .. its median e^-1.1
    assert float(w[-1]) < float(w[peak]) / 10  # the largest levels are rarely trained


@pytest.mark.parametrize("option", ["pseudo_huber", "lognormal", "weighted", "curriculum", "all"])
def test_each_option_learns(option):
    base = ConsistencyPolicyConfig(encoder=TINY_ENC, denoiser=TINY_UNET, num_scales=20)
    cfg = {"pseudo_huber": replace(base, loss="pseudo_huber"), "lognormal": replace(base, level_sampling="lognormal"),
           "weighted": replace(base, weighted=True), "curriculum": replace(base, curriculum_steps=30,
                                                                          num_scales_start=5), "all": ICT}[option]
    spec, norm = make_spec_norm("lowdim")
    torch.manual_seed(0)
    policy = make_policy("consistency", spec, norm, cfg)
    batch = make_batch("lowdim")
    before = loss_at_seed(policy, batch)
    train(policy, batch, steps=40)
    assert loss_at_seed(policy, batch) < before


def test_curriculum_position_is_saved_with_the_weights(tmp_path):
    spec, norm = make_spec_norm("lowdim")
    policy = make_policy("consistency", spec, norm, ICT)
    train(policy, make_batch("lowdim"), steps=7)
    assert int(policy.ct_step) == 7
    save_checkpoint(tmp_path / "ck", policy)
    assert int(load_checkpoint(tmp_path / "ck").ct_step) == 7


def test_unknown_options_are_refused():
    spec, norm = make_spec_norm("lowdim")
    with pytest.raises(ValueError, match="pseudo_huber"):
        make_policy("consistency", spec, norm, replace(ICT, loss="huber"))
