"""The dynamics ensemble fits a known linear system; elites are the lowest validation losses; disagreement grows
off the data."""

from __future__ import annotations

import numpy as np
import torch

from robo.rl.dynamics import DynamicsConfig, DynamicsEnsemble
from robo.rl.transitions import StepTransitions

torch.set_num_threads(1)


def linear_system(n: int = 2000, seed: int = 0):
    rng = np.random.default_rng(seed)
    A = np.array([[0.9, 0.1], [-0.1, 0.95]], np.float32)
    B = np.array([[0.5], [0.2]], np.float32)
    s = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    a = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    nxt = s @ A.T + a @ B.T
    reward = (s[:, 0] > 0.5).astype(np.float32)
    return StepTransitions(s, a, nxt, reward, np.zeros(n, bool), np.ones(n, bool)), A, B


def test_ensemble_fits_a_linear_system():
    data, A, B = linear_system()
    model = DynamicsEnsemble(2, 1, DynamicsConfig(members=4, elites=3, hidden=(64, 64), steps=800, lr=3e-3,
                                                  progress=False))
    stats = model.fit(data)
    assert len(model.elite_idx) == 3
    assert sorted(model.val_losses)[:3] == sorted(np.asarray(model.val_losses)[model.elite_idx.numpy()].tolist())
    rng = np.random.default_rng(5)
    s = torch.as_tensor(rng.uniform(-0.9, 0.9, (256, 2)).astype(np.float32))
    a = torch.as_tensor(rng.uniform(-0.9, 0.9, (256, 1)).astype(np.float32))
    nxt, _, term_p, dis_in = model.step(s, a, torch.Generator().manual_seed(0))
    truth = s @ torch.as_tensor(A).T + a @ torch.as_tensor(B).T
    err = (nxt - truth).abs().mean()
    assert err < 0.03, (err, stats)  # the deltas span about +-1
    assert float(term_p.max()) < 0.1
    # far outside the data, the members disagree more
    _, _, _, dis_out = model.step(s * 6, a * 6, torch.Generator().manual_seed(0))
    assert dis_out.mean() > 3 * dis_in.mean()
    # common random numbers: the same generator seed picks the same elites
    again = model.step(s, a, torch.Generator().manual_seed(0))[0]
    assert torch.equal(again, nxt)
