"""Sequence sampler windows, edge padding, episode split, and the normaliser fitted from data."""

import numpy as np
import pytest

from conftest import episode_steps, info, small_schema
from policies.normalizer import Normalizer
from robo.data.sampler import SamplerConfig, SequenceSampler, split_episodes
from robo.data.schema import DatasetError
from robo.data.store import ZarrDataset


@pytest.fixture
def dataset(tmp_path):
    ds = ZarrDataset.create(tmp_path / "ds.zarr", small_schema(image=True))
    for e, length in enumerate([10, 25, 6]):
        ds.append_episode(episode_steps(e, length, image=True), info(e))
    return ds


@pytest.mark.parametrize("in_memory", [True, False])
def test_windows_pad_at_both_episode_edges(dataset, in_memory):
    cfg = SamplerConfig(obs_keys=("eef_pos", "agentview_rgb"), n_obs=3, horizon=8, in_memory=in_memory)
    sampler = SequenceSampler(dataset, cfg)
    assert len(sampler) == 10 + 25 + 6
    first = sampler[0]  # step 0 of episode 0: history before the start repeats step 0
    np.testing.assert_array_equal(first["obs"]["eef_pos"][:, 0], [0, 0, 0])
    np.testing.assert_allclose(first["action"][:, 0] * 1e4, [0, 0, 0, 1, 2, 3, 4, 5], atol=1e-4)
    start_of_second = sampler[10]  # step 0 of episode 1 must not see episode 0's frames
    np.testing.assert_array_equal(start_of_second["obs"]["eef_pos"][:, 0], [1000, 1000, 1000])
    assert (start_of_second["obs"]["agentview_rgb"][:, 0, 0, 0] == 7).all()
    last = sampler[34]  # last step (24) of episode 1: the chunk runs past the end and repeats step 24
    np.testing.assert_array_equal(last["obs"]["eef_pos"][:, 0], [1022, 1023, 1024])
    np.testing.assert_allclose(last["action"][:, 0] * 1e4, [1022, 1023, 1024, 1024, 1024, 1024, 1024, 1024], rtol=1e-6)
    mid = sampler[10 + 12]
    np.testing.assert_array_equal(mid["obs"]["eef_pos"][:, 0], [1010, 1011, 1012])
    np.testing.assert_allclose(mid["action"][:, 0] * 1e4, np.arange(1010, 1018), rtol=1e-6)


def test_batch_shapes_and_in_memory_equals_disk(dataset):
    cfg = dict(obs_keys=("eef_pos", "gripper_qpos", "agentview_rgb"), n_obs=2, horizon=16)
    ram = SequenceSampler(dataset, SamplerConfig(**cfg, in_memory=True))
    disk = SequenceSampler(dataset, SamplerConfig(**cfg, in_memory=False))
    items = np.random.default_rng(0).integers(0, len(ram), 32)
    a, b = ram.get_batch(items), disk.get_batch(items)
    assert a["obs"]["agentview_rgb"].shape == (32, 2, 16, 16, 3) and a["action"].shape == (32, 16, 7)
    for key in cfg["obs_keys"]:
        np.testing.assert_array_equal(a["obs"][key], b["obs"][key])
    np.testing.assert_array_equal(a["action"], b["action"])


def test_split_by_episode_is_disjoint_and_complete(dataset):
    train, val = split_episodes(20, 0.2, seed=3)
    assert len(val) == 4 and set(train).isdisjoint(val) and set(train) | set(val) == set(range(20))
    assert list(split_episodes(20, 0.2, seed=3)[1]) == list(val)
    sampler = SequenceSampler(dataset, SamplerConfig(obs_keys=("eef_pos",)), episodes=np.array([2]))
    assert len(sampler) == 6 and sampler[0]["obs"]["eef_pos"][0, 0] == 2000
    with pytest.raises(DatasetError, match="val_ratio"):
        split_episodes(5, 1.0)


def test_unknown_keys_and_bad_horizon_are_refused(dataset):
    with pytest.raises(DatasetError, match=r"\['wrist_rgb'\] are not in"):
        SequenceSampler(dataset, SamplerConfig(obs_keys=("wrist_rgb",)))
    with pytest.raises(DatasetError, match="n_obs <= horizon"):
        SequenceSampler(dataset, SamplerConfig(obs_keys=("eef_pos",), n_obs=4, horizon=2))


def test_normaliser_fitted_on_sampler_maps_limits_and_round_trips(dataset):
    sampler = SequenceSampler(dataset, SamplerConfig(obs_keys=("eef_pos", "agentview_rgb")), episodes=np.array([0, 1]))
    norm = sampler.fit_normalizer()
    data = dataset.load(["eef_pos"])["eef_pos"][:35]  # episodes 0 and 1
    z = norm.normalize("eef_pos", data)
    np.testing.assert_allclose(z.min(axis=0), -1, atol=1e-5)
    np.testing.assert_allclose(z.max(axis=0), 1, atol=1e-5)
    np.testing.assert_allclose(norm.unnormalize("eef_pos", z), data, rtol=1e-5, atol=1e-3)
    assert norm.stats["agentview_rgb"].mode == "image"
    np.testing.assert_allclose(norm.normalize("agentview_rgb", np.array([0.0, 255.0])[:, None].repeat(3, 1)), [[-1] * 3, [1] * 3], atol=1e-6)
    restored = Normalizer.from_json(norm.to_json())
    np.testing.assert_allclose(restored.normalize("action", np.ones(7)), norm.normalize("action", np.ones(7)))


def test_normaliser_flat_dimension_and_torch():
    import torch

    values = np.stack([np.linspace(-2, 4, 50), np.full(50, 3.0)], axis=1)
    norm = Normalizer.fit({"x": values})
    z = norm.normalize("x", values)
    assert np.all(np.isfinite(z)) and np.allclose(z[:, 1], 0.0)
    zt = norm.normalize("x", torch.as_tensor(values, dtype=torch.float32))
    np.testing.assert_allclose(zt.numpy(), z, atol=1e-5)
    with pytest.raises(KeyError, match="no statistics for 'y'"):
        norm.normalize("y", values)
