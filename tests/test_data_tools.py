"""Dataset tools: merge / filter keep episodes intact, schema checks, rendering to PNG and mp4, CLI wiring."""

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import episode_steps, info, small_schema
from robo.data.render import RenderConfig, render_episode
from robo.data.schema import ArraySpec, DatasetError, DatasetSchema
from robo.data.store import ZarrDataset
from robo.data.tools import merge

# (episode code, length, success, source) per dataset; codes make every episode's content unique.
SPEC_A = [(0, 12, True, "scripted"), (1, 9, False, "scripted"), (2, 15, True, "teleop")]
SPEC_B = [(10, 7, True, "policy"), (11, 11, False, "teleop")]


def _make(path: Path, spec, image: bool = False, schema: DatasetSchema | None = None) -> Path:
    with ZarrDataset.create(path, schema or small_schema(image)) as ds:
        for code, length, success, source in spec:
            e = info(code, success=success, source=source)
            e.extra["note"] = f"ep{code}"
            ds.append_episode(episode_steps(code, length, image), e)
    return path


def _assert_same_episode(a: ZarrDataset, i: int, b: ZarrDataset, j: int) -> None:
    ea, eb = a.episode(i), b.episode(j)
    assert set(ea) == set(eb)
    for key in ea:
        np.testing.assert_array_equal(ea[key], eb[key], err_msg=key)
        assert ea[key].dtype == eb[key].dtype


def test_merge_copies_episodes_and_provenance(tmp_path):
    a = _make(tmp_path / "a.zarr", SPEC_A, image=True)
    b = _make(tmp_path / "b.zarr", SPEC_B, image=True)
    out = tmp_path / "out.zarr"
    assert merge([a, b], out) == 5
    with ZarrDataset.open(out) as m, ZarrDataset.open(a) as da, ZarrDataset.open(b) as db:
        assert m.n_episodes == 5 and m.n_steps == da.n_steps + db.n_steps
        assert m.schema.mismatch(da.schema) is None and m.schema.robot_config == da.schema.robot_config
        pairs = [(da, 0), (da, 1), (da, 2), (db, 0), (db, 1)]
        for j, (src, i) in enumerate(pairs):
            _assert_same_episode(src, i, m, j)
            got, want = m.episodes[j], src.episodes[i]
            assert (got.source, got.success, got.seed, got.length, got.recorded_at) == \
                   (want.source, want.success, want.seed, want.length, want.recorded_at)
            assert got.extra["note"] == want.extra["note"]
            assert got.extra["merged_from"] == {"path": str(src.path), "episode": i}


def test_merge_of_merged_keeps_history(tmp_path):
    a = _make(tmp_path / "a.zarr", SPEC_A)
    merge([a], tmp_path / "m1.zarr")
    merge([tmp_path / "m1.zarr"], tmp_path / "m2.zarr")
    with ZarrDataset.open(tmp_path / "m2.zarr") as m:
        extra = m.episodes[2].extra
        assert extra["merged_from"] == {"path": str(tmp_path / "m1.zarr"), "episode": 2}
        assert extra["merged_history"] == [{"path": str(a), "episode": 2}]


