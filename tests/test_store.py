"""The Zarr demonstration store: round trips, atomic commits, damage detection and repair."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import episode_steps, info, small_schema
from robo.collect import open_or_create
from robo.data.integrity import check, repair
from robo.data.schema import ArraySpec, DatasetError, DatasetSchema, EpisodeInfo
from robo.data.store import ZarrDataset

REPO = Path(__file__).resolve().parents[1]


def _fill(path: Path, n: int, *, zarr_format: int = 3, image: bool = False, lengths=None) -> None:
    with ZarrDataset.create(path, small_schema(image), zarr_format=zarr_format) as ds:
        for e in range(n):
            ds.append_episode(episode_steps(e, lengths[e] if lengths else 30 + 7 * e, image), info(e))


@pytest.mark.parametrize("zarr_format", [3, 2])
@pytest.mark.parametrize("image", [False, True])
def test_round_trip(tmp_path, zarr_format, image):
    path = tmp_path / "ds.zarr"
    _fill(path, 4, zarr_format=zarr_format, image=image)
    ds = ZarrDataset.open(path)
    assert ds.n_episodes == 4 and ds.zarr_format == zarr_format
    assert list(ds.episode_ends) == list(np.cumsum([30, 37, 44, 51]))
    for e in range(4):
        got, want = ds.episode(e), episode_steps(e, 30 + 7 * e, image)
        for key, value in want.items():
            np.testing.assert_array_equal(got[key], value.astype(got[key].dtype), err_msg=key)
        assert ds.episodes[e].seed == e and ds.episodes[e].length == 30 + 7 * e
    assert ds.schema.robot_config["controller"] == "OSC_POSE"


def test_zarr2_layout_is_what_diffusion_policy_reads(tmp_path):
    """A zarr-2 reader sees data/<key> concatenated along time and meta/episode_ends, v2 metadata files only."""
    path = tmp_path / "dp.zarr"
    _fill(path, 3, zarr_format=2)
    assert (path / ".zgroup").exists() and not (path / "zarr.json").exists()
    zarray = json.loads((path / "data" / "action" / ".zarray").read_text())
    assert zarray["zarr_format"] == 2 and zarray["compressor"]["id"] == "blosc" and zarray["shape"] == [30 + 37 + 44, 7]
    root = zarr.open_group(str(path), mode="r", zarr_format=2)
    ends = root["meta/episode_ends"][:]
    assert ends.dtype == np.int64 and list(ends) == [30, 67, 111]
    np.testing.assert_array_equal(root["data/action"][30:67], episode_steps(1, 37)["action"])


def test_streamed_episode_matches_bulk_and_discard_leaves_store_unchanged(tmp_path):
    path = tmp_path / "ds.zarr"
    with ZarrDataset.create(path, small_schema(image=True)) as ds:
        steps = episode_steps(0, 123, image=True)
        writer = ds.new_episode()
        for t in range(123):
            obs = {k: steps[k][t] for k in ("eef_pos", "gripper_qpos", "agentview_rgb")}
            writer.add_step(obs, steps["action"][t], reward=steps["reward"][t], terminal=bool(steps["terminal"][t]),
                            success=bool(steps["success"][t]), timestamp=steps["timestamp"][t])
        writer.commit(info(0))
        before = {k: ds.array(k)[:] for k in ds.keys}
        junk = ds.new_episode()
        junk.add_steps(episode_steps(9, 500, image=True))
        junk.discard()
        assert ds.n_episodes == 1
    ds = ZarrDataset.open(path)
    for key, value in before.items():
        np.testing.assert_array_equal(ds.array(key)[:], value)
        assert ds.array(key).shape[0] == 123
    np.testing.assert_array_equal(ds.episode(0)["agentview_rgb"], steps["agentview_rgb"])


_KILL_CHILD = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {tests!r}); sys.path.insert(0, {repo!r})
    from conftest import episode_steps, info, small_schema
    from robo.data.store import ZarrDataset
    ds = ZarrDataset.create({path!r}, small_schema(image=True), zarr_format={fmt})
    e = 0
    while True:
        steps = episode_steps(e, 200, image=True)
        writer = ds.new_episode()
        for t in range(200):
            writer.add_step({{k: steps[k][t] for k in ("eef_pos", "gripper_qpos", "agentview_rgb")}}, steps["action"][t],
                            reward=steps["reward"][t], terminal=bool(steps["terminal"][t]),
                            success=bool(steps["success"][t]), timestamp=steps["timestamp"][t])
        writer.commit(info(e))
        print("committed", e, flush=True)
        e += 1
""")


