"""The collection loop against the real sim: scripted expert, keyboard teleop driven key by key, filters."""

import numpy as np
import pytest
from pynput.keyboard import KeyCode

from robo.collect import CollectConfig, RateKeeper, ScriptedSource, SourceStep, TeleopSource, collect, record
from robo.data.integrity import check
from robo.data.schema import DatasetSchema
from robo.data.store import ZarrDataset


def _env(task="Lift", **kw):
    from sim.env import EnvConfig, SimEnv

    return SimEnv(EnvConfig(task=task, **kw))


def _dataset(env, path):
    schema = DatasetSchema.from_spaces(env.observation_space, env.action_space, fps=20.0, task=env.config.task,
                                       robot_config=env.robot_config())
    return ZarrDataset.create(path, schema)


def test_scripted_lift_collection_records_whole_successful_episodes(tmp_path):
    path, stats = collect(CollectConfig(output=tmp_path / "lift.zarr", episodes=2, seed=5, progress=False))
    assert stats.saved == 2 and stats.success_rate == 1.0
    ds = ZarrDataset.open(path)
    assert [e.seed for e in ds.episodes] == [5, 6] and {e.source for e in ds.episodes} == {"scripted"}
    assert set(ds.schema.obs) >= {"eef_pos", "eef_quat", "gripper_qpos", "joint_pos", "object_state"}
    assert ds.schema.robot_config["task"] == "Lift"
    for i in range(2):
        ep = ds.episode(i)
        assert ep["success"][-1] and ep["terminal"][-1] and not ep["terminal"][:-1].any()
        assert ep["reward"][-1] == 1.0
        np.testing.assert_allclose(np.diff(ep["timestamp"]), 1 / 20)
        # The cube is already leaving the table in the last recorded observation (success follows that step).
        assert ep["object_state"][-1, 2] > ep["object_state"][0, 2] + 0.003
    assert check(path).ok
    # Appending more with the same settings continues the same dataset.
    _, more = collect(CollectConfig(output=path, episodes=1, seed=7, progress=False))
    assert ZarrDataset.open(path).n_episodes == 3 and more.saved == 1


def test_a_noisy_episode_is_a_function_of_its_seed_alone(tmp_path):
    """Episode seed S means the same demonstration in any process and at any position in a collection: scene
    (cube size, placement) and expert noise. So seeds 1100-1101 and seed 1101 alone record the same second episode."""
    noisy = dict(action_noise_std=0.5, waypoint_jitter_m=0.04, hesitation_prob=0.4, progress=False)
    longer = ZarrDataset.open(collect(CollectConfig(output=tmp_path / "a.zarr", episodes=2, seed=1100, **noisy))[0])
    alone = ZarrDataset.open(collect(CollectConfig(output=tmp_path / "b.zarr", episodes=1, seed=1101, **noisy))[0])
    assert longer.n_episodes == 2
    for key in ("object_state", "joint_pos", "action"):
        np.testing.assert_array_equal(longer.episode(1)[key], alone.episode(0)[key], err_msg=key)


class KeyScript:
    """A teleop device wrapper that plays an operator's key presses into the real KeyboardTeleop, one tick at a time."""

    def __init__(self, teleop, script):
        self.teleop, self.script, self.tick = teleop, script, 0

    def start(self):
        self.teleop.start()

    def stop(self):
        self.teleop.stop()

    def read(self):
        for kind, key in self.script.get(self.tick, []):
            (self.teleop.on_press if kind == "press" else self.teleop.on_release)(key)
        self.tick += 1
        return self.teleop.read()


def test_keyboard_teleop_start_save_discard_redo_quit(tmp_path):
    from hardware.teleop import KeyboardConfig, KeyboardTeleop

    # Enter and Esc as the control characters some backends deliver (pynput's headless dummy backend aliases all
    # special Key members, so Key.enter would be indistinguishable there).
    enter, esc = KeyCode.from_char("\r"), KeyCode.from_char("\x1b")
    up, yes, no, redo = KeyCode.from_char("r"), KeyCode.from_char("y"), KeyCode.from_char("n"), KeyCode.from_char("b")
    script = {  # tick -> key transitions applied before that tick's read (releases first)
        0: [("press", enter)],  # episode A (seed 0): start; records ticks 0..6
        1: [("release", enter), ("press", up)], 6: [("release", up)],
        7: [("press", yes)],  # save A
        8: [("release", yes), ("press", enter)],  # episode B (seed 1): ticks 8..10
        9: [("release", enter)], 11: [("press", no)],  # discard B
        12: [("release", no), ("press", enter)],  # episode C (seed 2): ticks 12..13
        13: [("release", enter)], 14: [("press", redo)],  # redo C: same seed again
        15: [("release", redo), ("press", enter)],  # episode C' (seed 2): ticks 15..19
        16: [("release", enter)], 20: [("press", yes)],  # save C'
        21: [("release", yes), ("press", enter)],  # episode D (seed 3): ticks 21..22
        22: [("release", enter)], 23: [("press", esc)],  # quit mid-episode: D is dropped
    }
    env = _env()
    device = KeyScript(KeyboardTeleop(KeyboardConfig(listen=False)), script)
    with _dataset(env, tmp_path / "teleop.zarr") as ds:
        stats = record(env, TeleopSource(device), ds, CollectConfig(task="Lift", episodes=10, realtime=False,
                                                                      progress=False))
    env.close()
    assert stats.saved == 2 and stats.discarded == 3
    ds = ZarrDataset.open(tmp_path / "teleop.zarr")
    assert [e.seed for e in ds.episodes] == [0, 2] and {e.source for e in ds.episodes} == {"teleop"}
    first = ds.episode(0)
    assert len(first["action"]) == 7
    assert first["action"][0, 2] == 0 and (first["action"][1:6, 2] > 0).all() and first["action"][6, 2] == 0
    assert first["eef_pos"][-1, 2] > first["eef_pos"][0, 2] + 0.02  # the arm really moved up
    assert len(ds.episode(1)["action"]) == 5


class _Idle:
    provenance = "scripted"

    def reset(self, obs, episode_seed):
        pass

    def step(self, obs):
        return SourceStep(np.zeros(7, np.float32))

    def close(self):
        pass


def test_keep_successes_only_drops_failures(tmp_path):
    env = _env(horizon=15)
    with _dataset(env, tmp_path / "ds.zarr") as ds:
        stats = record(env, _Idle(), ds, CollectConfig(episodes=1, max_attempts=2, keep_successes_only=True,
                                                       progress=False))
        assert ds.n_episodes == 0
    env.close()
    assert stats.saved == 0 and stats.discarded == 2 and stats.attempts == 2


def test_failed_episodes_are_kept_with_their_label_by_default(tmp_path):
    env = _env(horizon=15)
    with _dataset(env, tmp_path / "ds.zarr") as ds:
        record(env, _Idle(), ds, CollectConfig(episodes=1, progress=False))
        ep = ds.episode(0)
        assert not ds.episodes[0].success and ep["truncated"][-1] and not ep["terminal"].any() and len(ep["action"]) == 15
    env.close()


def test_rate_keeper_counts_overruns():
    import time

    rate = RateKeeper(1000.0)
    for _ in range(3):
        time.sleep(0.005)  # each tick takes 5x its 1 ms period
        rate.wait()
    assert rate.overruns == 3
    idle = RateKeeper(1000.0, enabled=False)
    idle.wait()
    assert idle.overruns == 0
