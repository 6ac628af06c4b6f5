"""Checkpoints refuse, in one line, everything that would make the weights compute something other than what was
trained; saves are atomic (a crash never pairs new weights with an old config or trainer state)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

import policies.checkpoint as ckpt
from policies.checkpoint import load_checkpoint, read_config, save_checkpoint
from policies.spec import CheckpointError
from test_policies import assert_one_line, build, make_batch, predict_seeded


@pytest.fixture
def saved(tmp_path):
    policy = build("diffusion-unet", "rgbd")
    path = save_checkpoint(tmp_path / "ck", policy, extra={"step": 1})
    return policy, path, json.loads((path / "config.json").read_text())


def _write(path, cfg):
    (path / "config.json").write_text(json.dumps(cfg))


def _scale(key, value):
    return lambda c: c["normalizer"][key].update(scale=value)


REFUSALS = {
    "horizon": (lambda c: c["spec"].update(horizon=16), "spec.horizon=16"),
    "n_obs": (lambda c: c["spec"].update(n_obs=3), "spec.n_obs=3"),
    "image size": (lambda c: c["spec"]["obs_keys"]["agentview_rgb"].__setitem__(0, [64, 64, 3]), "64"),
    "scheduler steps": (lambda c: c["policy_config"].update(num_train_timesteps=50), "num_train_timesteps=50"),
    "beta schedule": (lambda c: c["policy_config"].update(beta_schedule="linear"), "beta_schedule"),
    "prediction type": (lambda c: c["policy_config"].update(prediction_type="sample"), "prediction_type"),
    "normaliser length": (_scale("eef_pos", [1.0, 1.0]), "needs (3,)"),
    "normaliser zero scale": (_scale("eef_pos", [1.0, 0.0, 1.0]), "zero"),
    "normaliser NaN": (lambda c: c["normalizer"]["action"].update(offset=[float("nan")] * 4), "NaN"),
    "normaliser missing": (lambda c: c["normalizer"].pop("action"), "blind policy"),
    "normaliser malformed": (lambda c: c["normalizer"].update(action={"scale": [1.0]}), "malformed"),
    "encoder config malformed": (lambda c: c["policy_config"].update(encoder=[8, 8]), "encoder"),
    "encoder unknown field": (lambda c: c["policy_config"]["encoder"].update(rgb_chanels=8), "rgb_chanels"),
    "width": (lambda c: c["policy_config"]["denoiser"].update(widths=[16, 64]), "trained with"),
    "kind": (lambda c: c.update(policy_kind="gaussian"), "gaussian policy"),
    "version": (lambda c: c.update(format_version=99), "format version"),
    "spec malformed": (lambda c: c["spec"].pop("action_dim"), "malformed spec"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refuses_config_that_does_not_match_the_weights(saved, case):
    _, path, good = saved
    mutate, words = REFUSALS[case]
    cfg = json.loads(json.dumps(good))
    mutate(cfg)
    _write(path, cfg)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert_one_line(err)
    assert words in str(err.value), str(err.value)
    _write(path, good)
    load_checkpoint(path)  # the restored config loads again


def test_inference_settings_may_change(saved):
    policy, path, good = saved
    cfg = json.loads(json.dumps(good))
    cfg["policy_config"].update(num_inference_steps=5, eta=0.5)
    _write(path, cfg)
    loaded = load_checkpoint(path)
    assert loaded.config.num_inference_steps == 5 and loaded.config.eta == 0.5


def test_refuses_non_finite_weights(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    _, path, good = saved
    tensors = load_file(str(path / "model.safetensors"))
    name = next(k for k in tensors if k.startswith("denoiser") and tensors[k].is_floating_point())
    tensors[name][0] = float("inf")
    meta = {ckpt.TRAINED_RECORD_KEY: json.dumps({k: good[k] for k in ("policy_kind", "policy_config", "spec",
                                                                       "normalizer")})}
    save_file(tensors, str(path / "model.safetensors"), metadata=meta)
    good["weights_sha256"] = ckpt._sha256(path / "model.safetensors")
    _write(path, good)
    with pytest.raises(CheckpointError, match="NaN or inf") as err:
        load_checkpoint(path)
    assert_one_line(err)


def test_refuses_to_save_diverged_weights(tmp_path):
    policy = build("gaussian", "lowdim")
    with torch.no_grad():
        policy.log_std.fill_(float("nan"))
    with pytest.raises(CheckpointError, match="diverged"):
        save_checkpoint(tmp_path / "ck", policy)
    assert not (tmp_path / "ck").exists()


def test_refuses_weights_from_another_save(tmp_path):
    a, b = build("diffusion-unet", "lowdim", seed=0), build("diffusion-unet", "lowdim", seed=1)
    pa, pb = save_checkpoint(tmp_path / "a", a), save_checkpoint(tmp_path / "b", b)
    shutil.copy(pb / "model.safetensors", pa / "model.safetensors")  # same config, other weights
    with pytest.raises(CheckpointError, match="SHA-256") as err:
        load_checkpoint(pa)
    assert_one_line(err)


def test_a_crash_mid_save_never_pairs_new_weights_with_old_files(tmp_path, monkeypatch):
    """Crash between the two renames of the directory swap, and crash while the new files are written."""
    batch = make_batch("lowdim")
    old, new = build("diffusion-unet", "lowdim", seed=0), build("diffusion-unet", "lowdim", seed=1)
    path = tmp_path / "last"
    save_checkpoint(path, old, extra={"step": 1}, also=lambda d: (d / "trainer_state.pt").write_text("1"))
    real_replace = os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, new, extra={"step": 2}, also=lambda d: (d / "trainer_state.pt").write_text("2"))
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    assert not path.exists()  # the crash left it moved aside: the next reader finishes the swap
    loaded = load_checkpoint(path)
    assert read_config(path)["extra"]["step"] == 2 and (path / "trainer_state.pt").read_text() == "2"
    new.use_ema_weights()
    assert torch.equal(predict_seeded(loaded, batch["obs"]), predict_seeded(new, batch["obs"]))

    def crash_while_writing(directory):
        (directory / "trainer_state.pt").write_text("3")
        raise KeyboardInterrupt("power cut")

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, old, extra={"step": 3}, also=crash_while_writing)
    assert read_config(path)["extra"]["step"] == 2 and (path / "trainer_state.pt").read_text() == "2"
    assert np.isfinite(predict_seeded(load_checkpoint(path), batch["obs"]).numpy()).all()


def test_wrong_image_size_at_run_time_is_one_line():
    policy = build("diffusion-unet", "rgbd").eval()
    obs = make_batch("rgbd")["obs"]
    obs["agentview_rgb"] = np.zeros((6, 2, 40, 40, 3), np.uint8)
    with pytest.raises(ValueError, match="encoder was built for") as err:
        policy.predict(obs)
    assert_one_line(err)


@pytest.mark.parametrize("name", ["diffusion-unet", "gaussian"])
def test_shipped_weights_are_what_loads_and_training_weights_come_back(tmp_path, name):
    """In-training selection scores ``shipped_weights()``: exactly what load_checkpoint gives robo eval; the raw
    weights (and the camera feature cache) are back afterwards."""
    from test_policies import train

    policy = build(name, "rgbd")
    batch = make_batch("rgbd")
    train(policy, batch, steps=2)
    policy.eval()
    raw_before = predict_seeded(policy, batch["obs"])
    save_checkpoint(tmp_path / "ck", policy)
    with policy.shipped_weights():
        shipped = predict_seeded(policy, batch["obs"])
    assert torch.equal(shipped, predict_seeded(load_checkpoint(tmp_path / "ck"), batch["obs"]))
    assert torch.equal(predict_seeded(policy, batch["obs"]), raw_before)
