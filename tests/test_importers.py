"""Importers: Diffusion Policy zarr round trip, robomimic HDF5 replay against live sim observations, robosuite's
own demonstration files (written by its DataCollectionWrapper and gather_demonstrations_as_hdf5)."""

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from robo.data.importers import RobomimicImportConfig, import_diffusion_policy, import_robomimic
from robo.data.integrity import check
from robo.data.schema import DatasetError
from robo.data.store import ZarrDataset

# ------------------------------------------------------------------------------------------- Diffusion Policy


def _make_dp(path: Path, lengths=(5, 8, 3), with_action: bool = True) -> dict[str, np.ndarray]:
    """A PushT-like replay buffer written as zarr v2, like Diffusion Policy's files."""
    rng = np.random.default_rng(0)
    n = sum(lengths)
    arrays = {"img": rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8),
              "state": rng.normal(size=(n, 2)).astype(np.float32),
              "keypoint": rng.normal(size=(n, 9, 2)).astype(np.float32)}
    if with_action:
        arrays["action"] = rng.uniform(0, 512, (n, 2)).astype(np.float32)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    data = root.create_group("data")
    for k, v in arrays.items():
        data.create_array(k, shape=v.shape, chunks=(4, *v.shape[1:]), dtype=v.dtype)[:] = v
    meta = root.create_group("meta")
    meta.create_array("episode_ends", shape=(len(lengths),), dtype="int64")[:] = np.cumsum(lengths)
    return arrays


def test_dp_round_trip(tmp_path):
    src = tmp_path / "pusht.zarr"
    arrays = _make_dp(src)
    out = tmp_path / "ours.zarr"
    n = import_diffusion_policy(src, out, task="PushT", fps=10, key_map={"img": "agentview_rgb", "keypoint": None})
    assert n == 3
    with ZarrDataset.open(out) as ds:
        assert ds.schema.task == "PushT" and ds.schema.fps == 10.0
        assert set(ds.schema.obs) == {"agentview_rgb", "state"}
        assert list(ds.episode_ends) == [5, 13, 16]
        for name, ours in (("img", "agentview_rgb"), ("state", "state"), ("action", "action")):
            np.testing.assert_array_equal(ds.load([ours])[ours], arrays[name])
            assert ds.array(ours).dtype == arrays[name].dtype
        ep = ds.episode(1)
        np.testing.assert_allclose(ep["timestamp"], np.arange(8) / 10)
        assert ep["success"].tolist() == [False] * 7 + [True]
        for i, e in enumerate(ds.episodes):
            assert e.source == "imported" and e.success and e.extra["origin"] == "diffusion_policy"
            assert e.extra["source_episode"] == i


def test_dp_errors(tmp_path):
    src = tmp_path / "noaction.zarr"
    _make_dp(src, with_action=False)
    with pytest.raises(DatasetError, match="no 'action' array"):
        import_diffusion_policy(src, tmp_path / "o.zarr", task="PushT", fps=10)
    with pytest.raises(DatasetError, match="key_map names"):
        import_diffusion_policy(src, tmp_path / "o.zarr", task="PushT", fps=10, key_map={"nope": "x"})
    with pytest.raises(DatasetError, match="not a Diffusion Policy zarr"):
        import_diffusion_policy(tmp_path / "missing.zarr", tmp_path / "o.zarr", task="PushT", fps=10)
    assert not (tmp_path / "o.zarr").exists()


# ------------------------------------------------------------------------------------------- robomimic

def _record_robomimic(path: Path, *, n_demos: int, steps: int, camera: str | None, size: int,
                      controller: dict | None = None):
    """Run our SimEnv with random actions and save it in robomimic's HDF5 layout; return the live observations."""
    import h5py

    from sim.env import EnvConfig, SimEnv

    env = SimEnv(EnvConfig(task="Lift", cameras=(camera,) if camera else (), image_height=size, image_width=size))
    rs = env.unwrapped_robosuite
    rng = np.random.default_rng(1)
    live = []
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {
            "robots": ["Panda"], "control_freq": 20,
            "controller_configs": controller or {"type": "OSC_POSE", "control_delta": True}}})
        for d in range(n_demos):
            obs, _ = env.reset(seed=d)
            states, actions, rewards, dones, seen = [], [], [], [], []
            for t in range(steps):
                states.append(rs.sim.get_state().flatten())
                seen.append(obs)
                a = np.clip(rng.normal(0.0, 0.5, 7), -1, 1).astype(np.float32)
                obs, reward, terminal, _, _ = env.step(a)
                actions.append(a)
                rewards.append(reward)
                dones.append(int(t == steps - 1))
            g = data.create_group(f"demo_{d}")
            g.attrs["num_samples"] = steps
            g.attrs["model_file"] = rs.sim.model.get_xml()
            g.create_dataset("states", data=np.asarray(states))
            g.create_dataset("actions", data=np.asarray(actions))
            g.create_dataset("rewards", data=np.asarray(rewards))
            g.create_dataset("dones", data=np.asarray(dones))
            live.append({k: np.stack([o[k] for o in seen]) for k in seen[0]} | {"action": np.asarray(actions)})
    env.close()
    return live