@pytest.mark.parametrize("zarr_format,delay", [(3, 0.0), (3, 0.013), (3, 0.037), (2, 0.021)])
def test_sigkill_mid_episode_keeps_every_committed_episode(tmp_path, zarr_format, delay):
    path = tmp_path / "killed.zarr"
    code = _KILL_CHILD.format(tests=str(REPO / "tests"), repo=str(REPO), path=str(path), fmt=zarr_format)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):
            line = child.stdout.readline()
            assert line.startswith("committed"), f"child failed before committing: {line!r}"
        time.sleep(delay)  # land the kill at different points of the next episode (or its commit)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    report = check(path)
    assert report.ok, report.problems
    ds = ZarrDataset.open(path)
    assert ds.n_episodes >= 3
    for e in range(ds.n_episodes):
        got = ds.episode(e)
        np.testing.assert_array_equal(got["eef_pos"], episode_steps(e, 200)["eef_pos"])
        assert got["agentview_rgb"][-1, 0, 0, 0] == (e * 7 + 199) % 256
    # Appending afterwards drops the torn tail and carries on.
    with ZarrDataset.open(path, mode="a") as ds:
        n = ds.n_episodes
        ds.append_episode(episode_steps(n, 40, image=True), info(n))
    after = check(path)
    assert after.clean and after.n_episodes == n + 1 and not after.torn_tail


def test_append_with_other_schema_is_refused_and_nothing_changes(tmp_path):
    path = tmp_path / "ds.zarr"
    _fill(path, 2)
    snapshot = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file() and "lock" not in p.name}
    other = small_schema()
    other.obs["eef_pos"] = ArraySpec((4,), "float32")
    with pytest.raises(DatasetError, match=r"cannot append.*'eef_pos' is \(4,\)"):
        open_or_create(path, other, 3, "lz4")
    fps = small_schema()
    fps.fps = 10.0
    with pytest.raises(DatasetError, match="fps is 10.0"):
        open_or_create(path, fps, 3, "lz4")
    after = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file() and "lock" not in p.name}
    assert after == snapshot


@pytest.mark.parametrize("bad,match", [
    (lambda s: s.pop("gripper_qpos"), "missing \\['gripper_qpos'\\]"),
    (lambda s: s.update(eef_pos=np.zeros((5, 2))), "'eef_pos' has shape \\(2,\\)"),
    (lambda s: s["eef_pos"].__setitem__((2, 1), np.nan), "NaN or inf"),
    (lambda s: s.update(extra=np.zeros(5)), "unexpected \\['extra'\\]"),
])
def test_bad_steps_are_refused_with_one_line(tmp_path, schema, bad, match):
    with ZarrDataset.create(tmp_path / "ds.zarr", schema) as ds:
        steps = episode_steps(0, 5)
        bad(steps)
        with pytest.raises(DatasetError, match=match) as err:
            ds.new_episode().add_steps(steps)
        assert "\n" not in str(err.value)
        assert ds.n_episodes == 0


