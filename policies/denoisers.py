"""Denoiser networks: (noisy action chunk (B, T, A), timestep (B,), obs features (B, F)) -> (B, T, A).

At batch 1 on a CPU a small network's time is dominated by per-op overhead, not FLOPs, so both networks split
conditioning in two: ``condition(cond)`` (observation part, once per predict call) and ``step(x, t, conditioned)``
(per denoising step). The UNet computes every block's FiLM scale/bias with ONE linear layer instead of one per
block. ``forward`` = ``step(x, t, condition(cond))`` and is what training uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DenoiserConfig:
    kind: str = "unet"  # "unet" (temporal 1-D UNet with FiLM) or "mlp" (flattened chunk)
    widths: tuple[int, ...] = (64, 128)  # UNet channels per level (the chunk is halved between levels)
    kernel_size: int = 5  # UNet temporal conv kernel
    blocks_per_level: int = 1  # residual blocks per UNet level (Diffusion Policy uses 2; 1 halves CPU latency)
    groups: int = 8  # GroupNorm groups (must divide every width)
    step_embed_dim: int = 64  # sinusoidal diffusion-step embedding size
    mlp_hidden: int = 256  # MLP denoiser hidden width
    mlp_layers: int = 3  # MLP denoiser hidden layers


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (B,) float timesteps (any real value: consistency models feed scaled log-sigmas)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=-1)


def _batch_timesteps(t: torch.Tensor | float | int, b: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(t, device=device)
    return t.reshape(1).expand(b) if t.ndim == 0 else t


class StepEncoder(nn.Module):
    """Timestep -> Mish(MLP(sinusoidal)), the time half of every conditioning vector."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim), nn.Mish())

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(timestep_embedding(t, self.dim))


class ConvNormAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int):
        super().__init__(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2), nn.GroupNorm(groups, c_out), nn.Mish())


class FiLMBlock(nn.Module):
    """Residual block: conv -> FiLM(scale, bias) -> conv, + (projected) input. FiLM params come from outside."""

    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int):
        super().__init__()
        self.c_out = c_out
        self.conv1 = ConvNormAct(c_in, c_out, kernel, groups)
        self.conv2 = ConvNormAct(c_out, c_out, kernel, groups)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:  # film: (B, 2*c_out)
        scale, bias = film[:, :self.c_out, None], film[:, self.c_out:, None]
        y = torch.addcmul(bias, self.conv1(x), scale)  # one fused op for y*scale + bias
        return self.conv2(y) + self.skip(x)