def _assert_matches_live(ds: ZarrDataset, live: list[dict[str, np.ndarray]]) -> None:
    assert ds.n_episodes == len(live)
    for i, want in enumerate(live):
        got = ds.episode(i)
        np.testing.assert_array_equal(got["action"], want["action"])
        # qpos-derived values are restored exactly; body/site positions are recomputed by mj_forward from the
        # stored qpos, while the live env reports them from before the last physics substep (<~1 mm apart).
        for key, atol in (("joint_pos", 1e-6), ("gripper_qpos", 1e-6), ("eef_pos", 2e-3), ("object_state", 2e-3),
                          ("eef_quat", 5e-3)):
            np.testing.assert_allclose(got[key], want[key], atol=atol, err_msg=f"demo {i} {key}")
        for key in (k for k in want if k.endswith("_rgb")):
            diff = np.abs(got[key].astype(np.int16) - want[key].astype(np.int16))
            # A few edge pixels differ where a link sits ~1 mm apart (see above); a wrong state moves whole objects.
            assert (diff.max(axis=-1) > 0).mean() < 0.1, f"demo {i} {key}: too many pixels differ"
            assert diff.mean() < 2.0, f"demo {i} {key} differs by {diff.mean():.2f} on average"
        assert got["terminal"].tolist() == [False] * (len(got["terminal"]) - 1) + [True]
        np.testing.assert_allclose(got["timestamp"], np.arange(len(got["timestamp"])) / 20)


def test_robomimic_replay_matches_live(tmp_path):
    src = tmp_path / "demo.hdf5"
    live = _record_robomimic(src, n_demos=2, steps=15, camera="agentview", size=48)
    out = tmp_path / "ours.zarr"
    assert import_robomimic(src, out, cameras=("agentview",), image_size=48) == 2
    with ZarrDataset.open(out) as ds:
        assert "agentview_rgb" in ds.schema.obs and ds.schema.obs["agentview_rgb"].shape == (48, 48, 3)
        assert ds.schema.task == "Lift" and ds.schema.fps == 20.0
        assert ds.schema.robot_config["imported_from"]["replayed_with_model_xml"] is False
        _assert_matches_live(ds, live)
        assert all(e.source == "imported" and e.extra["origin"] == "robomimic" for e in ds.episodes)
        assert [e.extra["demo"] for e in ds.episodes] == ["demo_0", "demo_1"]
    assert check(out).ok
    # A wrong observation would be caught: replaying demo_1 against demo_0's record must fail.
    with ZarrDataset.open(out) as ds, pytest.raises(AssertionError):
        _assert_matches_live(ds, [live[1], live[0]])


def test_robomimic_with_model_xml_and_limit(tmp_path):
    src = tmp_path / "demo.hdf5"
    # robosuite 1.5 writes composite controller configs (the arm under body_parts).
    live = _record_robomimic(src, n_demos=2, steps=8, camera=None, size=84,
                             controller={"type": "BASIC", "body_parts": {"right": {"type": "OSC_POSE",
                                                                                    "input_type": "delta"}}})
    out = tmp_path / "ours.zarr"
    cfg = RobomimicImportConfig(limit=1, use_model_xml="always")
    assert import_robomimic(src, out, config=cfg) == 1
    with ZarrDataset.open(out) as ds:
        assert ds.schema.robot_config["imported_from"]["replayed_with_model_xml"] is True
        _assert_matches_live(ds, live[:1])


