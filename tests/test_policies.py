"""Policy classes behind one interface: shapes, learning, checkpoints, refusals, chain log-probs, distillation."""

from __future__ import annotations

import json
import subprocess
import sys
import dataclasses
from dataclasses import replace

import numpy as np
import pytest
import torch

from policies.base import DenoisingPolicy, Policy
from policies.registry import make_policy
from policies.checkpoint import check_against, load_checkpoint, save_checkpoint
from policies.consistency import ConsistencyPolicy, ConsistencyPolicyConfig
from policies.denoisers import DenoiserConfig, MLPDenoiser
from policies.diffusion import DiffusionPolicyConfig
from policies.encoders import EncoderConfig
from policies.gaussian import GaussianPolicyConfig
from policies.normalizer import Normalizer
from policies.spec import CheckpointError, CheckpointMismatch, PolicySpec

torch.set_num_threads(1)  # tiny nets: threads only add overhead, and other processes share the CPU

B, N_OBS, HORIZON, ACT = 6, 2, 8, 4
TINY_ENC = EncoderConfig(lowdim_hidden=32, lowdim_features=16, rgb_base_channels=8, rgb_stages=2,
                         rgb_blocks_per_stage=1, rgb_stem_stride=2, rgb_groups=4, num_keypoints=8, rgb_features=16)
TINY_UNET = DenoiserConfig(kind="unet", widths=(16, 32), kernel_size=3, groups=4, step_embed_dim=16)
TINY_MLP = DenoiserConfig(kind="mlp", mlp_hidden=64, mlp_layers=2, step_embed_dim=16)
KINDS = ["diffusion-unet", "diffusion-mlp", "consistency", "gaussian"]
OBS_TYPES = ["lowdim", "rgbd"]


def tiny_config(name: str):
    if name == "diffusion-unet":
        return "diffusion", DiffusionPolicyConfig(encoder=TINY_ENC, denoiser=TINY_UNET)
    if name == "diffusion-mlp":
        return "diffusion", DiffusionPolicyConfig(encoder=TINY_ENC, denoiser=TINY_MLP)
    if name == "consistency":
        return "consistency", ConsistencyPolicyConfig(encoder=TINY_ENC, denoiser=TINY_UNET, num_scales=10)
    return "gaussian", GaussianPolicyConfig(encoder=TINY_ENC, hidden=(64,), ema=True)


def make_batch(obs_type: str, seed: int = 0, n: int = B) -> dict:
    """Actions are a smooth function of the observations, so a policy can fit them."""
    rng = np.random.default_rng(seed)
    obs = {"eef_pos": rng.uniform(-0.3, 0.3, (n, N_OBS, 3)).astype(np.float32),
           "gripper_qpos": rng.uniform(0, 0.04, (n, N_OBS, 2)).astype(np.float32)}
    if obs_type == "rgbd":
        obs["agentview_rgb"] = rng.integers(0, 256, (n, N_OBS, 32, 32, 3), dtype=np.uint8)
        obs["agentview_depth"] = rng.integers(0, 3000, (n, N_OBS, 32, 32, 1), dtype=np.uint16)
    t = np.linspace(0, 1, HORIZON, dtype=np.float32)[None, :, None]
    base = obs["eef_pos"][:, -1, :, None].repeat(2, axis=2).reshape(n, 1, 6)[:, :, :ACT]
    action = (base + 0.2 * np.sin(3 * t + np.arange(ACT)[None, None])).astype(np.float32)
    return {"obs": obs, "action": action}


def make_spec_norm(obs_type: str) -> tuple[PolicySpec, Normalizer]:
    batch = make_batch(obs_type, seed=123, n=32)
    spec = PolicySpec({k: (v.shape[2:], str(v.dtype)) for k, v in batch["obs"].items()}, ACT,
                      n_obs=N_OBS, horizon=HORIZON, n_action_steps=4)
    data = {k: v.reshape(-1, *v.shape[2:]) for k, v in batch["obs"].items()}
    data["action"] = batch["action"].reshape(-1, ACT)
    return spec, Normalizer.fit(data)


def build(name: str, obs_type: str, seed: int = 0):
    torch.manual_seed(seed)
    kind, cfg = tiny_config(name)
    spec, norm = make_spec_norm(obs_type)
    return make_policy(kind, spec, norm, cfg)


def predict_seeded(policy, obs, seed: int = 7) -> torch.Tensor:
    return policy.predict(obs, generator=torch.Generator().manual_seed(seed))