class Upsample1d(nn.Module):
    """Double the length: a 1x1 conv to 2C channels, interleaved (1-D pixel shuffle). On a CPU this is ~3x faster
    than ConvTranspose1d at batch 1 (whose kernel takes a slow path), and the FiLM blocks after it mix neighbours."""

    def __init__(self, channels: int):
        super().__init__()
        self.proj = nn.Conv1d(channels, 2 * channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        return self.proj(x).reshape(b, c, 2, t).transpose(2, 3).reshape(b, c, 2 * t)


class UNet1D(nn.Module):
    """Temporal UNet over the action chunk (channels = action dims), FiLM-conditioned on obs + step."""

    def __init__(self, action_dim: int, cond_dim: int, cfg: DenoiserConfig):
        super().__init__()
        w, k, g = list(cfg.widths), cfg.kernel_size, cfg.groups
        self.down_factor = 2 ** (len(w) - 1)
        blocks: list[FiLMBlock] = []
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        c_in = action_dim
        for i, c in enumerate(w):
            level = nn.ModuleList()
            for _ in range(cfg.blocks_per_level):
                level.append(FiLMBlock(c_in, c, k, g))
                c_in = c
            self.down.append(level)
            blocks += list(level)
            if i < len(w) - 1:
                self.downsample.append(nn.Conv1d(c, c, 3, 2, 1))
        self.mid = nn.ModuleList([FiLMBlock(w[-1], w[-1], k, g) for _ in range(cfg.blocks_per_level)])
        blocks += list(self.mid)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(w) - 1)):  # each up level fuses the skip of the matching down level
            self.upsample.append(Upsample1d(w[i + 1]))
            level = nn.ModuleList()
            c_in = w[i + 1] + w[i]
            for _ in range(cfg.blocks_per_level):
                level.append(FiLMBlock(c_in, w[i], k, g))
                c_in = w[i]
            self.up.append(level)
            blocks += list(level)
        self.final = nn.Sequential(ConvNormAct(w[0], w[0], k, g), nn.Conv1d(w[0], action_dim, 1))
        self.step_encoder = StepEncoder(cfg.step_embed_dim)
        self.film_sizes = [2 * b.c_out for b in blocks]
        # FiLM(cat(step, obs)) = W_t step + W_c obs: the obs half is computed once per predict call.
        self.film_obs = nn.Linear(max(cond_dim, 1), sum(self.film_sizes))
        self.film_step = nn.Linear(cfg.step_embed_dim, sum(self.film_sizes), bias=False)
        self.cond_dim = cond_dim

    def condition(self, cond: torch.Tensor) -> torch.Tensor:
        if self.cond_dim == 0:
            cond = cond.new_zeros(cond.shape[0], 1)
        return self.film_obs(F.mish(cond))

    def step(self, x: torch.Tensor, t: torch.Tensor | float | int, conditioned: torch.Tensor) -> torch.Tensor:
        b, horizon, _ = x.shape
        t = _batch_timesteps(t, b, x.device)
        film = conditioned + self.film_step(self.step_encoder(t))
        if film.shape[0] != b:  # conditioned once for a batch of 1, reused for many samples
            film = film.expand(b, -1)
        films = iter(torch.split(film, self.film_sizes, dim=1))
        pad = (-horizon) % self.down_factor  # any chunk length works; padded steps are cropped off again
        h = F.pad(x.transpose(1, 2), (0, pad), mode="replicate") if pad else x.transpose(1, 2)
        skips = []
        for i, level in enumerate(self.down):
            for block in level:
                h = block(h, next(films))
            if i < len(self.downsample):
                skips.append(h)
                h = self.downsample[i](h)
        for block in self.mid:
            h = block(h, next(films))
        for upsample, level in zip(self.upsample, self.up):
            h = torch.cat([upsample(h), skips.pop()], dim=1)
            for block in level:
                h = block(h, next(films))
        return self.final(h)[:, :, :horizon].transpose(1, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | int, cond: torch.Tensor) -> torch.Tensor:
        return self.step(x, t, self.condition(cond))


class MLPDenoiser(nn.Module):
    """MLP over cat(flattened chunk, step embedding, obs features); first layer split like the UNet's FiLM."""

    def __init__(self, action_dim: int, horizon: int, cond_dim: int, cfg: DenoiserConfig):
        super().__init__()
        d, n_in = cfg.mlp_hidden, horizon * action_dim
        self.step_encoder = StepEncoder(cfg.step_embed_dim)
        self.in_x = nn.Linear(n_in, d)
        self.in_step = nn.Linear(cfg.step_embed_dim, d, bias=False)
        self.in_obs = nn.Linear(max(cond_dim, 1), d, bias=False)
        layers: list[nn.Module] = [nn.Mish()]
        for _ in range(cfg.mlp_layers - 1):
            layers += [nn.Linear(d, d), nn.LayerNorm(d), nn.Mish()]
        layers.append(nn.Linear(d, n_in))
        self.body = nn.Sequential(*layers)
        self.cond_dim = cond_dim

    def condition(self, cond: torch.Tensor) -> torch.Tensor:
        if self.cond_dim == 0:
            cond = cond.new_zeros(cond.shape[0], 1)
        return self.in_obs(cond)

    def step(self, x: torch.Tensor, t: torch.Tensor | float | int, conditioned: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        t = _batch_timesteps(t, b, x.device)
        h = self.in_x(x.reshape(b, -1)) + self.in_step(self.step_encoder(t)) + conditioned
        return self.body(h).reshape(x.shape)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | int, cond: torch.Tensor) -> torch.Tensor:
        return self.step(x, t, self.condition(cond))


def make_denoiser(action_dim: int, horizon: int, cond_dim: int, cfg: DenoiserConfig) -> UNet1D | MLPDenoiser:
    if cfg.kind == "unet":
        return UNet1D(action_dim, cond_dim, cfg)
    if cfg.kind == "mlp":
        return MLPDenoiser(action_dim, horizon, cond_dim, cfg)
    raise ValueError(f"unknown denoiser kind '{cfg.kind}' (use 'unet' or 'mlp')")
