"""Diffusion policy: DDPM noise-prediction training, DDIM inference, and the denoising chain as a Gaussian policy.

Every DDIM update (deterministic predict, stochastic ``sample_chain``, ``chain_logprob``, the distillation teacher)
goes through ``ddim_step`` on the grid from ``time_grid``, so sampling and likelihood can never drift onto different
grids. Log-prob convention: per denoising step, the Gaussian log-density SUMMED over horizon and action dims, in
normalised action space; shape (B, K).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from policies.base import ObsBatch, PolicyBase
from policies.denoisers import DenoiserConfig, make_denoiser
from policies.encoders import EncoderConfig, ObservationEncoder
from policies.normalizer import Normalizer
from policies.spec import PolicySpec

_LOG_SQRT_2PI = 0.5 * float(torch.log(torch.tensor(2 * torch.pi)))


@dataclass
class DiffusionPolicyConfig:
    # Fields that only steer sampling: a checkpoint's config.json may change them after training.
    inference_fields: ClassVar[tuple[str, ...]] = ("num_inference_steps", "eta", "step_noise", "chain_eta",
                                                   "sigma_min", "clip_sample")
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # observation encoder
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)  # "unet" or "mlp" and their widths
    num_train_timesteps: int = 100  # DDPM training steps
    beta_schedule: str = "squaredcos_cap_v2"  # diffusers beta schedule name
    prediction_type: str = "epsilon"  # "epsilon" (predict the noise) or "sample" (predict the clean chunk)
    num_inference_steps: int = 10  # DDIM steps K for predict and sample_chain
    eta: float = 0.0  # DDIM eta for predict (0 = deterministic)
    # Scale of the fresh noise each of predict's DDIM steps adds (when eta > 0). 1 = DDIM(eta) proper; 0 = its mean
    # path: eta 1 with 0 runs the DDPM-like means the PPO chain is trained around, without the exploration noise
    # (DPPO's deterministic evaluation). Only the initial noise is random then.
    step_noise: float = 1.0
    chain_eta: float = 1.0  # DDIM eta for sample_chain: 1 = DDPM-like per-step Gaussian (RL exploration)
    sigma_min: float = 0.01  # floor on each chain step's std, or the log-likelihood explodes near eta=0
    clip_sample: bool = True  # clip the predicted clean chunk to [-1, 1] (actions are limits-normalised)
    ema: bool = True  # keep an EMA of the weights (diffusers EMAModel) for evaluation
    ema_decay: float = 0.9999  # EMA decay ceiling
    ema_power: float = 0.75  # EMA warm-up power: decay = 1 - (1 + step) ** -power


@dataclass(frozen=True)
class TimeGrid:
    """K DDIM steps from noise to data; step k maps x at ``timesteps[k]`` to x at the next (earlier) time."""

    timesteps: torch.Tensor  # (K,) long, decreasing, e.g. 90, 80, ..., 0
    alpha_bar: torch.Tensor  # (K,) cumulative alpha at timesteps[k]
    alpha_bar_prev: torch.Tensor  # (K,) cumulative alpha at the step's target time (1.0 after the last step)


class DiffusionPolicy(PolicyBase):
    kind = "diffusion"

    def __init__(self, spec: PolicySpec, normalizer: Normalizer, config: DiffusionPolicyConfig | None = None):
        config = config or DiffusionPolicyConfig()
        super().__init__(spec, normalizer, config)
        from diffusers import DDIMScheduler, DDPMScheduler  # lazy: importing diffusers costs seconds

        sched_args = dict(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                          prediction_type=config.prediction_type, clip_sample=config.clip_sample)
        self.noise_scheduler = DDPMScheduler(**sched_args)
        self.ddim_scheduler = DDIMScheduler(**sched_args, set_alpha_to_one=True)
        self.encoder = ObservationEncoder(spec, config.encoder)
        self.denoiser = make_denoiser(spec.action_dim, spec.horizon, self.encoder.feature_dim, config.denoiser)
        self._grids: dict[int, TimeGrid] = {}
        self.init_ema()

    # --- training ------------------------------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        cond = self.encoder(self.normalize_obs(batch["obs"]))
        clean = self.normalize_action(batch["action"])
        noise = torch.randn_like(clean)
        t = torch.randint(0, self.config.num_train_timesteps, (clean.shape[0],), device=clean.device)
        noisy = self.noise_scheduler.add_noise(clean, noise, t)
        pred = self.denoiser(noisy, t, cond)
        return F.mse_loss(pred, noise if self.config.prediction_type == "epsilon" else clean)

    # --- the shared DDIM machinery -----------------------------------------------------------------------------
    def time_grid(self, steps: int | None = None) -> TimeGrid:
        """THE time grid: diffusers' DDIM timesteps for ``steps`` and the matching cumulative alphas."""
        steps = steps or self.config.num_inference_steps
        if steps not in self._grids:
            self.ddim_scheduler.set_timesteps(steps)
            ts = self.ddim_scheduler.timesteps.clone().long()
            prev = ts - self.config.num_train_timesteps // steps
            abar = self.ddim_scheduler.alphas_cumprod
            abar_prev = torch.where(prev >= 0, abar[prev.clamp(min=0)], self.ddim_scheduler.final_alpha_cumprod)
            self._grids[steps] = TimeGrid(ts, abar[ts].float(), abar_prev.float())
        return self._grids[steps]

    def ddim_step(self, x: torch.Tensor, model_out: torch.Tensor, grid: TimeGrid, k: int, eta: float,
                  sigma_min: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of x at the next time given x at ``grid.timesteps[k]``; std = max(eta*sigma_k, sigma_min).

        Matches diffusers' DDIMScheduler.step (clipped x0, unclipped epsilon) when sigma_min = 0.
        """
        ab, ab_prev = float(grid.alpha_bar[k]), float(grid.alpha_bar_prev[k])
        if self.config.prediction_type == "epsilon":
            eps = model_out
            x0 = (x - (1 - ab) ** 0.5 * eps) / ab ** 0.5
        else:
            x0 = model_out
            eps = (x - ab ** 0.5 * x0) / (1 - ab) ** 0.5
        if self.config.clip_sample:
            x0 = x0.clamp(-1.0, 1.0)
        sigma = max(eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5, sigma_min)
        mean = ab_prev ** 0.5 * x0 + max(1 - ab_prev - sigma ** 2, 0.0) ** 0.5 * eps
        return mean, torch.full((), sigma, device=x.device)

    def conditioned(self, obs: ObsBatch, augment: bool = False) -> torch.Tensor:
        """Raw obs -> the denoiser's per-call conditioning (obs features through the FiLM/input projection)."""
        return self.denoiser.condition(self.encoder(self.normalize_obs(obs), augment=augment))

    def ddim_sample_normalized(self, x: torch.Tensor, conditioned: torch.Tensor, steps: int | None = None,
                               eta: float = 0.0, generator: torch.Generator | None = None,
                               step_noise: float = 1.0) -> torch.Tensor:
        """Run the K-step DDIM chain from noise ``x`` (normalised space); returns the clean chunk (not clipped).
        ``step_noise`` scales the fresh noise of each step (0: the mean path of DDIM(eta))."""
        grid = self.time_grid(steps)
        for k in range(len(grid.timesteps)):
            out = self.denoiser.step(x, grid.timesteps[k].to(x.device), conditioned)
            mean, sigma = self.ddim_step(x, out, grid, k, eta)
            noisy = eta > 0 and step_noise > 0
            x = mean + step_noise * sigma * _randn_like(mean, generator) if noisy else mean
        return x

    def noise_to_chunk_normalized(self, x: torch.Tensor, conditioned: torch.Tensor) -> torch.Tensor:
        """The shipped sampler (this config's DDIM steps and eta) as a deterministic map from the initial noise,
        its per-step noise off: the DDIM ODE at eta 0, the mean path at eta 1. A one-step student distils this map
        and noise steering decodes through it; an eta > 0 sampler's fresh per-step noise is not a function of x, so
        a student regressing on it would learn its average, not a sample."""
        return self.ddim_sample_normalized(x, conditioned, self.config.num_inference_steps, self.config.eta,
                                           step_noise=0.0)

    def initial_noise(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = (batch, self.spec.horizon, self.spec.action_dim)
        return torch.randn(shape, generator=generator, device=generator.device if generator else "cpu").to(self.device)

    # --- inference ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, obs: ObsBatch, scheduler: str = "ddim", steps: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Raw obs (B, n_obs, ...) -> unnormalised chunk (B, horizon, A). ``scheduler="ddpm"`` samples with
        diffusers' DDPMScheduler (``steps`` defaults to all training steps)."""
        conditioned = self.conditioned(obs)
        x = self.initial_noise(conditioned.shape[0], generator)
        if scheduler == "ddim":
            x = self.ddim_sample_normalized(x, conditioned, steps, self.config.eta, generator, self.config.step_noise)
        elif scheduler == "ddpm":
            from diffusers import DDPMScheduler

            sched = DDPMScheduler.from_config(self.noise_scheduler.config)
            sched.set_timesteps(steps or self.config.num_train_timesteps)
            for t in sched.timesteps:
                out = self.denoiser.step(x, t.to(x.device), conditioned)
                x = sched.step(out, t, x, generator=generator).prev_sample
        else:
            raise ValueError(f"unknown scheduler '{scheduler}' (use 'ddim' or 'ddpm')")
        return self.unnormalize_action(x.clamp(-1.0, 1.0))

    # --- the denoising chain as a policy (RL) --------------------------------------------------------------------
    @torch.no_grad()
    def sample_chain(self, obs: ObsBatch, generator: torch.Generator | None = None, steps: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stochastic DDIM (``chain_eta``, std floored at ``sigma_min``): every step is a Gaussian policy.

        Returns (actions (B, T, A) unnormalised and clipped, chain (B, K+1, T, A) normalised with chain[:, 0] the
        initial noise, step_logprobs (B, K)). Observations are centre-cropped (no augmentation) so that
        ``chain_logprob`` sees exactly the same features.
        """
        conditioned = self.conditioned(obs, augment=False)
        grid = self.time_grid(steps)
        x = self.initial_noise(conditioned.shape[0], generator)
        chain, logps = [x], []
        for k in range(len(grid.timesteps)):
            out = self.denoiser.step(x, grid.timesteps[k].to(x.device), conditioned)
            mean, sigma = self.ddim_step(x, out, grid, k, self.config.chain_eta, self.config.sigma_min)
            x = mean + sigma * _randn_like(mean, generator)
            logps.append(gaussian_logprob(x, mean, sigma))
            chain.append(x)
        return self.unnormalize_action(x.clamp(-1.0, 1.0)), torch.stack(chain, 1), torch.stack(logps, 1)

    def chain_logprob(self, obs: ObsBatch, chain: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Log-probs (B, K) of each stored transition chain[:, k] -> chain[:, k+1] under the current weights.

        Evaluated step by step at the same batch size as sampling (not all K at once) so that an unchanged policy
        reproduces ``sample_chain``'s numbers bit for bit (CPU kernels may round differently per batch shape).
        """
        grid = self.time_grid(steps)
        if chain.shape[1] != len(grid.timesteps) + 1:
            raise ValueError(f"chain has {chain.shape[1] - 1} steps but the time grid has {len(grid.timesteps)}")
        conditioned = self.conditioned(obs, augment=False)
        chain = chain.to(self.device)
        logps = []
        for k in range(len(grid.timesteps)):
            x = chain[:, k]
            out = self.denoiser.step(x, grid.timesteps[k].to(x.device), conditioned)
            mean, sigma = self.ddim_step(x, out, grid, k, self.config.chain_eta, self.config.sigma_min)
            logps.append(gaussian_logprob(chain[:, k + 1], mean, sigma))
        return torch.stack(logps, 1)


def gaussian_logprob(x: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Isotropic Gaussian log-density of (B, T, A) samples, summed over T and A -> (B,)."""
    z = (x - mean) / sigma
    per_dim = -0.5 * z * z - torch.log(sigma) - _LOG_SQRT_2PI
    return per_dim.flatten(1).sum(-1)


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.randn_like(x)
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