def test_robomimic_errors(tmp_path):
    import h5py

    bad = tmp_path / "bad.hdf5"
    with h5py.File(bad, "w") as f:
        data = f.create_group("data")
    with pytest.raises(DatasetError, match="neither robomimic's 'env_args' nor robosuite's 'env_info'"):
        import_robomimic(bad, tmp_path / "o.zarr")
    with pytest.raises(DatasetError, match="does not exist"):
        import_robomimic(tmp_path / "missing.hdf5", tmp_path / "o.zarr")
    with h5py.File(bad, "a") as f:
        data = f["data"]
        data.attrs["env_args"] = json.dumps({"env_name": "Stack", "env_kwargs": {}})
    with pytest.raises(DatasetError, match="env 'Stack'"):
        import_robomimic(bad, tmp_path / "o.zarr")
    with h5py.File(bad, "a") as f:
        f["data"].attrs["env_args"] = json.dumps({"env_name": "Lift", "env_kwargs": {
            "controller_configs": {"type": "JOINT_VELOCITY"}}})
    with pytest.raises(DatasetError, match="JOINT_VELOCITY controller"):
        import_robomimic(bad, tmp_path / "o.zarr")
    with h5py.File(bad, "a") as f:
        f["data"].attrs["env_args"] = json.dumps({"env_name": "Lift", "env_kwargs": {}})
        g = f["data"].create_group("demo_0")
        g.create_dataset("states", data=np.zeros((4, 20)))
        g.create_dataset("actions", data=np.zeros((4, 7)))
    with pytest.raises(DatasetError, match="states have 20 values but the Lift model needs 32"):
        import_robomimic(bad, tmp_path / "o.zarr", config=RobomimicImportConfig(use_model_xml="never"))
    with pytest.raises(DatasetError, match="not a readable HDF5"):
        (tmp_path / "junk.hdf5").write_text("junk")
        import_robomimic(tmp_path / "junk.hdf5", tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()


# ------------------------------------------------------------------------------------------- robosuite's own files

def _record_with_robosuite(tmp_path: Path, overshoot: float) -> tuple[Path, dict[str, np.ndarray]]:
    """Record one Lift demo the way robosuite's collect_human_demonstrations.py does: the robosuite env wrapped in
    its DataCollectionWrapper, the episode folder gathered by its gather_demonstrations_as_hdf5 (env_info, demo_1,
    states and actions only). The operator is our scripted expert with its actions scaled by ``overshoot``, as a
    teleop device's sensitivity does, so some values land outside [-1, 1]. Returns the file and the live record."""
    from robosuite.scripts.collect_human_demonstrations import gather_demonstrations_as_hdf5
    from robosuite.wrappers import DataCollectionWrapper

    from sim.env import EnvConfig, SimEnv
    from sim.experts import ExpertConfig, make_expert

    env = SimEnv(EnvConfig(task="Lift"))
    rs = env.unwrapped_robosuite
    env_info = json.dumps({"env_name": "Lift", "robots": ["Panda"], "controller_configs": env._controller})
    raw_dir = tmp_path / "raw"
    recorder = DataCollectionWrapper(rs, str(raw_dir))
    expert = make_expert(env, ExpertConfig(seed=0))
    env.reset(seed=0)  # seeds the placement; the wrapper's own reset then starts its episode
    obs = env._convert(recorder.reset())
    expert.reset(obs)
    seen, sent = [], []
    for _ in range(150):
        seen.append(obs)
        action = (np.asarray(expert.act(obs), dtype=np.float64) * overshoot).astype(np.float32)
        sent.append(action)
        raw, _, _, _ = recorder.step(action)
        obs = env._convert(raw)
        if rs._check_success():
            break
    recorder.close()  # flushes the episode folder (and closes the robosuite env)
    out_dir = tmp_path / "gathered"
    out_dir.mkdir()
    gather_demonstrations_as_hdf5(str(raw_dir), str(out_dir), env_info)
    live = {k: np.stack([o[k] for o in seen]) for k in seen[0]} | {"action": np.asarray(sent)}
    return out_dir / "demo.hdf5", live


def test_robosuite_demonstration_file_imports_with_clipping(tmp_path, capsys):
    import h5py

    from robo.cli import main

    src, live = _record_with_robosuite(tmp_path, overshoot=1.05)
    with h5py.File(src, "r") as f:  # the layout robosuite wrote, not robomimic's
        assert "env_info" in f["data"].attrs and "env_args" not in f["data"].attrs
        assert list(f["data"].keys()) == ["demo_1"] and set(f["data/demo_1"].keys()) == {"states", "actions"}
        raw = f["data/demo_1/actions"][:]
    outside = int((np.abs(raw) > 1.0).sum())
    assert outside > 0, "the recording should hold actions the controller clips"
    out = tmp_path / "ours.zarr"
    assert import_robomimic(src, out) == 1
    with ZarrDataset.open(out) as ds:
        ep, e = ds.episode(0), ds.episodes[0]
        assert e.success and e.extra["origin"] == "robosuite" and e.extra["actions_clipped"] == outside
        assert ds.schema.robot_config["imported_from"]["format"] == "robosuite"
        np.testing.assert_array_equal(ep["action"], np.clip(raw, -1, 1))
        # Replayed observations are the ones the recorder saw (tolerances as for robomimic files, above).
        assert len(ep["action"]) == len(live["action"])
        for key, atol in (("joint_pos", 1e-6), ("gripper_qpos", 1e-6), ("eef_pos", 2e-3), ("object_state", 2e-3)):
            np.testing.assert_allclose(ep[key], live[key], atol=atol, err_msg=key)
    assert check(out).clean
    # The command line says how many values it clipped.
    assert main(["data", "import-robosuite", str(src), "-o", str(tmp_path / "cli.zarr")]) == 0
    assert (f"imported 1 robosuite demos into {tmp_path / 'cli.zarr'}; {outside} action values outside the "
            f"controller's input range clipped") in capsys.readouterr().out
