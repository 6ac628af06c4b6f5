"""Data-parallel training under torchrun: identical replicas, averaged gradients, one writer.

Every rank builds the policy from the same seed and then takes rank 0's parameters, buffers and EMA by broadcast,
so the replicas are identical by construction, not by luck. After each backward the gradients of all ranks are
summed in one coalesced all-reduce and divided by the number of contributing slices; every replica then takes the
same optimiser step, so they stay identical (the CI test checks that bit for bit). Rank 0 alone logs, evaluates
and saves, between two barriers, under a collective time-out long enough for a simulated evaluation.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch


class Distributed:
    """The torchrun environment (RANK / WORLD_SIZE / LOCAL_RANK); a no-op on a single process."""

    def __init__(self, device: torch.device, timeout_min: float = 60.0):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.dist: Any = None
        if self.world > 1:
            import torch.distributed as dist

            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_min))
            self.dist = dist

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """One GPU per rank: cuda -> cuda:LOCAL_RANK."""
        if device.type == "cuda" and self.world > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def broadcast_policy(self, policy: Any) -> None:
        """Every rank takes rank 0's parameters, buffers and EMA shadow weights."""
        if self.world == 1:
            return
        tensors = [*policy.parameters(), *policy.buffers()]
        if getattr(policy, "ema", None) is not None:
            tensors += list(policy.ema.shadow_params)
        with torch.no_grad():
            for tensor in tensors:
                self.dist.broadcast(tensor.data, src=0)

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """All-reduce (sum) every gradient in one flat buffer: one collective per step, not one per tensor."""
        if self.world == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def replicas_identical(self, policy: Any) -> bool:
        """True when every rank holds bit-identical parameters and EMA weights (compared by SHA-256)."""
        if self.world == 1:
            return True
        import hashlib

        digest = hashlib.sha256()
        tensors = [*policy.parameters()] + (list(policy.ema.shadow_params) if getattr(policy, "ema", None) else [])
        for tensor in tensors:
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        gathered: list[Any] = [None] * self.world
        self.dist.all_gather_object(gathered, digest.hexdigest())
        return len(set(gathered)) == 1

    def barrier(self) -> None:
        if self.world > 1:
            self.dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            self.dist.destroy_process_group()
