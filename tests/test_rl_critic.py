"""Chunk-level transitions from a real dataset on disk, and the IQL critic against closed-form values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robo.data.schema import ArraySpec, DatasetSchema, EpisodeInfo
from robo.data.store import ZarrDataset
from robo.rl.critic import CriticMismatch, IQLConfig, IQLCritic
from robo.rl.transitions import ChunkTransitions, DegenerateDataError, TransitionConfig, load_offline_data

torch.set_num_threads(1)


def write_dataset(path, episodes):
    """episodes: list of (length, success_at or None, truncated)."""
    schema = DatasetSchema(obs={"eef_pos": ArraySpec((3,), "float32")}, action=ArraySpec((2,), "float32"),
                           fps=20.0, task="Toy")
    ds = ZarrDataset.create(path, schema)
    for i, (length, success_at) in enumerate(episodes):
        t = np.arange(length, dtype=np.float32)
        success = np.zeros(length, bool)
        terminal = np.zeros(length, bool)
        truncated = np.zeros(length, bool)
        if success_at is not None:
            success[success_at] = terminal[success_at] = True
        else:
            truncated[-1] = True
        ds.append_episode({"eef_pos": np.stack([t, t * 0 + i, t * 0], 1), "action": np.stack([t, -t], 1),
                           "reward": success.astype(np.float32), "terminal": terminal, "truncated": truncated,
                           "success": success, "timestamp": t / 20.0},
                          EpisodeInfo(source="scripted", success=success_at is not None))
    ds.close()
    return path


def test_chunk_rewards_discounts_and_bootstrap(tmp_path):
    path = write_dataset(tmp_path / "d.zarr", [(5, 4), (6, None)])
    data = load_offline_data(path, TransitionConfig(gamma=0.5, chunk=2))
    c = data.chunks
    ep0 = c.episode == 0
    # success at step 4: the chunk starting at 3 earns 0.5 * 1, the one at 4 earns 1; both terminal
    assert np.allclose(c.reward[ep0], [0, 0, 0, 0.5, 1.0])
    assert c.terminal[ep0].tolist() == [False, False, False, True, True]
    assert np.allclose(c.discount[ep0], [0.25, 0.25, 0.25, 0.25, 0.5])
    # the truncated episode never terminates: its last chunks bootstrap from the last stored observation
    ep1 = c.episode == 1
    assert not c.terminal[ep1].any() and c.reward[ep1].sum() == 0
    assert c.next_index[ep1][-1] == c.index[ep1][-1]  # one-step chunk at the end: next obs not recorded
    # the executed chunk is padded with the episode's last action
    last = c.action[ep0][-1].reshape(2, 2)
    assert np.allclose(last[0], last[1])
    assert c.is_start.sum() == 2 and data.success_rate == 0.5


def test_success_only_and_flagless_data_are_refused(tmp_path):
    path = write_dataset(tmp_path / "s.zarr", [(4, 3), (5, 4)])
    with pytest.raises(DegenerateDataError, match="all 2 episodes succeed"):
        load_offline_data(path, TransitionConfig())
    path = write_dataset(tmp_path / "f.zarr", [(4, None)])
    with pytest.raises(DegenerateDataError, match="no episode succeeds"):
        load_offline_data(path, TransitionConfig())


def chain_mdp(n_states: int = 5, gamma_c: float = 0.9, copies: int = 40) -> ChunkTransitions:
    """States 0..N-1 on a line. Action +1 moves right (reward 1 and terminal when leaving N-1); action -1 ends the
    episode with reward 0. The behaviour takes each with probability 1/2, so with expectile tau,
    V(k) = tau * Q(k, +1) and Q(k, +1) = gamma * V(k+1), Q(N-1, +1) = 1: Q(k, +1) = (gamma tau)^(N-1-k)."""
    s, a, r, nxt, term = [], [], [], [], []
    for k in range(n_states):
        for act in (1.0, -1.0):
            s.append([k / n_states])
            a.append([act])
            last = k == n_states - 1
            r.append(1.0 if (act > 0 and last) else 0.0)
            nxt.append([(k + 1) / n_states if act > 0 and not last else k / n_states])
            term.append(act < 0 or last)
    rep = lambda x, dt=np.float32: np.tile(np.asarray(x, dt), (copies,) + (1,) * (np.asarray(x).ndim - 1))  # noqa: E731
    n = len(r) * copies
    return ChunkTransitions(rep(s), rep(a), rep(r), np.full(n, gamma_c, np.float32), rep(term, bool), rep(nxt),
                            np.arange(n), np.arange(n), np.zeros(n, int), np.zeros(n, bool))


def test_iql_recovers_closed_form_values(tmp_path):
    tau, gamma, n = 0.7, 0.9, 5
    critic = IQLCritic(1, 1, IQLConfig(hidden=(32, 32), expectile=tau, steps=1200, batch_size=128, lr=2e-3,
                                       polyak=0.02, progress=False))
    critic.fit(chain_mdp(n, gamma))
    s = torch.arange(n, dtype=torch.float32)[:, None] / n
    with torch.no_grad():
        q_right = critic.q(s, torch.ones(n, 1))
        q_stop = critic.q(s, -torch.ones(n, 1))
        v = critic.value(s)
    want = torch.tensor([(gamma * tau) ** (n - 1 - k) for k in range(n)])
    assert torch.allclose(q_right, want, atol=0.05), (q_right, want)
    assert torch.allclose(q_stop, torch.zeros(n), atol=0.05)
    assert torch.allclose(v, tau * want, atol=0.05)
    # saved with its dataset's fingerprint: loading against another dataset is refused
    critic.save(tmp_path / "critic", "abc")
    assert torch.equal(IQLCritic.load(tmp_path / "critic", "abc").q(s, torch.ones(n, 1)), critic.q(s, torch.ones(n, 1)))
    with pytest.raises(CriticMismatch, match="another dataset"):
        IQLCritic.load(tmp_path / "critic", "def")