def loss_at_seed(policy, batch, seeds=range(4)) -> float:
    """Average loss over fixed noise draws (eval mode: centre crops), so before/after compare like with like."""
    policy.eval()
    with torch.no_grad():
        values = []
        for s in seeds:
            torch.manual_seed(1000 + s)
            values.append(float(policy.compute_loss(batch)))
    policy.train()
    return float(np.mean(values))


def train(policy, batch, steps: int, lr: float = 3e-3) -> None:
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=lr)
    policy.train()
    for _ in range(steps):
        loss = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        policy.after_optimizer_step()


@pytest.mark.parametrize("obs_type", OBS_TYPES)
@pytest.mark.parametrize("name", KINDS)
def test_predict_shapes_and_protocol(name, obs_type):
    policy = build(name, obs_type).eval()
    assert isinstance(policy, Policy)
    assert isinstance(policy, DenoisingPolicy) == name.startswith("diffusion")
    batch = make_batch(obs_type)
    actions = policy.predict(batch["obs"])
    assert actions.shape == (B, HORIZON, ACT) and torch.isfinite(actions).all()
    one = {k: torch.as_tensor(v[:1]) for k, v in batch["obs"].items()}  # tensors, batch 1
    assert policy.predict(one).shape == (1, HORIZON, ACT)


@pytest.mark.parametrize("obs_type", OBS_TYPES)
@pytest.mark.parametrize("name", KINDS)
def test_training_reduces_loss(name, obs_type):
    policy = build(name, obs_type)
    batch = make_batch(obs_type)
    before = loss_at_seed(policy, batch)
    train(policy, batch, steps=100)
    after = loss_at_seed(policy, batch)
    assert after < 0.6 * before, (before, after)


@pytest.mark.parametrize("obs_type", OBS_TYPES)
@pytest.mark.parametrize("name", KINDS)
def test_checkpoint_round_trip(tmp_path, name, obs_type):
    policy = build(name, obs_type)
    batch = make_batch(obs_type)
    train(policy, batch, steps=2)  # live weights and EMA weights now differ
    policy.eval()
    save_checkpoint(tmp_path / "ck", policy, extra={"step": 2, "task": "Lift"})
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config["extra"] == {"step": 2, "task": "Lift"} and config["policy_kind"] == policy.kind
    raw = load_checkpoint(tmp_path / "ck", use_ema=False)
    assert type(raw) is type(policy)
    assert torch.equal(predict_seeded(raw, batch["obs"]), predict_seeded(policy, batch["obs"]))
    ema = load_checkpoint(tmp_path / "ck")
    policy.use_ema_weights()
    assert torch.equal(predict_seeded(ema, batch["obs"]), predict_seeded(policy, batch["obs"]))


def assert_one_line(err: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(err.value) and len(str(err.value)) < 400, str(err.value)


def test_check_against_refuses_mismatched_obs():
    policy = build("gaussian", "rgbd")
    env = {k: (shape, dtype) for k, (shape, dtype) in policy.spec.obs_keys.items()}
    check_against(policy, env, ACT)
    check_against(policy, {**env, "joint_pos": ((7,), "float32")}, ACT)  # extra keys are fine
    cases = [
        ({k: v for k, v in env.items() if k != "gripper_qpos"}, ACT, "gripper_qpos"),
        ({**env, "agentview_rgb": ((64, 64, 3), "uint8")}, ACT, "(64, 64, 3)"),
        ({**env, "eef_pos": ((4,), "float32")}, ACT, "eef_pos"),
        ({**env, "agentview_depth": ((32, 32, 1), "float32")}, ACT, "dtype"),
        (env, ACT + 1, "action size"),
    ]
    for obs_spec, action_dim, words in cases:
        with pytest.raises(CheckpointMismatch) as err:
            check_against(policy, obs_spec, action_dim)
        assert_one_line(err)
        assert words in str(err.value)
    # A dataset schema's ArraySpec values (anything with .shape/.dtype) work too.
    from robo.data.schema import ArraySpec  # test-only: the policies package itself never imports robo

    check_against(policy.spec, {k: ArraySpec(s, d) for k, (s, d) in env.items()}, ACT)
    with pytest.raises(CheckpointMismatch, match="eef_pos"):
        check_against(policy.spec, {**{k: ArraySpec(s, d) for k, (s, d) in env.items()},
                                    "eef_pos": ArraySpec((2,), "float32")}, ACT)
    with pytest.raises(ValueError, match="no statistics"):  # building a policy needs normaliser stats
        make_policy("gaussian", policy.spec, Normalizer({}), tiny_config("gaussian")[1])


@pytest.mark.parametrize("obs_type", OBS_TYPES)
@pytest.mark.parametrize("name", ["diffusion-unet", "diffusion-mlp"])
def test_chain_logprob_matches_sampling(name, obs_type):
    policy = build(name, obs_type)
    batch = make_batch(obs_type)
    policy.train()  # RL trains in train mode: the chain must still use deterministic (centre-crop) features
    actions, chain, logp = policy.sample_chain(batch["obs"], torch.Generator().manual_seed(3))
    k = policy.config.num_inference_steps
    assert actions.shape == (B, HORIZON, ACT) and chain.shape == (B, k + 1, HORIZON, ACT) and logp.shape == (B, k)
    assert torch.isfinite(logp).all()
    new = policy.chain_logprob(batch["obs"], chain)
    torch.testing.assert_close(new, logp, atol=1e-4, rtol=0)
    ratio = torch.exp(new - logp)
    assert torch.equal(ratio, torch.ones_like(ratio))  # PPO's first minibatch: exactly 1
    new.sum().backward()  # and it is differentiable
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.denoiser.parameters())
    again = policy.sample_chain(batch["obs"], torch.Generator().manual_seed(3))
    other = policy.sample_chain(batch["obs"], torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(again, (actions, chain, logp)))
    assert not torch.allclose(other[1][:, -1], chain[:, -1])


