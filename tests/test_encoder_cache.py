"""The deployment frame-feature cache: a frame still in the observation history is not re-encoded, the features
are the uncached ones, and training / new weights never see stale features."""

import numpy as np
import torch

from robo.bench.node import CAMERAS, LOWDIM


def _policy():
    from policies import Normalizer, PolicySpec, make_policy

    spec_obs = {**LOWDIM, **CAMERAS}
    rng = np.random.default_rng(0)
    data = {k: (rng.integers(0, 255, (4, *s), dtype=np.uint8) if d == "uint8" else rng.normal(size=(16, *s)).astype(d))
            for k, (s, d) in spec_obs.items()}
    data["action"] = rng.uniform(-1, 1, (16, 7)).astype(np.float32)
    config = {"denoiser": {"kind": "unet", "widths": [16, 32], "groups": 4},
              "encoder": {"rgb_base_channels": 8, "rgb_stages": 2, "rgb_blocks_per_stage": 1, "rgb_groups": 4,
                          "num_keypoints": 8, "rgb_features": 16}}
    return make_policy("consistency", PolicySpec(spec_obs, 7, n_obs=2), Normalizer.fit(data), config).eval()


def _frames(seed):
    rng = np.random.default_rng(seed)
    return {k: rng.integers(0, 255, s, dtype=np.uint8) if d == "uint8" else rng.normal(size=s).astype(d)
            for k, (s, d) in {**LOWDIM, **CAMERAS}.items()}


def _history(a, b):
    return {k: np.stack([a[k], b[k]])[None] for k in a}


def test_only_the_new_frame_is_encoded_and_features_match():
    policy = _policy()
    enc = policy.encoder
    f0, f1, f2 = _frames(0), _frames(1), _frames(2)
    with torch.no_grad():
        enc.cache_frames = False
        ref = [enc(policy.normalize_obs(_history(a, b))) for a, b in ((f0, f1), (f1, f2))]
        enc.cache_frames, enc.frames_encoded = True, 0
        first = enc(policy.normalize_obs(_history(f0, f1)))
        assert enc.frames_encoded == 4  # 2 cameras x 2 frames
        second = enc(policy.normalize_obs(_history(f1, f2)))
        assert enc.frames_encoded == 6  # only f2, once per camera
    torch.testing.assert_close(first, ref[0])
    torch.testing.assert_close(second, ref[1], rtol=1e-5, atol=1e-5)


def test_new_weights_and_training_bypass_the_cache():
    policy = _policy()
    enc = policy.encoder
    f0, f1 = _frames(0), _frames(1)
    with torch.no_grad():
        before = enc(policy.normalize_obs(_history(f0, f1)))
        for p in enc.camera_encoders.parameters():
            p.mul_(1.5)  # an in-place weight change (EMA swap, load_state_dict) bumps the version counters
        enc.frames_encoded = 0
        after = enc(policy.normalize_obs(_history(f0, f1)))
    assert enc.frames_encoded == 4 and not torch.allclose(before, after)
    enc.train()
    out = enc(policy.normalize_obs(_history(f0, f1)))  # autograd on: never cached
    assert out.requires_grad and "agentview" not in enc._frame_cache


def test_a_policy_built_under_inference_mode_still_caches():
    """Parameters made under torch.inference_mode carry no version counter; the cache must not ask for one
    (``robo bench latency`` builds its policies that way and failed with 'Inference tensors do not track version
    counter')."""
    with torch.inference_mode():
        policy = _policy()
        enc = policy.encoder
        f0, f1, f2 = _frames(0), _frames(1), _frames(2)
        enc.frames_encoded = 0
        enc(policy.normalize_obs(_history(f0, f1)))
        enc(policy.normalize_obs(_history(f1, f2)))
    assert enc.frames_encoded == 6