def test_not_a_dataset_and_unreadable_metadata(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        ZarrDataset.open(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match="not a zarr store"):
        ZarrDataset.open(tmp_path / "plain")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").create_group("data")
    with pytest.raises(DatasetError, match="not a robo dataset"):
        ZarrDataset.open(tmp_path / "other.zarr")
    path = tmp_path / "ds.zarr"
    _fill(path, 1)
    (path / "zarr.json").write_text('{"zarr_format": 3, "node_ty')
    with pytest.raises(DatasetError, match="unreadable"):
        ZarrDataset.open(path)
    newer = tmp_path / "newer.zarr"
    _fill(newer, 1)
    meta = json.loads((newer / "zarr.json").read_text())
    meta["attributes"]["robo"]["schema_version"] = 99
    (newer / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="newer than this code"):
        ZarrDataset.open(newer)


def test_missing_chunk_is_found_and_repair_cuts_there(tmp_path):
    path = tmp_path / "ds.zarr"
    # eef_pos chunks are 1024 steps: make episodes long enough to span several chunks.
    _fill(path, 5, lengths=[700, 700, 700, 700, 700])
    chunk = path / "data" / "eef_pos" / "c" / "2" / "0"
    chunk.unlink()
    report = check(path)
    assert not report.ok and "chunk c/2/0 (steps 2048-3071) is missing" in report.problems[0]
    _, dropped = repair(path)
    assert dropped == 3  # episodes 2, 3, 4 touch steps >= 2048 (episode 2 spans 1400-2099)
    after = check(path)
    assert after.ok and after.n_episodes == 2
    np.testing.assert_array_equal(ZarrDataset.open(path).episode(1)["eef_pos"], episode_steps(1, 700)["eef_pos"])


def test_corrupt_chunk_bytes_are_reported(tmp_path):
    path = tmp_path / "ds.zarr"
    _fill(path, 2)
    chunk = path / "data" / "action" / "c" / "0" / "0"
    chunk.write_bytes(b"\x00garbage" * 10)
    report = check(path)
    assert not report.ok and "does not decode" in " ".join(report.problems)


def test_truncated_array_gives_one_line_error_then_repairs(tmp_path):
    path = tmp_path / "ds.zarr"
    _fill(path, 3)  # ends 30, 67, 111
    zarr.open_group(str(path), mode="r+")["data/gripper_qpos"].resize((50, 2))
    with pytest.raises(DatasetError, match="data/gripper_qpos has 50 steps but committed episodes end at step 111"):
        ZarrDataset.open(path)
    assert not check(path).ok
    _, dropped = repair(path)
    assert dropped == 2
    ds = ZarrDataset.open(path)
    assert ds.n_episodes == 1 and check(path).ok


def test_second_writer_is_refused(tmp_path, schema):
    path = tmp_path / "ds.zarr"
    with ZarrDataset.create(path, schema):
        with pytest.raises(DatasetError, match="open for writing by another process"):
            ZarrDataset.open(path, mode="a")
        ZarrDataset.open(path, mode="r")  # readers are welcome


def test_episode_info_validation():
    with pytest.raises(DatasetError, match="checkpoint_id"):
        EpisodeInfo(source="policy", success=True)
    with pytest.raises(DatasetError, match="not one of"):
        EpisodeInfo(source="dream", success=True)
    with pytest.raises(DatasetError, match="clash"):
        DatasetSchema(obs={"reward": ArraySpec((1,), "float32")}, action=ArraySpec((7,), "float32"), fps=20, task="x")


# ---------------------------------------------------------------------------------------------- torn tails


def _zarr2_readers_accept(path: Path) -> bool:
    """The condition Diffusion Policy's ReplayBuffer asserts on opening: every data array is exactly as long as
    the last entry of meta/episode_ends."""
    root = zarr.open_group(str(path), mode="r", zarr_format=2)
    end = int(root["meta/episode_ends"][-1])
    return all(arr.shape[0] == end for _, arr in root["data"].arrays())


def _abandon_mid_episode(path: Path, steps: int, image: bool) -> None:
    """A recorder that dies mid-episode: steps streamed, no commit, no discard (the process is gone)."""
    with ZarrDataset.open(path, mode="a") as ds:
        writer = ds.new_episode()
        writer.add_steps(episode_steps(99, steps, image))


@pytest.mark.parametrize("zarr_format,image", [(2, False), (3, False), (2, True), (3, True)])
def test_a_crash_mid_episode_leaves_arrays_ending_at_episode_ends(tmp_path, zarr_format, image):
    path = tmp_path / "ds.zarr"
    _fill(path, 2, zarr_format=zarr_format, image=image)  # ends 30, 67
    _abandon_mid_episode(path, 3000, image)  # several chunks past the end (1024 steps low-dim, 64 images)
    if zarr_format == 2:
        assert _zarr2_readers_accept(path)
    report = check(path)
    assert report.clean and report.torn_tail.steps == 0 and report.torn_tail.chunk_files >= 2
    assert "unused chunk file" in report.summary() and report.summary().split(": ")[1].startswith("OK")
    # The next append drops the leftover chunk files and the episode lands right after the committed ones.
    with ZarrDataset.open(path, mode="a") as ds:
        ds.append_episode(episode_steps(2, 44, image), info(2))
    after = check(path)
    assert after.clean and not after.torn_tail and after.n_episodes == 3
    got = ZarrDataset.open(path).episode(2)
    for key, want in episode_steps(2, 44, image).items():
        np.testing.assert_array_equal(got[key], want, err_msg=key)
    if zarr_format == 2:
        assert _zarr2_readers_accept(path)


def _crash_inside_commit(path: Path, monkeypatch) -> None:
    """A recorder that dies inside the commit: arrays already sized to the new end and the episode record
    written, episode_ends not yet extended (the commit's own order)."""
    def record_then_die(self, length, episode_info):
        episode_info.length = length
        self._root["meta"].attrs["episodes"] = [e.to_json() for e in self._episodes] + [episode_info.to_json()]
        raise KeyboardInterrupt("killed inside the commit")

    with monkeypatch.context() as m:
        m.setattr(ZarrDataset, "_commit", record_then_die)
        with ZarrDataset.open(path, mode="a") as ds, pytest.raises(KeyboardInterrupt):
            ds.append_episode(episode_steps(2, 12), info(2))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_crash_inside_the_commit_is_reported_the_same_by_check_and_repair(tmp_path, monkeypatch, caplog,
                                                                             zarr_format):
    path = tmp_path / "ds.zarr"
    _fill(path, 2, zarr_format=zarr_format)
    _crash_inside_commit(path, monkeypatch)
    report = check(path)
    assert report.ok and report.n_episodes == 2
    assert report.torn_tail.describe() == "12 steps, 1 episode record"
    if zarr_format == 2:
        # zarr-2 readers refuse this store, so check must not pass it.
        assert not _zarr2_readers_accept(path)
        assert not report.clean and "NEEDS REPAIR" in report.summary() and "ReplayBuffer" in report.summary()
    else:
        assert report.clean and "12 steps, 1 episode record" in report.summary()
    before, dropped = repair(path)
    assert before.torn_tail == report.torn_tail and dropped == 0
    assert "dropping a torn tail left by an interrupted recording (12 steps, 1 episode record)" in caplog.text
    after = check(path)
    assert after.clean and not after.torn_tail and after.n_episodes == 2
    if zarr_format == 2:
        assert _zarr2_readers_accept(path)


def test_the_next_append_repairs_a_torn_tail_first(tmp_path, monkeypatch):
    path = tmp_path / "ds.zarr"
    _fill(path, 2, zarr_format=2)
    _crash_inside_commit(path, monkeypatch)
    with ZarrDataset.open(path, mode="a") as ds:
        assert not ds.torn_tail()  # dropped on opening, before anything is written
        ds.append_episode(episode_steps(2, 20), info(2))
    assert _zarr2_readers_accept(path) and check(path).clean
    ds = ZarrDataset.open(path)
    assert [e.seed for e in ds.episodes] == [0, 1, 2] and list(ds.episode_ends) == [30, 67, 87]
