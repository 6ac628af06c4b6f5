"""The demonstration store: Diffusion Policy's zarr layout with an atomic per-episode commit.

Layout (readable by Diffusion Policy / RL-100 loaders when written with ``zarr_format=2``)::

    <root>/            attrs["robo"] = DatasetSchema JSON
      data/<key>       every step of every episode, concatenated along time (axis 0)
      meta/episode_ends   int64, cumulative end index of each committed episode
      meta/            attrs["episodes"] = [EpisodeInfo JSON, ...]

Crash safety. zarr's LocalStore writes every object to a temporary file and renames it into place, so each chunk
and each metadata document is either old or new, never half-written. On top of that, ``meta/episode_ends`` is the
commit point. While an episode records, its steps are streamed as chunk files *past the arrays' recorded shape*
(through a view of each array with a larger shape that is never saved), so the arrays on disk keep ending exactly
at ``episode_ends[-1]`` and zarr-2 readers that insist on that (Diffusion Policy's ReplayBuffer) open the store
even after a crash mid-episode. The commit then sizes each array to the new end, writes the episode record, and
only then extends ``episode_ends``. Whatever a crash leaves past the last commit is a *torn tail* (``TornTail``):
chunk files past the shape (invisible to every reader), or, if the crash lands inside the few-millisecond commit,
arrays longer than ``episode_ends[-1]``, an extra episode record, an ``episode_ends`` entry whose chunk never
landed. Our readers ignore it; ``robo data check`` reports it (and fails on a zarr-2 store whose zarr-2 readers
would refuse it); ``robo data repair`` and opening for append drop it.
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import zarr
from zarr.core.array import Array, AsyncArray

from robo.data.schema import ACTION_KEY, ArraySpec, DatasetError, DatasetSchema, EpisodeInfo
from robo.data.torn_tail import TornTail, chunk_files_past

log = logging.getLogger(__name__)

Compression = Literal["lz4", "zstd", "none"]
# Chunks of ~4 MiB: a few 640x480 frames, 64 84x84 frames, 1024 low-dim steps. Recording large frames one per
# chunk cost ~1.5x more per step (one file write and rename each); image chunks stay short enough that a
# 16-step window read from disk touches at most two.
_CHUNK_TARGET_BYTES = 4 << 20
_MAX_CHUNK_STEPS = 1024
_MAX_IMAGE_CHUNK_STEPS = 64
_LOCK_NAME = ".robo-writer.lock"
# zarr skips chunks equal to the fill value by default, which would make a deleted chunk file indistinguishable
# from a run of zeros. Every chunk of a robo dataset is written, so a missing one is detectable damage.
# The setting is read when an array object is made, so arrays are opened and created inside this context.
_EVERY_CHUNK = {"array.write_empty_chunks": True}


def chunk_steps(spec: ArraySpec) -> int:
    """Time-chunk length for an array: about 4 MiB per chunk, at least one step."""
    step_bytes = max(1, int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize)
    cap = _MAX_IMAGE_CHUNK_STEPS if spec.is_image else _MAX_CHUNK_STEPS
    return int(np.clip(_CHUNK_TARGET_BYTES // step_bytes, 1, cap))


def _compressor(spec: ArraySpec, compression: Compression, zarr_format: int) -> dict[str, Any]:
    """Blosc settings: lz4 keeps recording cheap on the control thread; zstd packs tighter for archives.

    Shuffle choice, measured on 640x480 sim renders with camera-like noise (sigma 1.5): for uint8 images bit
    shuffle gives 1.6-1.8x at 0.3-0.4 ms/frame where byte or no shuffle give ~1.05x at ~0.9 ms; multi-byte
    values (depth in mm, floats) compress best with byte shuffle.
    """
    if compression == "none":
        return {"compressors": None}
    itemsize = np.dtype(spec.dtype).itemsize
    clevel = 3 if compression == "zstd" else 1
    if zarr_format == 2:
        from numcodecs import Blosc

        return {"compressors": Blosc(cname=compression, clevel=clevel,
                                     shuffle=Blosc.BITSHUFFLE if itemsize == 1 else Blosc.SHUFFLE)}
    from zarr.codecs import BloscCodec

    return {"compressors": BloscCodec(cname=compression, clevel=clevel, typesize=itemsize,
                                      shuffle="bitshuffle" if itemsize == 1 else "shuffle")}


def _open_group(path: Path, mode: str) -> zarr.Group:
    if not path.exists():
        raise DatasetError(f"{path} does not exist; record one with `robo collect` or check the path")
    if not ((path / "zarr.json").exists() or (path / ".zgroup").exists()):
        raise DatasetError(f"{path} is not a zarr store (no zarr.json or .zgroup); point at the dataset folder")
    try:
        with zarr.config.set(_EVERY_CHUNK):
            return zarr.open_group(zarr.storage.LocalStore(path, read_only=(mode == "r")), mode="r" if mode == "r" else "r+")
    except Exception as exc:  # zarr raises many types for unreadable metadata
        raise DatasetError(f"{path}: zarr metadata is unreadable ({type(exc).__name__}: {exc})") from None


def committed_episode_ends(raw_ends: np.ndarray) -> np.ndarray:
    """Longest prefix of ``episode_ends`` that is a valid commit record.

    Entries must be strictly increasing and positive; anything from the first entry that is not (the fill value
    of an ``episode_ends`` resize whose chunk never landed) is torn tail.
    """
    ends = np.asarray(raw_ends, dtype=np.int64)
    prev = 0
    for i, end in enumerate(ends):
        if end <= prev:
            return ends[:i]
        prev = int(end)
    return ends


def _staging_view(arr: zarr.Array, n_steps: int) -> zarr.Array:
    """``arr`` as if it were ``n_steps`` long, without saving that shape: writes through it land as chunk files
    past the recorded shape, which no reader looks at until a commit resizes the array over them."""
    inner = arr.async_array
    shape = (n_steps, *arr.shape[1:])
    # The view keeps the array's own config (write_empty_chunks above all: an all-zero chunk must still land);
    # should zarr rename that attribute, the default config is built under the same setting.
    with zarr.config.set(_EVERY_CHUNK):
        return Array(AsyncArray(metadata=inner.metadata.update_shape(shape), store_path=inner.store_path,
                                config=getattr(inner, "_config", None)))


@dataclass
class _Layout:
    """The raw state of a store, before deciding what is committed."""

    schema: DatasetSchema
    arrays: dict[str, zarr.Array]
    raw_ends: np.ndarray
    raw_episodes: list[dict[str, Any]]


def _read_layout(root: zarr.Group, path: Path) -> _Layout:
    attrs = dict(root.attrs)
    if "robo" not in attrs:
        hint = "import it with `robo data import-dp`" if "meta" in root and "data" in root else "create one with `robo collect`"
        raise DatasetError(f"{path} is a zarr store but not a robo dataset (no 'robo' metadata); {hint}")
    try:
        schema = DatasetSchema.from_json(attrs["robo"])
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"{path}: dataset metadata is malformed ({exc}); it cannot be opened") from None
    if "data" not in root or "meta" not in root or "episode_ends" not in root["meta"]:
        raise DatasetError(f"{path}: missing data/ or meta/episode_ends; the store is damaged beyond repair")
    data = root["data"]
    arrays = {}
    for key, spec in schema.array_specs().items():
        if key not in data:
            raise DatasetError(f"{path}: array data/{key} is missing; the store is damaged beyond repair")
        with zarr.config.set(_EVERY_CHUNK):
            arr = data[key]
        if tuple(arr.shape[1:]) != spec.shape or np.dtype(arr.dtype) != np.dtype(spec.dtype):
            raise DatasetError(f"{path}: data/{key} is {arr.shape[1:]} {arr.dtype}, schema says {spec.shape} {spec.dtype}")
        arrays[key] = arr
    meta = root["meta"]
    return _Layout(schema, arrays, np.asarray(meta["episode_ends"][:]), list(meta.attrs.get("episodes", [])))


class ZarrDataset:
    """A demonstration dataset on disk. Open with :meth:`create` or :meth:`open`; see the module docstring."""

    def __init__(self, path: Path, root: zarr.Group, layout: _Layout, writable: bool, allow_truncated: bool = False):
        self.path = path
        self._root = root
        self.schema = layout.schema
        self._arrays = layout.arrays
        self._writable = writable
        self._ends = committed_episode_ends(layout.raw_ends)
        # The last commit record, before any damage below trims what is readable: the torn tail is what lies past
        # it, so damage to committed episodes never counts as tail (nor the other way round).
        self._last_commit = (len(self._ends), int(self._ends[-1]) if len(self._ends) else 0)
        # The commit sizes every array before it extends episode_ends, so a committed end past an array's length
        # is damage (a deleted or truncated file), not an interrupted recording.
        short_key, data_len = min(((k, int(a.shape[0])) for k, a in self._arrays.items()), key=lambda kv: kv[1])
        if len(self._ends) and self._ends[-1] > data_len:
            if not allow_truncated:
                raise DatasetError(f"{path}: data/{short_key} has {data_len} steps but committed episodes end at step "
                                   f"{self._ends[-1]}; the store is truncated: `robo data repair` drops the damaged episodes")
            self._ends = self._ends[self._ends <= data_len]
        self._episodes = [EpisodeInfo.from_json(e) for e in layout.raw_episodes[: len(self._ends)]]
        if len(self._episodes) < len(self._ends) and allow_truncated:
            self._ends = self._ends[: len(self._episodes)]
        elif len(self._episodes) < len(self._ends):
            raise DatasetError(f"{path}: {len(self._ends)} committed episodes but only {len(self._episodes)} episode "
                               "records; run `robo data repair` to drop the unrecorded ones")
        self._raw_end_count = len(layout.raw_ends)
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: str | os.PathLike, schema: DatasetSchema, *, zarr_format: int = 3,
               compression: Compression = "lz4") -> ZarrDataset:
        """Create an empty dataset. Refuses to touch an existing path."""
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise DatasetError(f"{path} already exists and is not empty; choose a new path or append to it")
        if zarr_format not in (2, 3):
            raise DatasetError(f"zarr_format must be 2 or 3, got {zarr_format}")
        root = zarr.open_group(zarr.storage.LocalStore(path), mode="w", zarr_format=zarr_format)
        data = root.create_group("data")
        for key, spec in schema.array_specs().items():
            data.create_array(key, shape=(0, *spec.shape), chunks=(chunk_steps(spec), *spec.shape),
                              dtype=spec.dtype, fill_value=0, **_compressor(spec, compression, zarr_format))
        meta = root.create_group("meta")
        meta.create_array("episode_ends", shape=(0,), chunks=(4096,), dtype="int64", fill_value=0)
        meta.attrs["episodes"] = []
        # Written last: a store is only a dataset once its schema is there.
        root.attrs["robo"] = schema.to_json()
        return cls.open(path, mode="a")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: Literal["r", "a"] = "r", *, allow_truncated: bool = False) -> ZarrDataset:
        """Open for reading (``"r"``) or appending (``"a"``: takes the writer lock and drops any torn tail).

        ``allow_truncated`` (for repair only) treats committed episodes that run past a truncated array as torn.
        """
        path = Path(path)
        root = _open_group(path, mode)
        ds = cls(path, root, _read_layout(root, path), writable=(mode == "a"), allow_truncated=allow_truncated)
        if mode == "a":
            ds._take_lock()
            ds._drop_torn_tail()
        return ds

    def _take_lock(self) -> None:
        # flock is released by the kernel when the process dies, so a crashed recorder never leaves it held.
        fd = os.open(self.path / _LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatasetError(f"{self.path} is open for writing by another process; stop it first") from None
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> ZarrDataset:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    @property
    def zarr_format(self) -> int:
        return int(self._root.metadata.zarr_format)

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends.copy()

    @property
    def episodes(self) -> list[EpisodeInfo]:
        return list(self._episodes)

    @property
    def keys(self) -> list[str]:
        return list(self._arrays)

    def episode_bounds(self, index: int) -> tuple[int, int]:
        if not -self.n_episodes <= index < self.n_episodes:
            raise DatasetError(f"episode {index} does not exist; the dataset has {self.n_episodes} episodes")
        index %= self.n_episodes
        start = int(self._ends[index - 1]) if index > 0 else 0
        return start, int(self._ends[index])

    def array(self, key: str) -> zarr.Array:
        if key not in self._arrays:
            raise DatasetError(f"no key '{key}' in {self.path}; it has {sorted(self._arrays)}")
        return self._arrays[key]

    def episode(self, index: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        start, end = self.episode_bounds(index)
        return {k: self.array(k)[start:end] for k in (keys or self.keys)}

    def load(self, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Read the committed steps of ``keys`` (default all) into memory."""
        return {k: self.array(k)[: self.n_steps] for k in (keys or self.keys)}

    def iter_episodes(self, keys: list[str] | None = None) -> Iterator[tuple[EpisodeInfo, dict[str, np.ndarray]]]:
        for i, info in enumerate(self._episodes):
            yield info, self.episode(i, keys)

    # ------------------------------------------------------------------ writing
    def _require_writable(self) -> None:
        if not self._writable:
            raise DatasetError(f"{self.path} was opened read-only; open it with mode='a' to write")

    def truncate_episodes(self, n_episodes: int) -> None:
        """Keep only the first ``n_episodes`` committed episodes (repair uses it to cut at damage)."""
        self._require_writable()
        if n_episodes < self.n_episodes:
            self._ends = self._ends[:n_episodes]
            self._episodes = self._episodes[:n_episodes]
            self._drop_torn_tail()

    def torn_tail(self) -> TornTail:
        """What lies on disk past the committed episodes (see :class:`TornTail`)."""
        count, end = self._last_commit
        orphans = sum(len(chunk_files_past(a, self.path / "data" / k, max(end, int(a.shape[0]))))
                      for k, a in self._arrays.items())
        return TornTail(steps=max([int(a.shape[0]) - end for a in self._arrays.values()] + [0]),
                        end_entries=max(0, self._raw_end_count - count),
                        records=max(0, len(self._root["meta"].attrs.get("episodes", [])) - count),
                        chunk_files=orphans)

    def _drop_torn_tail(self) -> TornTail:
        """Make the on-disk state equal to the committed state (after a crash of an earlier writer); returns what
        it dropped."""
        tail = self.torn_tail()
        n = self.n_steps
        damaged = self._last_commit != (self.n_episodes, n)  # repair cut committed episodes too
        if not tail and not damaged:
            return tail
        if tail:
            log.warning("%s: dropping a torn tail left by an interrupted recording (%s)", self.path, tail.describe())
        meta = self._root["meta"]
        # episode_ends first: once it ends at the committed episodes, nothing past them can read as committed.
        ends_arr = meta["episode_ends"]
        if damaged or self._raw_end_count != self.n_episodes:
            ends_arr.resize((self.n_episodes,))
            if self.n_episodes:
                ends_arr[:] = self._ends
        meta.attrs["episodes"] = [e.to_json() for e in self._episodes]
        for key, arr in self._arrays.items():
            if arr.shape[0] != n:
                arr.resize((n, *arr.shape[1:]))  # zarr deletes the chunk files wholly past the new shape
            for orphan in chunk_files_past(arr, self.path / "data" / key, n):
                orphan.unlink(missing_ok=True)
        self._raw_end_count = self.n_episodes
        self._last_commit = (self.n_episodes, n)
        return tail

    def new_episode(self) -> EpisodeWriter:
        self._require_writable()
        return EpisodeWriter(self)

    def append_episode(self, steps: dict[str, np.ndarray], info: EpisodeInfo) -> int:
        """Append a whole episode given as arrays with a leading time axis; returns its index."""
        writer = self.new_episode()
        writer.add_steps(steps)
        return writer.commit(info)

    def _commit(self, length: int, info: EpisodeInfo) -> int:
        info.length = length
        new_end = self.n_steps + length
        meta = self._root["meta"]
        meta.attrs["episodes"] = [e.to_json() for e in self._episodes] + [info.to_json()]
        ends_arr = meta["episode_ends"]
        ends_arr.resize((self.n_episodes + 1,))
        ends_arr[self.n_episodes] = new_end  # the commit point
        self._ends = np.append(self._ends, np.int64(new_end))
        self._episodes.append(info)
        self._raw_end_count = self.n_episodes
        self._last_commit = (self.n_episodes, new_end)
        return self.n_episodes - 1


