"""Render one episode for a human: a PNG contact sheet of camera frames, an mp4, or a trajectory plot.

* ``.png`` with image keys: a grid of frames (all chosen cameras side by side per step), each labelled ``t=<step>``.
* ``.png`` without image keys: matplotlib (Agg) plot of eef_pos, gripper and action over the episode.
* ``.mp4``: every ``every``-th step's frames via imageio-ffmpeg (H.264), labelled like the contact sheet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from robo.data.schema import ACTION_KEY, DatasetError
from robo.data.staging import staged_output
from robo.data.store import ZarrDataset

_BACKGROUND = 32  # dark grey between tiles
_READ_BLOCK = 128  # steps read at once when streaming frames


@dataclass
class RenderConfig:
    columns: int = 6  # contact sheet columns
    max_frames: int = 24  # contact sheet: with every=None, pick `every` so at most this many frames are shown
    scale: int = 2  # integer nearest-neighbour upscaling of frames (84 px frames are hard to read at 1x)
    label_height: int = 16  # pixels of the step label above each tile (and of the sheet header)
    pad: int = 2  # pixels between tiles and around the sheet
    fps: float | None = None  # mp4 frame rate; None: the dataset's fps divided by `every`


def _font(size: int):  # noqa: ANN202 - PIL type
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def _label_strip(text: str, width: int, height: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (_BACKGROUND,) * 3)
    ImageDraw.Draw(img).text((3, 1), text, fill=(255, 255, 255), font=_font(max(8, height - 4)))
    return np.asarray(img)


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    """Any (H, W, C) image -> (H, W, 3) uint8; single-channel (depth) is min-max normalised to grey."""
    if frame.shape[-1] == 4:
        frame = frame[..., :3]
    if frame.shape[-1] == 1:
        f = frame[..., 0].astype(np.float64)
        lo, hi = float(f.min()), float(f.max())
        grey = np.zeros_like(f) if hi <= lo else (f - lo) / (hi - lo)
        return np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)
    if frame.dtype == np.uint8:
        return frame
    if np.issubdtype(frame.dtype, np.floating):
        return (np.clip(frame, 0.0, 1.0) * 255).astype(np.uint8)
    return np.clip(frame, 0, 255).astype(np.uint8)


def _tile(frames: list[np.ndarray], step: int, cfg: RenderConfig) -> np.ndarray:
    """Cameras side by side, upscaled, under a ``t=<step>`` label."""
    scaled = [np.repeat(np.repeat(_to_rgb(f), cfg.scale, axis=0), cfg.scale, axis=1) for f in frames]
    h = max(s.shape[0] for s in scaled)
    w = sum(s.shape[1] for s in scaled) + cfg.pad * (len(scaled) - 1)
    body = np.full((h, w, 3), _BACKGROUND, np.uint8)
    x = 0
    for s in scaled:
        body[: s.shape[0], x: x + s.shape[1]] = s
        x += s.shape[1] + cfg.pad
    return np.concatenate([_label_strip(f"t={step}", w, cfg.label_height), body], axis=0)


def _image_keys(ds: ZarrDataset, camera_keys: list[str] | None) -> list[str]:
    if camera_keys is None:
        return [k for k, s in ds.schema.obs.items() if len(s.shape) == 3 and s.shape[-1] == 3]
    for key in camera_keys:
        if key not in ds.schema.obs:
            raise DatasetError(f"camera key '{key}' is not in {ds.path}; it has {sorted(ds.schema.obs)}")
        if len(ds.schema.obs[key].shape) != 3:
            raise DatasetError(f"'{key}' is {ds.schema.obs[key].shape}, not an (H, W, C) image; pick an image key")
    return list(camera_keys)


def _steps(length: int, every: int) -> list[int]:
    steps = list(range(0, length, every))
    if steps[-1] != length - 1:
        steps.append(length - 1)  # always show how the episode ended
    return steps


def _iter_frames(ds: ZarrDataset, episode: int, keys: list[str], steps: list[int]) -> Iterator[tuple[int, list]]:
    """Yield (step, [frame per key]) for the wanted steps, reading blocks so memory stays small."""
    start, _ = ds.episode_bounds(episode)
    wanted = np.asarray(steps)
    for lo in range(0, int(wanted[-1]) + 1, _READ_BLOCK):
        sel = wanted[(wanted >= lo) & (wanted < lo + _READ_BLOCK)]
        if not len(sel):
            continue
        hi = int(sel[-1]) + 1
        blocks = {k: ds.array(k)[start + lo: start + hi] for k in keys}
        for t in sel:
            yield int(t), [blocks[k][t - lo] for k in keys]


def _contact_sheet(tiles: list[np.ndarray], header: str, cfg: RenderConfig) -> np.ndarray:
    th, tw = tiles[0].shape[:2]
    cols = max(1, min(cfg.columns, len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    width = cols * tw + (cols + 1) * cfg.pad
    top = cfg.label_height + cfg.pad
    sheet = np.full((top + rows * th + (rows + 1) * cfg.pad, width, 3), _BACKGROUND, np.uint8)
    sheet[: cfg.label_height] = _label_strip(header, width, cfg.label_height)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        y = top + cfg.pad + r * (th + cfg.pad)
        x = cfg.pad + c * (tw + cfg.pad)
        sheet[y: y + th, x: x + tw] = tile
    return sheet


def _plot_low_dim(ds: ZarrDataset, episode: int, title: str, out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    start, end = ds.episode_bounds(episode)
    panels: list[tuple[str, np.ndarray, list[str]]] = []
    specs = ds.schema.obs
    if "eef_pos" in specs:
        panels.append(("eef_pos [m]", ds.array("eef_pos")[start:end], ["x", "y", "z"]))
    if "gripper_qpos" in specs:
        g = ds.array("gripper_qpos")[start:end]
        panels.append(("gripper_qpos [m]", g, [f"finger {i}" for i in range(g.shape[1])]))
    if not panels:  # unknown robot layout: plot the other low-dim observations (small vectors only)
        for key, spec in specs.items():
            if len(spec.shape) == 1 and spec.shape[0] <= 16 and len(panels) < 4:
                arr = ds.array(key)[start:end]
                panels.append((key, arr, [f"{key}[{i}]" for i in range(arr.shape[1])]))
    action = ds.array(ACTION_KEY)[start:end].reshape(end - start, -1)
    names = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"] if action.shape[1] == 7 else \
        [f"a[{i}]" for i in range(action.shape[1])]
    panels.append(("action", action, names))
    fig = Figure(figsize=(10, 2.4 * len(panels) + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    t = np.arange(end - start)
    for ax, (name, values, labels) in zip(axes, panels):
        values = np.asarray(values, dtype=np.float64).reshape(len(t), -1)
        for j in range(values.shape[1]):
            ax.plot(t, values[:, j], label=labels[j] if j < len(labels) else str(j), linewidth=1.2)
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right", fontsize=7, ncol=min(7, values.shape[1]))
    axes[-1].set_xlabel(f"step (at {ds.schema.fps:g} Hz)")
    fig.suptitle(title)
    fig.savefig(out, format="png")


def render_episode(dataset_path: str | Path, episode: int, output: str | Path, *, camera_keys: list[str] | None = None,
                   every: int | None = None, config: RenderConfig | None = None) -> Path:
    """Render ``episode`` of the dataset to ``output`` (.png or .mp4, which must not exist); returns ``output``."""

    cfg = config or RenderConfig()
    output = Path(output)
    kind = output.suffix.lower()
    if kind not in (".png", ".mp4"):
        raise DatasetError(f"output {output} must end in .png (contact sheet / plot) or .mp4 (video)")
    if every is not None and every < 1:
        raise DatasetError(f"every must be >= 1, got {every}")
    if cfg.scale < 1 or cfg.columns < 1:
        raise DatasetError("RenderConfig.scale and columns must be >= 1")
    with ZarrDataset.open(dataset_path, "r") as ds:
        start, end = ds.episode_bounds(episode)
        episode %= ds.n_episodes
        length = end - start
        info = ds.episodes[episode]
        keys = _image_keys(ds, camera_keys)
        header = (f"{Path(dataset_path).name} ep {episode} | {ds.schema.task} | {info.source} | "
                  f"{'success' if info.success else 'failure'} | {length} steps")
        with staged_output(output) as staging:
            staging = staging.with_name(staging.name + kind)  # encoders pick the format from the suffix
            try:
                if not keys:
                    if kind == ".mp4":
                        raise DatasetError(f"{dataset_path} has no image keys to make a video of; render to .png "
                                           "for a trajectory plot")
                    _plot_low_dim(ds, episode, header, staging)
                elif kind == ".png":
                    step_every = every or max(1, math.ceil(length / cfg.max_frames))
                    tiles = [_tile(f, t, cfg) for t, f in _iter_frames(ds, episode, keys, _steps(length, step_every))]
                    import imageio.v3 as iio

                    iio.imwrite(staging, _contact_sheet(tiles, header, cfg), extension=".png")
                else:
                    _write_mp4(ds, episode, keys, every or 1, length, cfg, staging)
                staging.rename(staging.with_name(staging.name[: -len(kind)]))
            finally:
                staging.unlink(missing_ok=True)
    return output


def _write_mp4(ds: ZarrDataset, episode: int, keys: list[str], every: int, length: int, cfg: RenderConfig,
               out: Path) -> None:
    import imageio

    fps = cfg.fps or ds.schema.fps / every
    steps = list(range(0, length, every))
    writer = imageio.get_writer(out, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                macro_block_size=1, ffmpeg_log_level="error", pixelformat="yuv420p")
    try:
        for t, frames in _iter_frames(ds, episode, keys, steps):
            tile = _tile(frames, t, cfg)
            h, w = tile.shape[:2]
            even = np.full((h + h % 2, w + w % 2, 3), _BACKGROUND, np.uint8)  # yuv420p needs even sizes
            even[:h, :w] = tile
            writer.append_data(even)
    finally:
        writer.close()
