"""The OPE gate: accept an update only if J_new - J_old >= delta * |J_old|, otherwise restore the last accepted
weights (and optimiser state) exactly.

RL-100's paper gate. Its public code only moved the PPO anchor and never rolled back; a reimplementation found the
ungated policy drifting down while the gated one held, so here a rejection restores the accepted tensors bit for
bit (``load_state_dict`` copies stored clones; tested). ``enabled=False`` accepts everything (the ungated run
reported beside the gated one) but still logs what the gate would have said.

Every decision is one JSON line in ``decisions.jsonl`` (step, J_old, J_new, spread, threshold, accepted) and
TensorBoard scalars; ``on_best`` is called whenever an accepted policy has the best OPE score so far (the caller
saves that checkpoint).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from robo.rl.ope import OPEResult


@dataclass
class GateConfig:
    delta: float = 0.05  # relative improvement required: J_new - J_old >= delta * |J_old| (RL-100: 0.05)
    enabled: bool = True  # False: accept every update (the ungated comparison run); decisions are still logged


@dataclass
class Decision:
    step: int  # optimiser round at which the gate was asked
    j_old: float  # OPE value of the last accepted policy
    j_new: float  # OPE value of the candidate
    spread_new: float  # the candidate estimate's standard error
    threshold: float  # J_old + delta * |J_old|
    accepted: bool  # the candidate became the accepted policy
    would_accept: bool  # what the gate said (differs from accepted only when disabled)
    best: bool  # the candidate is the best accepted so far


def gate_threshold(j_old: float, delta: float) -> float:
    """The OPE value a candidate must reach to replace a policy scored ``j_old``: J_old + delta * |J_old|."""
    return j_old + delta * abs(j_old)


class Gate:
    def __init__(self, policy: torch.nn.Module, optimizer: torch.optim.Optimizer | None, initial: OPEResult,
                 config: GateConfig, log_dir: str | Path, writer: Any = None,
                 on_best: Callable[[Decision], None] | None = None):
        self.policy, self.optimizer, self.config = policy, optimizer, config
        self.j_accepted = initial.value
        self.j_best = initial.value
        self.log_path = Path(log_dir) / "decisions.jsonl"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.writer, self.on_best = writer, on_best
        self.decisions: list[Decision] = []
        self._snapshot()

    def _snapshot(self) -> None:
        self._weights = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
        self._opt_state = copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None

    def restore(self) -> None:
        """Put the last accepted weights (and optimiser state) back, bit for bit."""
        self.policy.load_state_dict(self._weights)
        if self.optimizer is not None and self._opt_state is not None:
            self.optimizer.load_state_dict(copy.deepcopy(self._opt_state))

    @property
    def accepted_weights(self) -> dict[str, torch.Tensor]:
        return self._weights

    def decide(self, step: int, result: OPEResult) -> Decision:
        threshold = gate_threshold(self.j_accepted, self.config.delta)
        would = result.value >= threshold
        accept = would or not self.config.enabled
        best = accept and result.value > self.j_best
        decision = Decision(step, self.j_accepted, result.value, result.spread, threshold, accept, would, best)
        if accept:
            self.j_accepted = result.value
            self._snapshot()
            if best:
                self.j_best = result.value
        else:
            self.restore()
        self.decisions.append(decision)
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(asdict(decision)) + "\n")
        if self.writer is not None:
            self.writer.add_scalar("gate/j_new", decision.j_new, step)
            self.writer.add_scalar("gate/j_accepted", self.j_accepted, step)
            self.writer.add_scalar("gate/accepted", float(accept), step)
        if best and self.on_best is not None:
            self.on_best(decision)
        return decision