class EpisodeWriter:
    """Streams one episode's steps into the store past the committed end; ``commit`` makes them visible.

    Steps are buffered per key and flushed in whole, chunk-aligned pieces so each chunk is compressed once;
    memory stays bounded by one chunk per key however long the episode is.
    """

    def __init__(self, dataset: ZarrDataset):
        self._ds = dataset
        self._specs = dataset.schema.array_specs()
        self._start = dataset.n_steps
        self._length = 0
        self._flushed_per_key = {k: 0 for k in self._specs}
        self._buffers: dict[str, list[np.ndarray]] = {k: [] for k in self._specs}
        self._pending = {k: 0 for k in self._specs}  # buffered steps per key
        self._chunk = {k: int(dataset.array(k).chunks[0]) for k in self._specs}
        self._open = True

    def __len__(self) -> int:
        return self._length

    def add_step(self, obs: dict[str, Any], action: Any, *, reward: float = 0.0, terminal: bool = False,
                 truncated: bool = False, success: bool = False, timestamp: float) -> None:
        step = dict(obs)
        step.update({ACTION_KEY: action, "reward": reward, "terminal": terminal, "truncated": truncated,
                     "success": success, "timestamp": timestamp})
        self._append({k: np.asarray(v)[None] for k, v in step.items()}, 1)

    def add_steps(self, steps: dict[str, np.ndarray]) -> None:
        """Add many steps at once; bookkeeping keys (reward, ...) default to zeros/False if absent."""
        lengths = {np.asarray(v).shape[0] for v in steps.values()}
        if len(lengths) != 1:
            raise DatasetError(f"arrays have different lengths {sorted(lengths)}; every key needs one entry per step")
        (n,) = lengths
        full = {k: np.asarray(v) for k, v in steps.items()}
        for key, spec in self._specs.items():
            if key not in full and key in ("reward", "terminal", "truncated", "success", "timestamp"):
                full[key] = np.zeros((n,), dtype=spec.dtype)
        self._append(full, n)

    def _append(self, block: dict[str, np.ndarray], n: int) -> None:
        if not self._open:
            raise DatasetError("this episode was already committed or discarded; start a new one")
        missing, extra = set(self._specs) - set(block), set(block) - set(self._specs)
        if missing or extra:
            raise DatasetError(f"step keys do not match the dataset (missing {sorted(missing)}, unexpected {sorted(extra)})")
        checked = {}
        for key, spec in self._specs.items():
            value = block[key]
            if tuple(value.shape[1:]) != spec.shape:
                raise DatasetError(f"'{key}' has shape {tuple(value.shape[1:])} per step, dataset expects {spec.shape}")
            if spec.is_float and not np.all(np.isfinite(value)):
                raise DatasetError(f"'{key}' contains NaN or inf at step {self._length}; refusing to record it")
            checked[key] = value.astype(spec.dtype, copy=False)
        for key, value in checked.items():
            self._buffers[key].append(value)
            self._pending[key] += n
        self._length += n
        self._flush(final=False)

    def _flush(self, final: bool) -> None:
        for key, buf in self._buffers.items():
            if not buf:
                continue
            written = self._start + self._flushed_per_key[key]
            end = written + self._pending[key]
            # Flush up to the last chunk boundary, or everything at the end of the episode.
            upto = end if final else (end // self._chunk[key]) * self._chunk[key]
            if upto <= written:
                continue
            block = np.concatenate(buf, axis=0) if len(buf) > 1 else buf[0]
            # Past the recorded shape: the saved array keeps ending at the last commit until this one commits.
            _staging_view(self._ds.array(key), upto)[written:upto] = block[: upto - written]
            rest = block[upto - written:]
            self._buffers[key] = [rest] if len(rest) else []
            self._pending[key] = len(rest)
            self._flushed_per_key[key] += upto - written

    def commit(self, info: EpisodeInfo) -> int:
        """Write the remaining steps and make the episode visible atomically; returns its index."""
        if not self._open:
            raise DatasetError("this episode was already committed or discarded")
        if self._length == 0:
            raise DatasetError("refusing to commit an empty episode")
        self._flush(final=True)
        end = self._start + self._length
        for key in self._specs:
            arr = self._ds.array(key)
            if arr.shape[0] != end:
                arr.resize((end, *arr.shape[1:]))
        self._open = False
        return self._ds._commit(self._length, info)

    def discard(self) -> None:
        """Drop the steps written so far; the committed episodes are untouched (they were never in the shape)."""
        if not self._open:
            return
        for key in self._specs:
            arr = self._ds.array(key)
            for orphan in chunk_files_past(arr, self._ds.path / "data" / key, self._start):
                orphan.unlink(missing_ok=True)
        self._open = False