def test_ddim_matches_diffusers_scheduler():
    from diffusers import DDIMScheduler

    policy = build("diffusion-unet", "lowdim").eval()
    obs = make_batch("lowdim")["obs"]
    with torch.no_grad():
        cond = policy.conditioned(obs)
        x = torch.randn(B, HORIZON, ACT, generator=torch.Generator().manual_seed(0))
        ours = policy.ddim_sample_normalized(x, cond)
        sched = DDIMScheduler.from_config(policy.ddim_scheduler.config)
        sched.set_timesteps(policy.config.num_inference_steps)
        ref = x
        for t in sched.timesteps:
            ref = sched.step(policy.denoiser.step(ref, t, cond), t, ref).prev_sample
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    ddpm = policy.predict(obs, scheduler="ddpm", steps=20, generator=torch.Generator().manual_seed(0))
    assert ddpm.shape == (B, HORIZON, ACT) and torch.isfinite(ddpm).all()


@pytest.mark.parametrize("student_net", ["teacher's", "mlp", "mlp-sample"])
def test_distillation_moves_student_towards_teacher(tmp_path, student_net):
    teacher = build("diffusion-unet", "lowdim")
    batch = make_batch("lowdim")
    train(teacher, batch, steps=15)
    teacher.eval()
    overrides = {"mlp": {"denoiser": dataclasses.asdict(TINY_MLP)},
                 "mlp-sample": {"denoiser": dataclasses.asdict(TINY_MLP), "prediction_type": "sample"}}.get(student_net)
    student = ConsistencyPolicy.from_teacher(teacher, overrides)
    assert student.config.mode == "distilled"
    assert not any(p.requires_grad for p in student.encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(student.encoder.parameters(), teacher.encoder.parameters()))
    # Its own network (an MLP here, cheaper per call than the teacher's UNet) starts fresh; the same one starts
    # from the teacher's weights.
    own = student_net.startswith("mlp")
    assert type(student.denoiser) is (MLPDenoiser if own else type(teacher.denoiser))
    if not own:
        assert all(torch.equal(a, b) for a, b in zip(student.denoiser.parameters(), teacher.denoiser.parameters()))
    noise = [torch.randn(B, HORIZON, ACT, generator=torch.Generator().manual_seed(s)) for s in range(3)]

    def distill_loss() -> float:
        with torch.no_grad():
            return float(np.mean([float(student.distillation_loss(batch["obs"], n)) for n in noise]))

    before = distill_loss()
    encoder_before = [p.clone() for p in student.encoder.parameters()]
    train(student, batch, steps=40, lr=3e-3)
    after = distill_loss()
    assert after < 0.6 * before, (before, after)
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, student.encoder.parameters()))
    # The distilled student is a self-contained checkpoint that predicts in one call.
    student.eval()
    save_checkpoint(tmp_path / "student", student)
    loaded = load_checkpoint(tmp_path / "student", use_ema=False)
    assert torch.equal(predict_seeded(loaded, batch["obs"]), predict_seeded(student, batch["obs"]))
    assert loaded.predict(batch["obs"], steps=3).shape == (B, HORIZON, ACT)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_a_student_distils_the_sampler_its_teacher_ships(eta):
    """The target is the teacher's configured sampler with its per-step noise off: the DDIM ODE at eta 0, the
    mean path at eta 1 (the two differ, so distilling the wrong one would fail here)."""
    teacher = build("diffusion-unet", "lowdim")
    train(teacher, make_batch("lowdim"), steps=10)
    teacher.eval()
    teacher.config = replace(teacher.config, eta=eta, step_noise=0.0)
    student = ConsistencyPolicy.from_teacher(teacher)
    assert student.config.teacher_eta == eta
    obs = make_batch("lowdim", seed=1)["obs"]
    noise = torch.randn(B, HORIZON, ACT, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cond = teacher.conditioned(obs)
        shipped = teacher.ddim_sample_normalized(noise, cond, eta=eta, step_noise=0.0)
        other = teacher.ddim_sample_normalized(noise, cond, eta=1.0 - eta, step_noise=0.0)
        pred = student.consistency_fn(noise, student.ddim_timesteps[0].expand(B), student.conditioned(obs)[1])
        loss = student.distillation_loss(obs, noise)
    assert not torch.allclose(shipped, other, atol=1e-3)
    assert torch.allclose(loss, torch.nn.functional.mse_loss(pred, shipped))
    # The teacher's own predict, run from the same noise, is the same chunk (deterministic at step_noise 0).
    x = teacher.initial_noise(B, torch.Generator().manual_seed(5))
    assert torch.allclose(teacher.predict(obs, generator=torch.Generator().manual_seed(5)),
                          teacher.unnormalize_action(teacher.noise_to_chunk_normalized(x, cond).clamp(-1, 1)))
    # A resumed distillation must not pair the student with a teacher that samples differently.
    teacher.config = replace(teacher.config, eta=1.0 - eta)
    with pytest.raises(ValueError, match="student was distilled from eta"):
        student.attach_teacher(teacher)


def test_a_student_cannot_change_what_ties_it_to_its_teacher():
    teacher = build("diffusion-unet", "lowdim").eval()
    with pytest.raises(ValueError, match="takes teacher_steps from its teacher"):
        ConsistencyPolicy.from_teacher(teacher, {"teacher_steps": 5})
    with pytest.raises(ValueError, match="has no fields"):
        ConsistencyPolicy.from_teacher(teacher, {"widths": [8]})
    with pytest.raises(ValueError, match="takes prediction_type from its teacher"):  # a copy of its network
        ConsistencyPolicy.from_teacher(teacher, {"prediction_type": "sample"})
    own = ConsistencyPolicy.from_teacher(teacher, {"denoiser": dataclasses.asdict(TINY_MLP), "prediction_type": "sample"})
    assert own.config.prediction_type == "sample" and teacher.config.prediction_type == "epsilon"


def test_consistency_multistep_and_odd_horizon():
    spec, norm = make_spec_norm("lowdim")
    odd = PolicySpec(spec.obs_keys, ACT, n_obs=2, horizon=5, n_action_steps=4)  # RL-100's sim chunk
    cfg = ConsistencyPolicyConfig(encoder=TINY_ENC, denoiser=replace(TINY_UNET, widths=(16, 32, 32)))
    policy = make_policy("consistency", odd, norm, cfg).eval()
    obs = make_batch("lowdim")["obs"]
    for steps in (1, 2, 4):
        assert policy.predict(obs, steps=steps).shape == (B, 5, ACT)


def test_gaussian_log_prob_and_sampling():
    policy = build("gaussian", "lowdim").eval()
    obs = make_batch("lowdim")["obs"]
    mean = policy.predict(obs)
    sample = policy.predict(obs, deterministic=False, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(mean, sample)
    assert (policy.log_prob(obs, mean) > policy.log_prob(obs, sample)).all()  # the mode is most likely


def test_spec_messages_and_json():
    spec, _ = make_spec_norm("rgbd")
    assert PolicySpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert spec.lowdim_keys == ["eef_pos", "gripper_qpos"] and spec.rgb_keys == ["agentview_rgb"]
    with pytest.raises(ValueError, match="n_action_steps"):
        PolicySpec(spec.obs_keys, ACT, n_obs=2, horizon=8, n_action_steps=8)


def test_import_is_cheap():
    """Importing the package and its modules must not import diffusers (seconds); constructors do, lazily."""
    code = ("import sys, policies, policies.diffusion, policies.consistency, policies.checkpoint; "
            "assert 'diffusers' not in sys.modules, 'diffusers imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True)
