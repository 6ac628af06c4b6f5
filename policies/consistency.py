"""One-step consistency policies, two ways:

* ``mode="ct"``: consistency training from data, no teacher. Karras noise levels, boundary-condition
  parametrisation f(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s), obs) so that f(x, sigma_min) = x, and
  the loss ||f(a + s_{n+1} z, s_{n+1}) - f_target(a + s_n z, s_n)||^2 with an EMA target network.
* ``mode="distilled"``: RL-100-style distillation of a DiffusionPolicy teacher. Teacher and student start from the
  same noise x_K; target = the teacher's deterministic K-step DDIM output; the student (a copy of the teacher's
  weights, encoder frozen and shared) maps x_K to that target in one call. The student keeps the teacher's
  parametrisation, f(x_K) = x0-estimate from its epsilon output at t_K, so at initialisation it is exactly the
  teacher's one-step DDIM guess.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from policies.base import ObsBatch, PolicyBase
from policies.denoisers import DenoiserConfig, make_denoiser
from policies.encoders import EncoderConfig, ObservationEncoder
from policies.normalizer import Normalizer
from policies.spec import PolicySpec


@dataclass
class ConsistencyPolicyConfig:
    # Fields that only steer sampling: a checkpoint's config.json may change them after training.
    inference_fields: ClassVar[tuple[str, ...]] = ("inference_steps",)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # observation encoder
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)  # network F ("unet" or "mlp")
    mode: str = "ct"  # "ct" (consistency training from data) or "distilled" (from a DiffusionPolicy teacher)
    inference_steps: int = 1  # default network calls per predict (>1 = multistep consistency sampling)
    # --- ct mode ---
    sigma_min: float = 0.002  # smallest noise level; f is the identity there (boundary condition)
    sigma_max: float = 80.0  # noise level sampling starts from
    sigma_data: float = 0.5  # assumed std of normalised actions, sets c_skip / c_out / c_in
    rho: float = 7.0  # Karras schedule curvature
    num_scales: int = 40  # discretisation N of [sigma_min, sigma_max] for the consistency loss
    target_ema: float = 0.95  # EMA decay of the ct target network; 0 = the online network itself (iCT)
    # Improved consistency training (Song & Dhariwal 2023); the defaults reproduce the original recipe.
    loss: str = "l2"  # "l2" or "pseudo_huber": sqrt(|d|^2 + c^2) - c per sample, c = 0.00054 sqrt(dims)
    level_sampling: str = "uniform"  # which adjacent level pair to train: "uniform" or "lognormal" (mean -1.1, std 2)
    weighted: bool = False  # weight each pair by 1 / (sigma_{n+1} - sigma_n) (iCT's lambda)
    curriculum_steps: int = 0  # > 0: N doubles from num_scales_start up to num_scales over these optimiser steps;
    #   -1: over the whole training run (robo train writes the run's --steps here before the policy is built)
    num_scales_start: int = 10  # first N of the curriculum
    # --- distilled mode: the teacher's diffusion schedule, copied so loading needs no teacher ---
    num_train_timesteps: int = 100  # teacher's DDPM steps
    beta_schedule: str = "squaredcos_cap_v2"  # teacher's beta schedule
    prediction_type: str = "epsilon"  # teacher's network output
    teacher_steps: int = 10  # K: the teacher's DDIM steps the student imitates in one call
    teacher_eta: float = 0.0  # the teacher's DDIM eta: the student imitates that sampler's noise-free path
    freeze_encoder: bool = True  # distilled: the encoder is the teacher's, frozen (features shared)
    # --- evaluation EMA ---
    ema: bool = True  # keep an EMA of the weights for evaluation
    ema_decay: float = 0.9999  # EMA decay ceiling
    ema_power: float = 0.75  # EMA warm-up power


class ConsistencyPolicy(PolicyBase):
    kind = "consistency"

    def __init__(self, spec: PolicySpec, normalizer: Normalizer, config: ConsistencyPolicyConfig | None = None):
        config = config or ConsistencyPolicyConfig()
        super().__init__(spec, normalizer, config)
        if config.mode not in ("ct", "distilled"):
            raise ValueError(f"unknown consistency mode '{config.mode}' (use 'ct' or 'distilled')")
        self.encoder = ObservationEncoder(spec, config.encoder)
        self.denoiser = make_denoiser(spec.action_dim, spec.horizon, self.encoder.feature_dim, config.denoiser)
        self._teacher: tuple[Any, ...] = ()  # a tuple keeps the teacher out of state_dict / parameters()
        if config.curriculum_steps < 0:
            raise ValueError("curriculum_steps -1 stands for the training run's length: robo train fills it in; "
                             "anywhere else give the number of steps")
        if config.mode == "ct":
            for name, value, allowed in (("loss", config.loss, ("l2", "pseudo_huber")),
                                         ("level_sampling", config.level_sampling, ("uniform", "lognormal"))):
                if value not in allowed:
                    raise ValueError(f"unknown consistency {name} '{value}' (use one of {', '.join(allowed)})")
            self.target = copy.deepcopy(self.denoiser).requires_grad_(False)
            self.register_buffer("sigmas", karras_sigmas(config), persistent=False)
            if config.curriculum_steps > 0:  # saved with the weights, so a resumed run continues the curriculum
                self.register_buffer("ct_step", torch.zeros((), dtype=torch.long))
        else:
            from diffusers import DDIMScheduler  # lazy: importing diffusers costs seconds

            sched = DDIMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule)
            sched.set_timesteps(config.teacher_steps)  # the same grid the teacher's DiffusionPolicy.time_grid uses
            self.register_buffer("ddim_timesteps", sched.timesteps.clone().long(), persistent=False)
            self.register_buffer("alphas_cumprod", sched.alphas_cumprod.clone().float(), persistent=False)
            if config.freeze_encoder:
                self.encoder.requires_grad_(False)
        self.init_ema()

    # --- construction from a teacher ---------------------------------------------------------------------------
    @classmethod
    def from_teacher(cls, teacher: Any, overrides: dict[str, Any] | None = None) -> ConsistencyPolicy:
        """A distillation student: the teacher's schedule, encoder (frozen) and, by default, its denoiser's weights.

        ``overrides``: student config fields (a preset's ``policy:`` section). A ``denoiser`` other than the
        teacher's (e.g. an MLP, fewer network ops per call than the teacher's UNet) starts from random weights and
        needs a longer distillation; such a network may also choose its output (``prediction_type: sample``
        predicts the chunk itself, where epsilon's errors are amplified 1/sqrt(alpha_bar), ~7x at the first DDIM
        step). The fields that tie the student to the teacher's schedule cannot be changed.
        Pass the teacher with the weights it is evaluated with (EMA weights: ``load_checkpoint(use_ema=True)``).
        """
        from policies.registry import config_from_dict, config_to_dict

        tc = teacher.config
        config = ConsistencyPolicyConfig(
            encoder=copy.deepcopy(tc.encoder), denoiser=copy.deepcopy(tc.denoiser), mode="distilled",
            num_train_timesteps=tc.num_train_timesteps, beta_schedule=tc.beta_schedule,
            prediction_type=tc.prediction_type, teacher_steps=tc.num_inference_steps, teacher_eta=tc.eta,
            ema=tc.ema, ema_decay=tc.ema_decay, ema_power=tc.ema_power)
        if overrides:
            config = config_from_dict(ConsistencyPolicyConfig, {**config_to_dict(config), **overrides})
        own_network = config.denoiser != tc.denoiser
        fixed = {"mode", "encoder", "num_train_timesteps", "beta_schedule", "teacher_steps", "teacher_eta"}
        if not own_network:  # a copied network keeps the output its weights were trained for
            fixed.add("prediction_type")
        fixed = sorted(set(overrides or {}) & fixed)
        if fixed:
            raise ValueError(f"a distilled student takes {', '.join(fixed)} from its teacher; remove "
                             f"{'them' if len(fixed) > 1 else 'it'} from the student's policy config")
        student = cls(teacher.spec, teacher.normalizer, config).to(teacher.device)
        student.encoder.load_state_dict(teacher.encoder.state_dict())
        if not own_network:
            student.denoiser.load_state_dict(teacher.denoiser.state_dict())
        student.init_ema()  # the EMA must start from the copied weights, not the random ones
        student.attach_teacher(teacher)
        return student

    def attach_teacher(self, teacher: Any) -> None:
        if self.config.mode != "distilled":
            raise ValueError("only a mode='distilled' consistency policy takes a teacher")
        if teacher.config.num_inference_steps != self.config.teacher_steps:
            raise ValueError(f"teacher runs {teacher.config.num_inference_steps} DDIM steps, the student was "
                             f"configured for {self.config.teacher_steps}")
        if teacher.config.eta != self.config.teacher_eta:
            raise ValueError(f"teacher samples with DDIM eta {teacher.config.eta}, the student was distilled from "
                             f"eta {self.config.teacher_eta}: attach the teacher it was started from")
        self._teacher = (teacher,)  # not frozen: it may keep training (e.g. online PPO); used under no_grad

    # --- the consistency function ------------------------------------------------------------------------------
    def consistency_fn(self, x: torch.Tensor, level: torch.Tensor, conditioned: torch.Tensor,
                       net: torch.nn.Module | None = None) -> torch.Tensor:
        """f(x, level) -> clean normalised chunk. ``level``: (B,) sigma (ct) or DDIM timestep (distilled)."""
        net = net or self.denoiser
        c = self.config
        if c.mode == "ct":
            s = level.float()[:, None, None]
            c_skip = c.sigma_data ** 2 / ((s - c.sigma_min) ** 2 + c.sigma_data ** 2)
            c_out = (s - c.sigma_min) * c.sigma_data / (s ** 2 + c.sigma_data ** 2).sqrt()
            c_in = 1.0 / (s ** 2 + c.sigma_data ** 2).sqrt()
            c_noise = 25.0 * torch.log(level.float())  # 0.25 ln(sigma) (EDM), scaled for the sinusoidal embedding
            return c_skip * x + c_out * net.step(c_in * x, c_noise, conditioned)
        ab = self.alphas_cumprod[level.long()][:, None, None]
        out = net.step(x, level, conditioned)
        if c.prediction_type == "epsilon":
            return (x - (1 - ab).sqrt() * out) / ab.sqrt()
        return out

    def conditioned(self, obs: ObsBatch, augment: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.encoder(self.normalize_obs(obs), augment=augment)
        return feats, self.denoiser.condition(feats)

    # --- training ----------------------------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.config.mode == "distilled":
            return self.distillation_loss(batch["obs"])
        c = self.config
        feats, conditioned = self.conditioned(batch["obs"])
        clean = self.normalize_action(batch["action"])
        b = clean.shape[0]
        sigmas = self.sigmas
        if c.curriculum_steps > 0:
            sigmas = karras_sigmas(c, curriculum_scales(c, int(self.ct_step))).to(clean.device)
        if c.level_sampling == "lognormal":
            n = torch.multinomial(lognormal_pair_weights(sigmas), b, replacement=True)
        else:
            n = torch.randint(0, len(sigmas) - 1, (b,), device=clean.device)
        s_lo, s_hi = sigmas[n], sigmas[n + 1]
        z = torch.randn_like(clean)
        pred = self.consistency_fn(clean + s_hi[:, None, None] * z, s_hi, conditioned)
        with torch.no_grad():  # the target sees the same noise one level lower, through the target network
            target = self.consistency_fn(clean + s_lo[:, None, None] * z, s_lo,
                                         self.target.condition(feats.detach()), net=self.target)
        if c.loss == "l2" and not c.weighted:
            return F.mse_loss(pred, target)
        diff = (pred - target).flatten(1)
        if c.loss == "pseudo_huber":
            huber_c = 0.00054 * diff.shape[1] ** 0.5
            per_sample = (diff.square().sum(1) + huber_c ** 2).sqrt() - huber_c
        else:
            per_sample = diff.square().mean(1)
        if c.weighted:
            per_sample = per_sample / (s_hi - s_lo)
        return per_sample.mean()

    def distillation_loss(self, obs: ObsBatch, noise: torch.Tensor | None = None) -> torch.Tensor:
        """|| f_student(x_K, c) - teacher(x_K, c) ||^2 with shared x_K and shared (frozen) features c; teacher(.) is
        the teacher's own K-step sampler with its per-step noise off (``noise_to_chunk_normalized``)."""
        if not self._teacher:
            raise RuntimeError("distillation needs a teacher: use ConsistencyPolicy.from_teacher or attach_teacher")
        teacher = self._teacher[0]
        feats = self.encoder(self.normalize_obs(obs))
        x_k = noise if noise is not None else torch.randn(
            feats.shape[0], self.spec.horizon, self.spec.action_dim, device=feats.device)
        with torch.no_grad():
            target = teacher.noise_to_chunk_normalized(x_k, teacher.denoiser.condition(feats.detach()))
        t_k = self.ddim_timesteps[0].expand(x_k.shape[0])
        pred = self.consistency_fn(x_k, t_k, self.denoiser.condition(feats))
        return F.mse_loss(pred, target)

    def after_optimizer_step(self) -> None:
        super().after_optimizer_step()
        if self.config.mode == "ct" and self.config.curriculum_steps > 0:
            self.ct_step += 1
        if self.config.mode == "ct":
            with torch.no_grad():
                for tgt, src in zip(self.target.parameters(), self.denoiser.parameters()):
                    tgt.lerp_(src, 1.0 - self.config.target_ema)

    # --- inference ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, obs: ObsBatch, steps: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Raw obs -> unnormalised chunk (B, horizon, A) in ``steps`` network calls (default 1).

        Multistep: denoise, re-noise to the next lower level, denoise again (Song et al.'s multistep sampler).
        In distilled mode only t_K was distilled; later steps rely on the teacher's weights at lower t.
        """
        steps = steps or self.config.inference_steps
        _, conditioned = self.conditioned(obs, augment=False)
        b = conditioned.shape[0]
        levels = self._sampling_levels(steps)
        x = _randn((b, self.spec.horizon, self.spec.action_dim), generator, conditioned.device)
        if self.config.mode == "ct":
            x = x * levels[0]
        clean = x
        for i, level in enumerate(levels):
            if i > 0:  # re-noise the current clean estimate to this level
                z = _randn(clean.shape, generator, clean.device)
                if self.config.mode == "ct":
                    x = clean + (level ** 2 - self.config.sigma_min ** 2).clamp(min=0).sqrt() * z
                else:
                    ab = self.alphas_cumprod[level.long()]
                    x = ab.sqrt() * clean + (1 - ab).sqrt() * z
            clean = self.consistency_fn(x, level.expand(b), conditioned)
        return self.unnormalize_action(clean.clamp(-1.0, 1.0))

    def _sampling_levels(self, steps: int) -> torch.Tensor:
        grid = self.sigmas.flip(0) if self.config.mode == "ct" else self.ddim_timesteps
        idx = torch.linspace(0, len(grid) - 1, steps + 1)[:-1].round().long() if steps > 1 else torch.zeros(1).long()
        return grid[idx.to(grid.device)]


def karras_sigmas(c: ConsistencyPolicyConfig, scales: int | None = None) -> torch.Tensor:
    """N noise levels from sigma_min to sigma_max (ascending), dense near sigma_min (Karras et al., rho = 7)."""
    ramp = torch.linspace(0, 1, scales or c.num_scales, dtype=torch.float64)
    lo, hi = c.sigma_min ** (1 / c.rho), c.sigma_max ** (1 / c.rho)
    return ((lo + ramp * (hi - lo)) ** c.rho).float()


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=generator.device if generator else device).to(device)


def curriculum_scales(c: ConsistencyPolicyConfig, step: int) -> int:
    """iCT's discretisation curriculum: N = min(s0 * 2^floor(step / K'), s1) with K' = K / (log2(s1 / s0) + 1),
    so N doubles in equal stages from ``num_scales_start`` and holds at ``num_scales`` for the last stage."""
    s0, s1 = c.num_scales_start, c.num_scales
    stage = max(1, int(c.curriculum_steps / (math.floor(math.log2(max(s1 // s0, 1))) + 1)))
    return int(min(s0 * 2 ** (step // stage), s1))


def lognormal_pair_weights(sigmas: torch.Tensor, mean: float = -1.1, std: float = 2.0) -> torch.Tensor:
    """Probability of training each adjacent pair (sigma_n, sigma_n+1): the lognormal mass between them (iCT), so
    the mid noise levels that decide the output get most of the updates and the extremes few."""
    cdf = torch.special.erf((torch.log(sigmas.double()) - mean) / (std * math.sqrt(2.0)))
    return (cdf[1:] - cdf[:-1]).clamp(min=1e-12).float()