@pytest.mark.parametrize("success_only, sources, expected_codes", [
    (True, None, [0, 2, 10]),
    (False, {"teleop"}, [2, 11]),
    (True, {"teleop", "policy"}, [2, 10]),
    (False, {"scripted"}, [0, 1]),
])
def test_filters(tmp_path, success_only, sources, expected_codes):
    a = _make(tmp_path / "a.zarr", SPEC_A)
    b = _make(tmp_path / "b.zarr", SPEC_B)
    out = tmp_path / "f.zarr"
    assert merge([a, b], out, success_only=success_only, sources_filter=sources) == len(expected_codes)
    with ZarrDataset.open(out) as m:
        # eef_pos[0, 0] encodes the episode code (episode_steps writes code * 1000 + t).
        codes = [int(m.episode(i, ["eef_pos"])["eef_pos"][0, 0]) // 1000 for i in range(m.n_episodes)]
        assert codes == expected_codes
        assert all(e.success for e in m.episodes) or not success_only


def test_single_source_filter_to_zarr_v2(tmp_path):
    a = _make(tmp_path / "a.zarr", SPEC_A)
    out = tmp_path / "f.zarr"
    assert merge([a], out, success_only=True, zarr_format=2, compression="lz4") == 2
    with ZarrDataset.open(out) as m, ZarrDataset.open(a) as da:
        assert m.zarr_format == 2 and (out / ".zgroup").exists()
        _assert_same_episode(da, 2, m, 1)


def test_schema_mismatch_is_refused_and_nothing_written(tmp_path):
    a = _make(tmp_path / "a.zarr", SPEC_A)
    other = DatasetSchema(obs={"eef_pos": ArraySpec((3,), "float32"), "gripper_qpos": ArraySpec((2,), "float32")},
                          action=ArraySpec((6,), "float32"), fps=20.0, task="Lift")
    steps = episode_steps(0, 5)
    steps["action"] = steps["action"][:, :6]
    with ZarrDataset.create(tmp_path / "b.zarr", other) as ds:
        ds.append_episode(steps, info(0))
    out = tmp_path / "out.zarr"
    with pytest.raises(DatasetError, match=r"b\.zarr does not match .*action is \(6,\)"):
        merge([a, tmp_path / "b.zarr"], out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_refusals(tmp_path):
    a = _make(tmp_path / "a.zarr", SPEC_A)
    with pytest.raises(DatasetError, match="not empty"):
        merge([a], a)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    with pytest.raises(DatasetError, match="not empty"):
        merge([a], tmp_path / "busy")
    assert (tmp_path / "busy" / "x").read_text() == "keep me"
    with pytest.raises(DatasetError, match="no episodes match"):
        merge([a], tmp_path / "none.zarr", sources_filter={"policy"})
    assert not (tmp_path / "none.zarr").exists()
    with pytest.raises(DatasetError, match="unknown provenance"):
        merge([a], tmp_path / "x.zarr", sources_filter={"human"})
    with pytest.raises(DatasetError, match="does not exist"):
        merge([tmp_path / "missing.zarr"], tmp_path / "y.zarr")
    (tmp_path / "empty").mkdir()  # an existing empty folder is fine as an output
    assert merge([a], tmp_path / "empty") == 3


def test_render_contact_sheet_layout(tmp_path):
    a = _make(tmp_path / "a.zarr", [(3, 23, True, "teleop")], image=True)
    out = tmp_path / "sheet.png"
    cfg = RenderConfig(columns=4, scale=2, label_height=16, pad=2)
    render_episode(a, 0, out, every=5, config=cfg)
    sheet = iio.imread(out)
    # Steps 0, 5, 10, 15, 20 and the last (22): 6 tiles of 16x16 frames at 2x under a 16 px label, 4 per row.
    tile_w, tile_h = 32, 16 + 32
    assert sheet.shape == (16 + 2 + 2 * tile_h + 3 * 2, 4 * tile_w + 5 * 2, 3)
    with ZarrDataset.open(a) as ds:
        frames = ds.episode(0, ["agentview_rgb"])["agentview_rgb"]
    for k, step in enumerate([0, 5, 10, 15, 20, 22]):
        r, c = divmod(k, 4)
        y = 16 + 2 + 2 + r * (tile_h + 2) + 16
        x = 2 + c * (tile_w + 2)
        want = np.repeat(np.repeat(frames[step], 2, axis=0), 2, axis=1)
        np.testing.assert_array_equal(sheet[y: y + 32, x: x + 32], want, err_msg=f"tile {k} (step {step})")
        label = sheet[y - 16: y, x: x + tile_w]
        assert (label > 200).any(), "each tile has a white step label"


def test_render_mp4_frame_count(tmp_path):
    a = _make(tmp_path / "a.zarr", [(1, 23, True, "teleop")], image=True)
    out = tmp_path / "ep.mp4"
    render_episode(a, 0, out, every=2)
    frames = iio.imread(out, plugin="pyav") if _has_pyav() else np.stack(list(_ffmpeg_frames(out)))
    assert frames.shape[0] == 12  # steps 0, 2, ..., 22
    assert frames.shape[1:] == (16 + 32, 32, 3)
    # Frame 0 shows step 0's constant colour (episode_steps: (episode * 7 + t) % 256 = 7) up to codec error.
    assert abs(float(frames[0, 16 + 8:, 4:28].mean()) - 7.0) < 6.0
    assert abs(float(frames[-1, 16 + 8:, 4:28].mean()) - (7.0 + 22)) < 6.0


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _ffmpeg_frames(path: Path):
    import imageio

    with imageio.get_reader(path, format="FFMPEG") as reader:
        yield from reader


def test_render_low_dim_plot(tmp_path):
    a = _make(tmp_path / "a.zarr", SPEC_A)
    out = tmp_path / "plot.png"
    render_episode(a, -1, out)
    img = iio.imread(out)
    assert img.shape[1] == 1000 and img.shape[0] > 500 and img.shape[2] in (3, 4)
    assert img[..., :3].std() > 10  # not a blank canvas
    with pytest.raises(DatasetError, match="no image keys"):
        render_episode(a, 0, tmp_path / "plot.mp4")
    assert not (tmp_path / "plot.mp4").exists()


def test_render_refusals(tmp_path):
    a = _make(tmp_path / "a.zarr", SPEC_A, image=True)
    with pytest.raises(DatasetError, match="must end in .png"):
        render_episode(a, 0, tmp_path / "x.gif")
    with pytest.raises(DatasetError, match="episode 7 does not exist"):
        render_episode(a, 7, tmp_path / "x.png")
    with pytest.raises(DatasetError, match="camera key 'wrist_rgb'"):
        render_episode(a, 0, tmp_path / "x.png", camera_keys=["wrist_rgb"])
    (tmp_path / "x.png").write_bytes(b"old")
    with pytest.raises(DatasetError, match="already exists"):
        render_episode(a, 0, tmp_path / "x.png")
    assert (tmp_path / "x.png").read_bytes() == b"old"


def test_cli_merge_filter_render(tmp_path, capsys):
    from robo.cli import main

    a = _make(tmp_path / "a.zarr", SPEC_A, image=True)
    b = _make(tmp_path / "b.zarr", SPEC_B, image=True)
    assert main(["data", "merge", str(a), str(b), "-o", str(tmp_path / "m.zarr"), "--success-only"]) == 0
    assert main(["data", "filter", str(tmp_path / "m.zarr"), "-o", str(tmp_path / "f.zarr"),
                 "--source", "teleop", "policy", "--zarr-format", "2"]) == 0
    with ZarrDataset.open(tmp_path / "f.zarr") as f:
        assert [e.seed for e in f.episodes] == [2, 10] and f.zarr_format == 2
    assert main(["data", "render", str(tmp_path / "f.zarr"), "--episode", "1", "-o", str(tmp_path / "f.png")]) == 0
    assert iio.imread(tmp_path / "f.png").ndim == 3
    capsys.readouterr()
    # Bad input: one line on stderr, exit code 2, no traceback.
    assert main(["data", "merge", str(a), "-o", str(tmp_path / "m.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not empty" in err and "\n" not in err


def test_render_and_tools_do_not_import_each_other():
    """The render <-> tools import circle stays broken (lazy imports inside functions count too): both take the
    staging helpers from robo.data.staging."""
    import ast

    import robo.data.render
    import robo.data.tools

    def imported(module) -> set[str]:
        tree = ast.parse(Path(module.__file__).read_text())
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        return names | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    assert "robo.data.tools" not in imported(robo.data.render)
    assert "robo.data.render" not in imported(robo.data.tools)
