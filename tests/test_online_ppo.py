"""Online PPO on a toy reaching env (in-process, microseconds per step): rollout bookkeeping (discounts, terminal vs
truncated, the bootstrap observation), GAE by hand, the first minibatch's ratio, executed-only gradients,
the trainer end to end with resume, noise-space steering, and the student gate's decision."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from policies.checkpoint import load_checkpoint, save_checkpoint
from policies.consistency import ConsistencyPolicy
from robo.finetune import FinetuneConfig, build_actor, gate_decision, train_online
from robo.rl.noise_ppo import NoiseActor, load_noise_policy, save_noise_policy
from robo.rl.online import (ChainActor, GaussianActor, RolloutState, ValueNet, advantages_of, collect_rollout,
                            executed_mask, flat_observations, ppo_update)
from robo.rl.ppo import PPOConfig
from test_policies import ACT, build, make_batch

torch.set_num_threads(1)
GAMMA = 0.9


class ReachEnv(gym.Env):
    """Move a point to the origin: obs eef_pos (3,) and gripper_qpos (2,), action (4,) whose first three entries
    move it by 0.1 per unit. Success (terminal, reward 1) within 0.15 of the origin; truncated after ``horizon``."""

    metadata = {"render_modes": []}

    def __init__(self, horizon: int = 12, start: float = 0.25):
        self.horizon, self.start = horizon, start
        self.observation_space = spaces.Dict({"eef_pos": spaces.Box(-1, 1, (3,), np.float32),
                                              "gripper_qpos": spaces.Box(0, 0.04, (2,), np.float32)})
        self.action_space = spaces.Box(-1, 1, (ACT,), np.float32)

    def _obs(self):
        return {"eef_pos": self.pos.astype(np.float32), "gripper_qpos": np.full(2, 0.02, np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-self.start, self.start, 3)
        self.t = 0
        return self._obs(), {"success": False}

    def step(self, action):
        self.pos = np.clip(self.pos + 0.1 * np.clip(action[:3], -1, 1), -1, 1)
        self.t += 1
        success = bool(np.linalg.norm(self.pos) < 0.15)
        return self._obs(), float(success), success, (not success) and self.t >= self.horizon, {"success": success}


def toy_venv(n: int = 2, **kwargs) -> SyncVectorEnv:
    return SyncVectorEnv([lambda: ReachEnv(**kwargs) for _ in range(n)], autoreset_mode=AutoresetMode.SAME_STEP)


class ScriptedActor:
    """Always the same chunk; log-probs zero. Makes rollout bookkeeping checkable by hand."""

    num_logp_steps = 1

    def __init__(self, policy, action):
        self.policy, self.action = policy, np.asarray(action, np.float32)

    def act(self, obs, generator=None):
        b = obs["eef_pos"].shape[0]
        chunk = np.broadcast_to(self.action, (b, self.policy.spec.horizon, ACT)).copy()
        return chunk, torch.zeros(b, 1), torch.zeros(b, 1)


def test_rollout_discounts_terminals_and_bootstrap_observation():
    policy = build("diffusion-mlp", "lowdim")  # spec: n_obs 2, horizon 8, n_action_steps 4
    venv = toy_venv(2, horizon=6, start=0.0)  # starts at the origin: every first step succeeds
    state = RolloutState(venv, ["eef_pos", "gripper_qpos"], 2, seed=0)
    r = collect_rollout(state, ScriptedActor(policy, [0, 0, 0, 0]), chunks=2, gamma=GAMMA, n_exec=4, generator=None)
    assert r.env_steps == 2 * 4 * 2
    assert torch.equal(r.terminal, torch.ones(2, 2, dtype=torch.bool))
    assert torch.allclose(r.rewards, torch.ones(2, 2))  # reward at j = 0: gamma^0; the held steps earn nothing
    assert [s for s, _ in r.episodes] == [True] * 4 and [n for _, n in r.episodes] == [1] * 4

    venv = toy_venv(1, horizon=6, start=0.9)  # far away, pushed further out: never succeeds, truncates at step 6
    state = RolloutState(venv, ["eef_pos", "gripper_qpos"], 2, seed=1)
    r = collect_rollout(state, ScriptedActor(policy, [1, 1, 1, 0]), chunks=2, gamma=GAMMA, n_exec=4, generator=None)
    assert r.terminal.sum() == 0 and r.episode_end[:, 0].tolist() == [False, True]
    assert r.episodes == [(False, 6)]
    # The bootstrap history of the truncated chunk is the finished episode's last two observations, not the reset's.
    start = r.obs["eef_pos"][0, 0, -1]
    last = r.next_obs["eef_pos"][1, 0]
    assert np.allclose(last, [np.clip(start + 0.5, -1, 1), np.clip(start + 0.6, -1, 1)], atol=1e-6)
    assert not np.allclose(state.hist["eef_pos"][0, -1], last[-1])  # the env has moved on to a new episode
    # The next decision after the first chunk bootstraps from exactly the history the second chunk was sampled at.
    assert np.array_equal(r.next_obs["eef_pos"][0], r.obs["eef_pos"][1])


def test_gae_matches_a_hand_computation():
    policy = build("diffusion-mlp", "lowdim")
    value = ValueNet(policy, hidden=(8,))
    torch.nn.init.zeros_(value.net[-1].weight)
    torch.nn.init.constant_(value.net[-1].bias, 0.5)  # V = 0.5 everywhere
    venv = toy_venv(1, horizon=6, start=0.9)
    state = RolloutState(venv, ["eef_pos", "gripper_qpos"], 2, seed=1)
    r = collect_rollout(state, ScriptedActor(policy, [1, 1, 1, 0]), chunks=3, gamma=GAMMA, n_exec=4, generator=None)
    r.rewards[:, 0] = torch.tensor([0.2, 0.0, 1.0])
    r.terminal[:, 0] = torch.tensor([False, False, True])
    r.episode_end[:, 0] = torch.tensor([False, True, True])  # chunk 1 truncated, chunk 2 terminal
    lam, g = 0.8, GAMMA ** 4
    adv, ret, v = advantages_of(r, value, GAMMA, 4, lam)
    d2 = 1.0 - 0.5  # terminal: no bootstrap
    d1 = 0.0 + g * 0.5 - 0.5  # truncated: bootstraps V(final obs) but the recursion stops
    d0 = 0.2 + g * 0.5 - 0.5
    expected = torch.tensor([d0 + g * lam * d1, d1, d2])
    assert torch.allclose(adv[:, 0], expected, atol=1e-6)
    assert torch.allclose(ret, adv + v)


def _chain_rollout(actor, chunks=4):
    venv = toy_venv(2)
    state = RolloutState(venv, ["eef_pos", "gripper_qpos"], 2, seed=3)
    return collect_rollout(state, actor, chunks, GAMMA, 4, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", ["chain", "gaussian", "noise"])
def test_first_minibatch_ratio_is_one_and_update_moves_weights(kind):
    policy = build("gaussian" if kind == "gaussian" else "diffusion-mlp", "lowdim")
    if kind == "noise":
        policy = ConsistencyPolicy.from_teacher(policy)
    cfg = FinetuneConfig(method=kind)
    actor = build_actor(policy, cfg)
    value = ValueNet(policy, hidden=(16,))
    r = _chain_rollout(actor)
    assert r.logp.shape == (4, 2, actor.num_logp_steps)
    adv, ret, v = advantages_of(r, value, GAMMA, 4, 0.95)
    adv = adv + torch.linspace(-1, 1, adv.numel()).reshape(adv.shape)  # a non-degenerate signal
    before = [p.detach().clone() for p in actor.parameters()]
    opt = torch.optim.Adam([*actor.parameters(), *value.parameters()], lr=1e-3)
    stats = ppo_update(actor, value, r, adv, ret, v, opt, PPOConfig(clip_eps=0.2), epochs=2, minibatch=4,
                       vf_coef=0.5, policy_update=True, progress=0.0, generator=np.random.default_rng(0))
    assert stats.first_ratio_max_dev < 1e-5, stats.first_ratio_max_dev
    assert stats.minibatches == 4 and len(stats.ratio_quantiles) == actor.num_logp_steps
    assert any(not torch.equal(a, b) for a, b in zip(before, actor.parameters()))


@pytest.mark.parametrize("kind", ["chain", "gaussian"])
def test_bc_anchor_alone_moves_the_policy_towards_its_data(kind):
    """Advantages that carry no signal (all equal) leave the policy where it is; with the behaviour-cloning anchor
    the same update moves it, and towards its data (its BC loss on a fixed draw falls)."""
    batch = make_batch("lowdim", seed=5, n=32)

    def bc_loss_of(policy):
        torch.manual_seed(11)  # the same timesteps and noise for every evaluation of the diffusion loss
        with torch.no_grad():
            return float(policy.compute_loss(batch))

    results = {}
    for anchored in (False, True):
        policy = build("gaussian" if kind == "gaussian" else "diffusion-mlp", "lowdim")
        actor = build_actor(policy, FinetuneConfig(method=kind))
        value = ValueNet(policy, hidden=(16,))
        r = _chain_rollout(actor)
        _, ret, v = advantages_of(r, value, GAMMA, 4, 0.95)
        before, loss_before = [p.detach().clone() for p in actor.parameters()], bc_loss_of(policy)
        opt = torch.optim.Adam([*actor.parameters(), *value.parameters()], lr=1e-3)
        ppo_update(actor, value, r, torch.zeros_like(ret), ret, v, opt, PPOConfig(clip_eps=0.2), epochs=5,
                   minibatch=8, vf_coef=0.5, policy_update=True, progress=0.0, generator=np.random.default_rng(0),
                   aux_loss=(lambda _obs: policy.compute_loss(batch)) if anchored else None)
        moved = any(not torch.equal(a, b) for a, b in zip(before, actor.parameters()))
        results[anchored] = (moved, loss_before, bc_loss_of(policy))
    assert results[False][0] is False, "zero advantages moved the policy"
    moved, loss_before, loss_after = results[True]
    assert moved and loss_after < loss_before, results[True]


def test_bc_anchor_is_refused_for_noise_space_ppo(tmp_path):
    student = ConsistencyPolicy.from_teacher(build("diffusion-mlp", "lowdim"))
    ckpt = save_checkpoint(tmp_path / "st", student, {"task": "Reach", "fps": 20, "dataset": str(tmp_path / "d")})
    cfg = FinetuneConfig(checkpoint=ckpt, output_dir=tmp_path / "ft", method="noise", env_steps=32, bc_coef=1.0,
                         chunks_per_iter=4, epochs=1, minibatch_size=4, eval_episodes=0, progress=False)
    with pytest.raises(ValueError, match="noise-space PPO leaves it frozen"):
        train_online(cfg, venv=toy_venv(2))


def test_only_executed_actions_carry_likelihood():
    policy = build("diffusion-mlp", "lowdim")
    mask = executed_mask(policy.spec)
    assert mask.tolist() == [False, True, True, True, True, False, False, False]  # n_obs 2, 4 executed
    obs = make_batch("lowdim", n=3)["obs"]
    chain_actor = ChainActor(policy, sigma_floor=0.1)
    _, chain, logp = chain_actor.act(obs, torch.Generator().manual_seed(0))
    assert torch.allclose(chain_actor.logprob(obs, chain), logp, atol=1e-5)
    moved = chain.clone()
    moved[:, -1, ~mask] += 0.7  # the final sample is only ever a target: its unexecuted part must not count
    assert torch.equal(chain_actor.logprob(obs, moved)[:, -1], chain_actor.logprob(obs, chain)[:, -1])
    moved[:, -1, mask] += 0.1
    assert not torch.allclose(chain_actor.logprob(obs, moved)[:, -1], chain_actor.logprob(obs, chain)[:, -1])
    full = ChainActor(policy, sigma_floor=0.1, executed_only=False)
    assert not torch.allclose(full.logprob(obs, chain), logp)

    gauss = build("gaussian", "lowdim")
    actor = GaussianActor(gauss)
    _, record, _ = actor.act(obs, torch.Generator().manual_seed(0))
    actor.logprob(obs, record).sum().backward()
    grad = gauss.mean_net[-1].bias.grad.reshape(policy.spec.horizon, ACT)
    assert torch.all(grad[~mask] == 0) and torch.all(grad[mask].abs().sum(-1) > 0)
    assert torch.all(gauss.log_std.grad[~mask] == 0)


def test_chain_mean_eta_zero_is_the_shipped_deterministic_sampler():
    """With mean_eta 0 and the exploration noise squeezed to nothing, the chain is exactly what predict() ships;
    the default (eta 1, sample_chain's means) is a different sampler."""
    policy = build("diffusion-mlp", "lowdim")
    obs = make_batch("lowdim", n=3)["obs"]
    actor = ChainActor(policy, sigma_floor=0.1, noise_clip=1e-9, mean_eta=0.0)
    actions, _, _ = actor.act(obs, torch.Generator().manual_seed(5))
    shipped = policy.predict(obs, generator=torch.Generator().manual_seed(5)).numpy()
    assert np.allclose(actions, shipped, atol=1e-5)
    ddpm_like = ChainActor(policy, sigma_floor=0.1, noise_clip=1e-9)
    assert not np.allclose(ddpm_like.act(obs, torch.Generator().manual_seed(5))[0], shipped, atol=1e-3)


def test_step_noise_zero_ships_the_mean_path_of_the_trained_chain():
    """predict with eta 1 and step_noise 0 runs the DDPM-like means the chain actor samples around (its noise squeezed
    to nothing): deterministic given the initial noise, and not the eta-0 sampler shipped by default."""
    policy = build("diffusion-mlp", "lowdim")
    obs = make_batch("lowdim", n=3)["obs"]
    eta0 = policy.predict(obs, generator=torch.Generator().manual_seed(5)).numpy()
    policy.config.eta, policy.config.step_noise = 1.0, 0.0
    mean_path = policy.predict(obs, generator=torch.Generator().manual_seed(5)).numpy()
    chain = ChainActor(policy, sigma_floor=1e-4, noise_clip=1e-9).act(obs, torch.Generator().manual_seed(5))[0]
    assert np.allclose(mean_path, chain, atol=1e-4)
    assert not np.allclose(mean_path, eta0, atol=1e-3)
    policy.config.step_noise = 1.0  # eta 1 proper: the same initial noise, fresh noise at every step
    assert not np.allclose(policy.predict(obs, generator=torch.Generator().manual_seed(5)).numpy(), mean_path,
                           atol=1e-3)


def test_last_k_steps_only_enter_the_gradient():
    policy = build("diffusion-mlp", "lowdim")
    actor = ChainActor(policy, trainable_last_k=3)
    obs = make_batch("lowdim", n=3)["obs"]
    _, chain, _ = actor.act(obs, torch.Generator().manual_seed(0))
    logp = actor.logprob(obs, chain)
    params = actor.parameters()
    early = torch.autograd.grad(logp[:, :-3].sum(), params, retain_graph=True, allow_unused=True)
    late = torch.autograd.grad(logp[:, -3:].sum(), params, allow_unused=True)
    assert all(g is None or torch.all(g == 0) for g in early)
    assert any(g is not None and torch.any(g != 0) for g in late)
    with pytest.raises(ValueError, match="trainable_last_k"):
        ChainActor(policy, trainable_last_k=99)


def test_a_steering_net_refuses_a_diffusion_base_whose_sampler_changed_since_training(tmp_path):
    """The steering net learnt noise for the base's decoding map (its DDIM steps and eta). Editing those in the
    base's config.json afterwards would silently change the steered policy: loading refuses it in one line."""
    base = build("diffusion-mlp", "lowdim").eval()
    save_checkpoint(tmp_path / "base", base)
    save_noise_policy(tmp_path / "noise", NoiseActor(load_checkpoint(tmp_path / "base")), str(tmp_path / "base"))
    obs = make_batch("lowdim", n=2)["obs"]
    draw = lambda p: p.predict(obs, generator=torch.Generator().manual_seed(3))  # noqa: E731
    before = draw(load_noise_policy(tmp_path / "noise").shipped())
    config_path = tmp_path / "base" / "config.json"
    config = json.loads(config_path.read_text())
    config["policy_config"].update(eta=1.0, step_noise=0.0)  # an inference field: the checkpoint itself loads
    config_path.write_text(json.dumps(config))
    assert not torch.allclose(draw(load_checkpoint(tmp_path / "base")), draw(base), atol=1e-4)
    with pytest.raises(ValueError, match="steering net was trained on the base decoding with") as err:
        load_noise_policy(tmp_path / "noise")
    assert "\n" not in str(err.value)
    config["policy_config"].update(eta=0.0)  # restored: it loads and draws what it drew before
    config_path.write_text(json.dumps(config))
    assert torch.equal(draw(load_noise_policy(tmp_path / "noise").shipped()), before)


def test_noise_prior_kl_is_zero_at_the_start_and_the_closed_form_after():
    actor = NoiseActor(ConsistencyPolicy.from_teacher(build("diffusion-mlp", "lowdim")))
    obs = make_batch("lowdim", n=4)["obs"]
    with torch.no_grad():
        assert float(actor.prior_kl(obs)) == 0.0  # the steered policy starts as the base: N(0, I) exactly
    with torch.no_grad():
        actor.net[-1].bias.fill_(0.5)  # mean 2.5 tanh(0.5 / 2.5) in every dimension
        actor.log_std.fill_(-0.2)
    m, s = 2.5 * np.tanh(0.5 / 2.5), np.exp(-0.2)
    with torch.no_grad():
        assert float(actor.prior_kl(obs)) == pytest.approx(0.5 * (s ** 2 + m ** 2 - 1) - np.log(s), rel=1e-5)


def test_noise_prior_anchor_bounds_the_drift_of_the_steering():
    """Advantages that are pure noise move the steering away from the base's N(0, I); the prior anchor, same data,
    same seeds, keeps it far closer (the drift that took a Lift run from 0.40 to 0.00, docs/online_rl.md)."""
    kl_after = {}
    for coef in (0.0, 1.0):
        torch.manual_seed(0)
        actor = NoiseActor(ConsistencyPolicy.from_teacher(build("diffusion-mlp", "lowdim")))
        value = ValueNet(actor.policy, hidden=(16,))
        r = _chain_rollout(actor, chunks=8)
        _, ret, v = advantages_of(r, value, GAMMA, 4, 0.95)
        noise_adv = torch.randn(ret.shape, generator=torch.Generator().manual_seed(1))
        opt = torch.optim.Adam([*actor.parameters(), *value.parameters()], lr=3e-3)
        for it in range(10):
            ppo_update(actor, value, r, noise_adv, ret, v, opt, PPOConfig(clip_eps=0.2, target_kl=0.0), epochs=4,
                       minibatch=8, vf_coef=0.5, policy_update=True, progress=0.0,
                       generator=np.random.default_rng(it),
                       aux_loss=(lambda obs: coef * actor.prior_kl(obs)) if coef else None)
        with torch.no_grad():
            kl_after[coef] = float(actor.prior_kl(flat_observations(r.obs)))
    assert kl_after[0.0] > 0 and kl_after[1.0] < 0.5 * kl_after[0.0], kl_after


def test_noise_policy_starts_as_the_base_policy():
    student = ConsistencyPolicy.from_teacher(build("diffusion-mlp", "lowdim"))
    actor = NoiseActor(student)
    obs = make_batch("lowdim", n=3)["obs"]
    z = student.initial_noise(3, torch.Generator().manual_seed(4)) if hasattr(student, "initial_noise") else \
        torch.randn(3, student.spec.horizon, ACT, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(actor.decode(obs, z), student.predict(obs, generator=torch.Generator().manual_seed(4)),
                          atol=1e-6)
    mean, std = actor._dist(obs)
    assert torch.all(mean == 0) and torch.allclose(std, torch.ones_like(std))
    steered = actor.shipped().predict(obs, generator=torch.Generator().manual_seed(4))  # what evaluation runs
    assert torch.allclose(steered, student.predict(obs, generator=torch.Generator().manual_seed(4)), atol=1e-6)
    assert not any(p.requires_grad for p in student.parameters())


@pytest.mark.parametrize("kind", ["diffusion-mlp", "gaussian"])
def test_trainer_runs_saves_and_resumes(tmp_path, kind):
    ckpt = save_checkpoint(tmp_path / "bc", build(kind, "lowdim"), {"task": "Reach", "fps": 20})
    cfg = FinetuneConfig(checkpoint=ckpt, output_dir=tmp_path / "ft", env_steps=64, chunks_per_iter=4, epochs=1,
                         minibatch_size=4, value_warmup_iters=1, eval_episodes=0, progress=False)
    summary = train_online(cfg, venv=toy_venv(2))
    assert summary["env_steps"] == 64 and summary["iterations"] == 2 and 0 < summary["steps_per_s_ratio"] <= 1
    ppo = tmp_path / "ft" / "ppo"
    assert (ppo / "success_curve.png").stat().st_size > 0 and (ppo / "last" / "online_state.pt").exists()
    refined = load_checkpoint(ppo / "best")
    extra = json.loads((ppo / "best" / "config.json").read_text())["extra"]
    assert extra["init_checkpoint"] == str(ckpt) and extra["env_steps"] == 64
    assert refined.kind == load_checkpoint(ckpt).kind
    with pytest.raises(ValueError, match="--resume"):
        train_online(cfg, venv=toy_venv(2))
    cfg.resume, cfg.env_steps = True, 96
    summary = train_online(cfg, venv=toy_venv(2))
    assert summary["env_steps"] == 96 and summary["iterations"] == 3


def test_gaussian_std_sets_where_exploration_starts_and_a_resume_keeps_the_learned_one(tmp_path, monkeypatch):
    import robo.rl.online as online

    sampled_at = []  # the std each rollout samples with
    real_collect = online.collect_rollout

    def collect(state, actor, *args, **kwargs):
        sampled_at.append(actor.policy.log_std.detach().exp().clone())
        return real_collect(state, actor, *args, **kwargs)

    monkeypatch.setattr(online, "collect_rollout", collect)
    start = build("gaussian", "lowdim")
    assert torch.allclose(start.log_std.exp(), torch.tensor(0.3679), atol=1e-3)  # the config's init, not 0.1
    ckpt = save_checkpoint(tmp_path / "bc", start, {"task": "Reach", "fps": 20})
    cfg = FinetuneConfig(checkpoint=ckpt, output_dir=tmp_path / "ft", env_steps=64, chunks_per_iter=4, epochs=2,
                         minibatch_size=4, value_warmup_iters=0, eval_episodes=0, progress=False, lr=1e-2,
                         gaussian_std=0.1)
    train_online(cfg, venv=toy_venv(2))
    assert torch.allclose(sampled_at[0], torch.tensor(0.1))
    learned = load_checkpoint(tmp_path / "ft" / "ppo" / "last").log_std.exp()
    assert not torch.allclose(learned, torch.tensor(0.1))  # PPO moved it on from there
    cfg.resume, cfg.env_steps = True, 96
    train_online(cfg, venv=toy_venv(2))
    assert torch.equal(sampled_at[2], learned)  # not reset to 0.1
    history = json.loads((tmp_path / "ft" / "ppo" / "summary.json").read_text())["history"]
    assert len(history["gaussian_std_mean"]) == 3 and history["gaussian_std_mean"][-1] != pytest.approx(0.1)
    with pytest.raises(ValueError, match="outside the policy's range"):
        build_actor(build("gaussian", "lowdim"), FinetuneConfig()).set_std(0.01)
    with pytest.raises(ValueError, match="not one"):
        train_online(FinetuneConfig(checkpoint=save_checkpoint(tmp_path / "d", build("diffusion-mlp", "lowdim"),
                                                               {"task": "Reach", "fps": 20}),
                                    output_dir=tmp_path / "ft2", gaussian_std=0.1, eval_episodes=0, progress=False),
                     venv=toy_venv(2))


def test_best_keeps_the_starting_policy_when_ppo_only_gets_worse(tmp_path):
    start = build("gaussian", "lowdim")
    ckpt = save_checkpoint(tmp_path / "bc", start, {"task": "Reach", "fps": 20})
    calls = []

    def evaluator(policy, seed, episodes, name):  # scores the starting policy best, every later one worse
        calls.append(name)
        return {"success_rate": 1.0 if name == "iter0" else 0.5}

    cfg = FinetuneConfig(checkpoint=ckpt, output_dir=tmp_path / "ft", env_steps=64, chunks_per_iter=4, epochs=2,
                         minibatch_size=4, value_warmup_iters=0, eval_every=1, eval_episodes=3, progress=False,
                         lr=1e-2)
    train_online(cfg, venv=toy_venv(2), evaluator=evaluator)
    assert calls == ["iter0", "iter1", "iter2"]
    best = load_checkpoint(tmp_path / "ft" / "ppo" / "best")
    last = load_checkpoint(tmp_path / "ft" / "ppo" / "last")
    assert all(torch.equal(a, b) for a, b in zip(best.state_dict().values(), load_checkpoint(ckpt).state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(best.state_dict().values(), last.state_dict().values()))


def test_noise_trainer_runs(tmp_path):
    student = ConsistencyPolicy.from_teacher(build("diffusion-mlp", "lowdim"))
    ckpt = save_checkpoint(tmp_path / "st", student, {"task": "Reach", "fps": 20})
    cfg = FinetuneConfig(checkpoint=ckpt, output_dir=tmp_path / "ft", method="noise", env_steps=32,
                         chunks_per_iter=4, epochs=1, minibatch_size=4, eval_episodes=0, progress=False)
    summary = train_online(cfg, venv=toy_venv(2))
    assert summary["env_steps"] == 32
    saved = load_noise_policy(tmp_path / "ft" / "ppo" / "best")  # what robo bench finetune evaluates
    steered = saved.shipped()
    obs = make_batch("lowdim", n=2)["obs"]
    assert steered.predict(obs).shape == (2, student.spec.horizon, ACT) and steered.spec == student.spec


def test_wrong_method_for_the_checkpoint_is_one_line():
    with pytest.raises(ValueError, match="chain PPO needs a diffusion checkpoint"):
        build_actor(build("gaussian", "lowdim"), FinetuneConfig(method="chain"))
    with pytest.raises(ValueError, match="--method noise"):
        build_actor(ConsistencyPolicy.from_teacher(build("diffusion-mlp", "lowdim")), FinetuneConfig())


def test_student_gate_decision():
    teacher = [True] * 90 + [False] * 10
    assert gate_decision(teacher, [True] * 88 + [False] * 12, 0.02)["passed"]
    fail = gate_decision(teacher, [True] * 87 + [False] * 13, 0.02)
    assert not fail["passed"] and "0.030 below" in fail["reason"]
    short = gate_decision(teacher[:50], teacher[:50], 0.02)
    assert not short["passed"] and "at least 100" in short["reason"]
    assert gate_decision(teacher, [True] * 100, 0.02)["passed"]  # a better student ships


def _saved_critic(tmp_path, **meta):
    from robo.rl.critic import IQLConfig, IQLCritic

    critic = IQLCritic(5, ACT * 4, IQLConfig(hidden=(16, 16)))
    critic.s_norm.mean.copy_(torch.tensor([0.1, -0.1, 0.0, 0.02, 0.02]))
    critic.s_norm.std.copy_(torch.tensor([0.2, 0.2, 0.2, 0.01, 0.01]))
    fields = {"task": "Reach", "state_keys": ["eef_pos", "gripper_qpos"], "gamma": GAMMA, "chunk": 4, **meta}
    critic.save(tmp_path / "critic", "fingerprint", {k: v for k, v in fields.items() if v is not None})
    return critic, tmp_path / "critic"


def test_offline_critic_becomes_the_online_value(tmp_path):
    from robo.rl.critic import CriticMismatch, CriticValue

    critic, path = _saved_critic(tmp_path)
    value = CriticValue.from_saved(path, "Reach", GAMMA, 4, ["eef_pos", "gripper_qpos"])
    obs = {"eef_pos": torch.randn(4, 2, 3), "gripper_qpos": torch.rand(4, 2, 2) * 0.04}
    state = torch.cat([obs["eef_pos"][:, -1], obs["gripper_qpos"][:, -1]], dim=1)  # the newest step, critic order
    assert torch.allclose(value(obs), critic.value(state))
    value(obs).sum().backward()
    assert all(p.grad is not None for p in value.v.parameters())  # PPO's value loss fine-tunes it
    for meta, args, match in [({}, ("Lift", GAMMA, 4, ["eef_pos", "gripper_qpos"]), "fitted on task 'Reach'"),
                              ({}, ("Reach", 0.99, 4, ["eef_pos", "gripper_qpos"]), "pass the same --gamma"),
                              ({}, ("Reach", GAMMA, 8, ["eef_pos", "gripper_qpos"]), "executes 8"),
                              ({}, ("Reach", GAMMA, 4, ["eef_pos"]), r"reads \['gripper_qpos'\]"),
                              ({"state_keys": None}, ("Reach", GAMMA, 4, ["eef_pos"]), "does not record its state")]:
        _, path = _saved_critic(tmp_path / str(len(match)), **meta)
        with pytest.raises(CriticMismatch, match=match) as err:
            CriticValue.from_saved(path, *args)
        assert "\n" not in str(err.value)


def test_trainer_starts_from_the_offline_critic_without_warmup(tmp_path):
    _, path = _saved_critic(tmp_path)
    ckpt = save_checkpoint(tmp_path / "bc", build("gaussian", "lowdim"), {"task": "Reach", "fps": 20})
    cfg = FinetuneConfig(checkpoint=ckpt, output_dir=tmp_path / "ft", env_steps=32, chunks_per_iter=4, epochs=1,
                         minibatch_size=4, value_warmup_iters=5, value_from_critic=path, gamma=GAMMA,
                         eval_episodes=0, progress=False)
    train_online(cfg, venv=toy_venv(2))
    before, after = load_checkpoint(ckpt), load_checkpoint(tmp_path / "ft" / "ppo" / "last", use_ema=False)
    # With the Monte-Carlo warm-up (5 iterations) the first iteration would move only the value net.
    moved = [not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values())]
    assert any(moved)
    with pytest.raises(ValueError, match="not both"):
        train_online(FinetuneConfig(**{**cfg.__dict__, "output_dir": tmp_path / "ft2", "value_init": path}),
                     venv=toy_venv(2))
    with pytest.raises(ValueError, match="sparse reward it was trained on"):  # potential shaping changes V
        train_online(FinetuneConfig(**{**cfg.__dict__, "output_dir": tmp_path / "ft3", "reward": "potential"}),
                     venv=toy_venv(2))


def _learn_reach(tmp_path, kind: str) -> tuple[float, float]:
    """Training success of the first and last 10 of 80 PPO iterations on the toy reach task, from an untrained
    policy (~10 % success by chance), through the real trainer."""
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "bc", build(kind, "lowdim"), {"task": "Reach", "fps": 20})
    cfg = FinetuneConfig(checkpoint=ckpt, output_dir=tmp_path / "ft", env_steps=40960, chunks_per_iter=32,
                         epochs=5, minibatch_size=64, value_warmup_iters=2, eval_episodes=0, progress=False,
                         lr=1e-3, clip_eps=0.2, target_kl=0.0)
    history = train_online(cfg, venv=toy_venv(4, horizon=16, start=0.35))["history"]["train_success"]
    return float(np.mean(history[:10])), float(np.mean(history[-10:]))


def test_gaussian_ppo_learns_the_toy_reach(tmp_path):
    """The trainer core learns: 0.09 -> 1.0 in 40k env steps (~20 s)."""
    first, last = _learn_reach(tmp_path, "gaussian")
    assert first < 0.3 and last > 0.8, (first, last)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="chain PPO does not learn the toy reach (0.13 -> 0.11; docs/online_rl.md, "
                                       "'Chain PPO does not learn yet'): the known defect behind issue 8's headline")
def test_chain_ppo_learns_the_toy_reach(tmp_path):
    first, last = _learn_reach(tmp_path, "diffusion-mlp")
    assert last > first + 0.3, (first, last)
