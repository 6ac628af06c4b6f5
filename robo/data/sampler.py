"""Sequence sampler: observation history + action chunk windows, padded at episode edges.

For every step ``t`` of every selected episode, one sample holds observations at ``t-n_obs+1 .. t`` and actions at
``t-n_obs+1 .. t-n_obs+horizon`` (Diffusion Policy's alignment: the chunk starts with the oldest observation, the
action to execute now is at index ``n_obs-1``). Indices outside the episode are clamped to its first or last
step, i.e. edges are padded by repeating the boundary frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robo.data.schema import ACTION_KEY, DatasetError
from robo.data.store import ZarrDataset


@dataclass
class SamplerConfig:
    obs_keys: tuple[str, ...]  # observation keys fed to the policy
    n_obs: int = 2  # observation history length
    horizon: int = 16  # predicted action chunk length
    in_memory: bool = True  # load the selected keys into RAM once (far faster than random zarr reads)


def split_episodes(n_episodes: int, val_ratio: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split episode indices into train / validation, by episode so no window straddles the split."""
    if not 0.0 <= val_ratio < 1.0:
        raise DatasetError(f"val_ratio must be in [0, 1), got {val_ratio}")
    order = np.random.default_rng(seed).permutation(n_episodes)
    n_val = int(round(n_episodes * val_ratio))
    if val_ratio > 0 and n_val == 0 and n_episodes > 1:
        n_val = 1
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class SequenceSampler:
    def __init__(self, dataset: ZarrDataset, config: SamplerConfig, episodes: np.ndarray | None = None):
        missing = [k for k in config.obs_keys if k not in dataset.schema.obs]
        if missing:
            raise DatasetError(f"observation keys {missing} are not in {dataset.path} (it has {sorted(dataset.schema.obs)})")
        if config.n_obs < 1 or config.horizon < config.n_obs:
            raise DatasetError(f"need 1 <= n_obs <= horizon, got n_obs={config.n_obs}, horizon={config.horizon}")
        self.config = config
        self.episodes = np.arange(dataset.n_episodes) if episodes is None else np.asarray(episodes)
        if len(self.episodes) == 0:
            raise DatasetError(f"no episodes selected from {dataset.path}; record some or lower val_ratio")
        ends = dataset.episode_ends
        starts = np.concatenate([[0], ends[:-1]])
        sel_starts, sel_ends = starts[self.episodes], ends[self.episodes]
        # One sample per step of the selected episodes, remembering its episode bounds for edge clamping.
        self._t = np.concatenate([np.arange(s, e) for s, e in zip(sel_starts, sel_ends)])
        lengths = sel_ends - sel_starts
        self._lo = np.repeat(sel_starts, lengths)
        self._hi = np.repeat(sel_ends - 1, lengths)
        self._obs_offsets = np.arange(-config.n_obs + 1, 1)
        self._act_offsets = np.arange(-config.n_obs + 1, -config.n_obs + 1 + config.horizon)
        keys = list(config.obs_keys) + [ACTION_KEY]
        self._dataset = dataset
        self._data = dataset.load(keys) if config.in_memory else {k: dataset.array(k) for k in keys}

    def __len__(self) -> int:
        return len(self._t)

    def _indices(self, items: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        idx = self._t[items, None] + offsets[None, :]
        return np.clip(idx, self._lo[items, None], self._hi[items, None])

    def _gather(self, key: str, idx: np.ndarray) -> np.ndarray:
        source = self._data[key]
        if isinstance(source, np.ndarray):
            return source[idx]
        # From disk: read each window's contiguous span once.
        out = [np.asarray(source[int(row.min()): int(row.max()) + 1])[row - row.min()] for row in idx]
        return np.stack(out)

    def get_batch(self, items: np.ndarray) -> dict[str, np.ndarray | dict[str, np.ndarray]]:
        """Samples ``items`` as ``{"obs": {key: (B, n_obs, ...)}, "action": (B, horizon, A)}``."""
        items = np.asarray(items)
        obs_idx, act_idx = self._indices(items, self._obs_offsets), self._indices(items, self._act_offsets)
        return {
            "obs": {k: self._gather(k, obs_idx) for k in self.config.obs_keys},
            "action": self._gather(ACTION_KEY, act_idx),
        }

    def __getitem__(self, item: int) -> dict:
        batch = self.get_batch(np.array([item]))
        return {"obs": {k: v[0] for k, v in batch["obs"].items()}, "action": batch["action"][0]}

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict:
        return self.get_batch(rng.integers(0, len(self), size=batch_size))

    def fit_normalizer(self, modes: dict | None = None):
        """A normaliser for the observation keys and the action, fitted on this sampler's episodes."""
        from policies.normalizer import Normalizer

        specs = self._dataset.schema.array_specs()
        data = {}
        for key in list(self.config.obs_keys) + [ACTION_KEY]:
            source = self._data[key]
            if specs[key].is_image:  # fixed-range modes need only the dtype and channel count
                data[key] = np.asarray(source[:1])
            else:
                data[key] = np.asarray(source if isinstance(source, np.ndarray) else source[: self._dataset.n_steps])[self._t]
        return Normalizer.fit(data, modes)
