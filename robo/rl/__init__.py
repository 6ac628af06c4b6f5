"""Offline improvement gated by off-policy evaluation (RL-100 stage 2), one stage per file:

transitions (chunk-level rewards and discounts) -> critic (IQL) -> dynamics (ensemble) -> ope (AM-Q, FQE) ->
gate (accept or roll back) -> ppo (clipped surrogate core, shared with online PPO) -> offline (PPO across the
denoising steps) -> improve (the loop, ``robo improve``) -> flywheel (rollouts, merge, retrain); unio4 (baseline).
"""
