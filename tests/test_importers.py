"""Imports: Diffusion Policy zarr copied as-is; robomimic HDF5 replayed in our sim into our keys."""

import json

import h5py
import numpy as np
import pytest
import zarr

from robo.data.importers import import_diffusion_policy, import_robomimic
from robo.data.integrity import check
from robo.data.schema import DatasetError
from robo.data.store import ZarrDataset


def _pusht_like(path, lengths=(12, 7, 9)):
    """A zarr-2 replay buffer laid out like Diffusion Policy's PushT: img, state, action, meta/episode_ends."""
    rng = np.random.default_rng(0)
    n = sum(lengths)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    data = root.create_group("data")
    arrays = {"img": rng.integers(0, 255, (n, 96, 96, 3), dtype=np.uint8),
              "state": rng.normal(size=(n, 5)).astype(np.float32),
              "action": rng.normal(size=(n, 2)).astype(np.float32)}
    for key, value in arrays.items():
        data.create_array(key, shape=value.shape, dtype=value.dtype, chunks=(8, *value.shape[1:]))[:] = value
    root.create_group("meta").create_array("episode_ends", shape=(3,), dtype="int64")[:] = np.cumsum(lengths)
    return arrays


def test_diffusion_policy_zarr_round_trip(tmp_path):
    src = _pusht_like(tmp_path / "pusht.zarr")
    n = import_diffusion_policy(tmp_path / "pusht.zarr", tmp_path / "ours.zarr", task="PushT", fps=10,
                                key_map={"img": "agentview_rgb"})
    assert n == 3
    ds = ZarrDataset.open(tmp_path / "ours.zarr")
    assert list(ds.episode_ends) == [12, 19, 28] and ds.schema.fps == 10 and ds.schema.task == "PushT"
    assert {e.source for e in ds.episodes} == {"imported"}
    everything = ds.load()
    np.testing.assert_array_equal(everything["agentview_rgb"], src["img"])
    np.testing.assert_array_equal(everything["state"], src["state"])
    np.testing.assert_array_equal(everything["action"], src["action"])
    assert check(tmp_path / "ours.zarr").ok


def test_diffusion_policy_import_refuses_bad_input(tmp_path):
    with pytest.raises(DatasetError, match="not a Diffusion Policy zarr"):
        import_diffusion_policy(tmp_path / "missing.zarr", tmp_path / "o.zarr", task="x", fps=10)
    _pusht_like(tmp_path / "p.zarr")
    with pytest.raises(DatasetError, match="not in"):
        import_diffusion_policy(tmp_path / "p.zarr", tmp_path / "o.zarr", task="x", fps=10, key_map={"nope": "a"})
    assert not (tmp_path / "o.zarr").exists()


def _record_robomimic(path, episodes=2, steps=25):
    """Run our Lift sim with scripted-expert actions and save robomimic's layout: flattened MuJoCo states and
    actions per demo, env_args JSON; keep what the env produced live to compare with the replay."""
    from sim.env import EnvConfig, SimEnv
    from sim.experts import ExpertConfig, make_expert

    env = SimEnv(EnvConfig(task="Lift"))
    live = []
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {
            "robots": ["Panda"], "control_freq": 20,
            "controller_configs": {"body_parts": {"right": {"type": "OSC_POSE", "input_type": "delta"}}}}})
        for e in range(episodes):
            obs, _ = env.reset(seed=e)
            expert = make_expert(env, ExpertConfig(seed=e))
            expert.reset(obs)
            states, actions, observed = [], [], []
            for _ in range(steps):
                states.append(env.unwrapped_robosuite.sim.get_state().flatten())
                observed.append(obs)
                action = expert.act(obs)
                actions.append(action)
                obs, *_ = env.step(action)
            demo = data.create_group(f"demo_{e}")
            demo.create_dataset("states", data=np.array(states))
            demo.create_dataset("actions", data=np.array(actions))
            demo.create_dataset("rewards", data=np.zeros(steps))
            demo.create_dataset("dones", data=np.zeros(steps))
            demo.attrs["num_samples"] = steps
            live.append({k: np.stack([o[k] for o in observed]) for k in observed[0]} | {"action": np.array(actions)})
    env.close()
    return live


def test_robomimic_replay_regenerates_our_observations(tmp_path):
    live = _record_robomimic(tmp_path / "demo.hdf5")
    n = import_robomimic(tmp_path / "demo.hdf5", tmp_path / "lift.zarr")
    assert n == 2
    ds = ZarrDataset.open(tmp_path / "lift.zarr")
    assert ds.schema.task == "Lift" and {e.source for e in ds.episodes} == {"imported"}
    for e in range(2):
        got = ds.episode(e)
        np.testing.assert_allclose(got["action"], live[e]["action"], atol=1e-6)
        for key in ("eef_pos", "object_state", "joint_pos"):
            np.testing.assert_allclose(got[key], live[e][key], atol=2e-3, err_msg=key)


def test_robomimic_import_refuses_non_robomimic_files(tmp_path):
    with h5py.File(tmp_path / "x.hdf5", "w") as f:
        f.create_group("data")
    with pytest.raises(DatasetError, match="not a robomimic dataset"):
        import_robomimic(tmp_path / "x.hdf5", tmp_path / "o.zarr")
    with pytest.raises(DatasetError, match="does not exist"):
        import_robomimic(tmp_path / "missing.hdf5", tmp_path / "o.zarr")
