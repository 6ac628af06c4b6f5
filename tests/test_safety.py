"""The safety filter, stage by stage: each property is checked over many random inputs (seeded, so a failure
reproduces) and on the hand-picked edge that motivates it."""

import numpy as np
import pytest

from hardware.kinematics import FRANKA, UR5E
from hardware.safety import Hold, MeasuredState, SafeCommand, SafetyFilter, SafetyLimits, Watchdog

HOME_Q = np.array([0.0, -np.pi / 4, 0.0, -3 * np.pi / 4, 0.0, np.pi / 2, np.pi / 4])
HOME_POS = FRANKA.forward(HOME_Q)[:3, 3]
UP_QUAT = np.array([1.0, 0.0, 0.0, 0.0])  # gripper pointing down


def state(pos=HOME_POS, quat=UP_QUAT, q=HOME_Q):
    return MeasuredState(np.asarray(pos, float), np.asarray(quat, float), None if q is None else np.asarray(q, float))


def random_actions(n, seed=0, scale=3.0):
    return np.random.default_rng(seed).uniform(-scale, scale, size=(n, 7))


def quat_angle(q1, q2):
    return 2 * np.arccos(min(1.0, abs(float(np.dot(q1, q2)))))


# ---------------------------------------------------------------------------------------------- 1. NaN / shape
@pytest.mark.parametrize("action,why", [
    (np.full(7, np.nan), "NaN"), (np.array([0, 0, np.inf, 0, 0, 0, 0.0]), "NaN"), (np.zeros(6), "shape"),
    (np.zeros((1, 7)), "shape")])
def test_malformed_actions_hold(action, why):
    result = SafetyFilter()(action, state())
    assert isinstance(result, Hold) and why in result.reason


@pytest.mark.parametrize("bad,why", [
    (state(pos=[np.nan, 0, 0]), "NaN"), (state(quat=[0, 0, 0, 2.0]), "unit quaternion"),
    (state(q=np.zeros(6)), "joints have shape"), (state(q=np.r_[HOME_Q[:6], np.nan]), "NaN")])
def test_malformed_state_holds(bad, why):
    result = SafetyFilter()(np.zeros(7), bad)
    assert isinstance(result, Hold) and why in result.reason


# ---------------------------------------------------------------------------------------------- 2. observation age
def test_old_and_future_observations_hold():
    flt = SafetyFilter(SafetyLimits(max_obs_age_s=0.1))
    assert "ms old" in flt(np.zeros(7), state(), obs_stamp=9.8, now=10.0).reason
    assert "future" in flt(np.zeros(7), state(), obs_stamp=10.5, now=10.0).reason
    assert isinstance(flt(np.zeros(7), state(), obs_stamp=9.95, now=10.0), SafeCommand)


# ---------------------------------------------------------------------------------------------- 3-4. clip, integrate
def test_every_step_is_bounded_per_axis_and_integrated_from_the_measured_pose():
    lim = SafetyLimits()
    flt = SafetyFilter(lim, FRANKA)
    for a in random_actions(300):
        cmd = flt(a, state())
        assert isinstance(cmd, SafeCommand)
        assert np.all(np.abs(cmd.target_pos - HOME_POS) <= lim.output_max_pos + 1e-12)
        assert quat_angle(cmd.target_quat, UP_QUAT) <= np.sqrt(3) * lim.output_max_rot + 1e-9
        assert np.all(np.abs(cmd.action[:6]) <= 1.0 + 1e-12)
        np.testing.assert_allclose(cmd.target_pos, HOME_POS + cmd.action[:3] * lim.output_max_pos, atol=1e-12)


def test_in_range_action_passes_unchanged():
    """Inside every limit the filter is transparent: simulation scores what the policy asked for."""
    a = np.array([0.3, -0.2, 0.1, 0.05, -0.02, 0.1, 1.0])
    cmd = SafetyFilter(SafetyLimits(), FRANKA)(a, state())
    np.testing.assert_allclose(cmd.action, a, atol=1e-12)
    assert cmd.interventions == ()


def test_clip_is_reported():
    cmd = SafetyFilter()(np.array([5.0, 0, 0, 0, 0, 0, -1]), state(q=None))
    assert cmd.action[0] == 1.0 and "delta_clip" in cmd.interventions


# ---------------------------------------------------------------------------------------------- 5. workspace box
def test_targets_never_leave_the_box_and_return_one_step_at_a_time():
    lim = SafetyLimits()
    flt = SafetyFilter(lim)
    rng = np.random.default_rng(1)
    for a in random_actions(300, seed=2):
        inside = rng.uniform(lim.workspace_low, lim.workspace_high)
        cmd = flt(a, state(pos=inside, q=None))
        assert np.all(cmd.target_pos >= np.array(lim.workspace_low) - 1e-12)
        assert np.all(cmd.target_pos <= np.array(lim.workspace_high) + 1e-12)
    far = np.array([1.5, 0.0, 0.5])  # 0.65 m outside in x: the target comes back by one step, not a jump
    cmd = flt(np.zeros(7), state(pos=far, q=None))
    np.testing.assert_allclose(cmd.target_pos, far - [lim.output_max_pos, 0, 0])
    assert "workspace" in cmd.interventions


# ---------------------------------------------------------------------------------------------- 6. joints
def test_joint_velocity_limit_scales_the_whole_step():
    lim = SafetyLimits(joint_max_vel=(0.1,) * 7)  # 5 mrad per 50 ms period
    flt = SafetyFilter(lim, FRANKA)
    for a in random_actions(100, seed=3):
        cmd = flt(a, state())
        assert np.all(np.abs(cmd.joint_target - HOME_Q) <= 0.1 * lim.control_dt + 1e-9)
    cmd = flt(np.array([1.0, 0, 0, 0, 0, 0, 0]), state())
    assert "joint_velocity" in cmd.interventions and 0 < cmd.action[0] < 1  # direction kept, magnitude reduced


def test_joint_position_limits_are_never_crossed_but_an_arm_may_return():
    lim = SafetyLimits()
    flt = SafetyFilter(lim, FRANKA)
    near = HOME_Q.copy()
    near[3] = lim.joint_upper[3] - lim.joint_margin - 1e-3  # elbow almost straight
    pos = FRANKA.forward(near)[:3, 3]
    upper = np.array(lim.joint_upper) - lim.joint_margin
    lower = np.array(lim.joint_lower) + lim.joint_margin
    for a in random_actions(300, seed=4):
        cmd = flt(a, state(pos=pos, q=near))
        assert np.all(cmd.joint_target <= np.maximum(upper, near) + 1e-9)
        assert np.all(cmd.joint_target >= np.minimum(lower, near) - 1e-9)
    assert any("joint_limits" in flt(a, state(pos=pos, q=near)).interventions for a in random_actions(50, seed=5))


def test_without_kinematics_an_arm_outside_its_joint_limits_is_stopped():
    flt = SafetyFilter(SafetyLimits())
    out = HOME_Q.copy()
    out[0] = 3.0
    cmd = flt(np.array([1.0, 1, 1, 1, 1, 1, 1]), state(q=out))
    np.testing.assert_allclose(cmd.action[:6], 0)
    np.testing.assert_allclose(cmd.target_pos, HOME_POS)
    assert cmd.gripper == 1.0 and "joint_limits" in cmd.interventions


def test_ur5e_chain_and_limits_work_together():
    lim = SafetyLimits(joint_lower=(-6.28,) * 6, joint_upper=(6.28,) * 6, joint_max_vel=(3.14,) * 6,
                       workspace_low=(-0.9, -0.9, 0.0), workspace_high=(0.9, 0.9, 1.0))
    q = np.array([0.0, -1.57, 1.57, -1.57, -1.57, 0.0])
    pos = UR5E.forward(q)[:3, 3]
    cmd = SafetyFilter(lim, UR5E)(np.array([0.5, 0, 0, 0, 0, 0, 0]), state(pos=pos, q=q))
    assert cmd.joint_target.shape == (6,)
    moved = UR5E.forward(cmd.joint_target)[:3, 3] - pos  # the joint target realises the Cartesian step
    np.testing.assert_allclose(moved, [0.025, 0, 0], atol=2e-3)
    with pytest.raises(ValueError, match="6 joints"):
        SafetyFilter(SafetyLimits(), UR5E)


# ---------------------------------------------------------------------------------------------- 7. gripper
def test_gripper_switches_only_past_the_hysteresis_band():
    flt = SafetyFilter(SafetyLimits(gripper_hysteresis=0.3))
    seq = [-1.0, 0.2, 0.29, 0.31, 0.0, -0.29, -0.31, 0.1]
    want = [-1, -1, -1, 1, 1, 1, -1, -1]
    got = [flt(np.r_[np.zeros(6), g], None).gripper for g in seq]
    assert got == want


def test_gripper_chatter_never_toggles_inside_the_band():
    flt = SafetyFilter(SafetyLimits(gripper_hysteresis=0.2))
    flt(np.r_[np.zeros(6), 1.0], None)
    noise = np.random.default_rng(6).uniform(-0.19, 0.19, 500)
    assert all(flt(np.r_[np.zeros(6), g], None).gripper == 1.0 for g in noise)


# ---------------------------------------------------------------------------------------------- arm / watchdog
def test_disarmed_filter_holds_until_armed():
    flt = SafetyFilter(armed=False)
    assert "disarmed" in flt(np.zeros(7), state()).reason
    flt.arm()
    assert isinstance(flt(np.zeros(7), state()), SafeCommand)
    flt.disarm()
    assert isinstance(flt(np.zeros(7), state()), Hold)


def test_filter_is_deterministic():
    actions = random_actions(50, seed=7)
    runs = []
    for _ in range(2):
        flt = SafetyFilter(SafetyLimits(), FRANKA)
        runs.append(np.stack([flt(a, state()).action for a in actions]))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_watchdog_counts_missed_periods():
    dog = Watchdog(period_s=0.01, periods=3)
    assert not dog.expired(5.0)  # nothing commanded yet: nothing to hold
    dog.feed(1.0)
    assert dog.missed(1.025) == 2 and not dog.expired(1.025)
    assert dog.expired(1.03)
    dog.feed(1.03)
    assert not dog.expired(1.035)


def test_hold_command_keeps_the_measured_pose():
    flt = SafetyFilter()
    flt(np.r_[np.zeros(6), 1.0], state())
    hold = flt.hold_command(state())
    np.testing.assert_allclose(hold.target_pos, HOME_POS)
    assert hold.gripper == 1.0 and np.all(hold.action[:6] == 0)


@pytest.mark.parametrize("kwargs,match", [
    ({"workspace_low": (1, 0, 0), "workspace_high": (0, 1, 1)}, "below"),
    ({"joint_lower": (0,) * 6}, "one value per joint"),
    ({"gripper_hysteresis": 1.5}, "hysteresis")])
def test_bad_limits_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SafetyLimits(**kwargs)


def test_a_real_arm_can_be_slowed_below_the_training_scale():
    """max_step_* limits the step without changing what a unit action means (output_max_*)."""
    flt = SafetyFilter(SafetyLimits(max_step_pos=0.01, max_step_rot=0.1))
    cmd = flt(np.array([0.1, 1.0, -3.0, 0.1, 1.0, 0, 0]), state(q=None))
    np.testing.assert_allclose(cmd.target_pos - HOME_POS, [0.005, 0.01, -0.01])
    np.testing.assert_allclose(cmd.action[:6], [0.1, 0.2, -0.2, 0.1, 0.2, 0])
    assert "delta_clip" in cmd.interventions


@pytest.mark.parametrize("chain", [FRANKA, UR5E], ids=["franka", "ur5e"])
def test_analytic_jacobian_matches_finite_differences(chain):
    from hardware.kinematics import rotvec_of

    rng = np.random.default_rng(8)
    for _ in range(5):
        q = rng.uniform(-2, 2, chain.n_joints)
        jac, eps = chain.jacobian(q), 1e-6
        for i in range(chain.n_joints):
            dq = np.zeros_like(q)
            dq[i] = eps
            plus, minus = chain.forward(q + dq), chain.forward(q - dq)
            np.testing.assert_allclose(jac[:3, i], (plus[:3, 3] - minus[:3, 3]) / (2 * eps), atol=1e-6)
            np.testing.assert_allclose(jac[3:, i], rotvec_of(plus[:3, :3] @ minus[:3, :3].T) / (2 * eps), atol=1e-6)


def test_forward_kinematics_at_known_poses():
    """Franka's ready pose puts the hand (flange + 0.1034 m) at (0.307, 0, 0.487); the UR5e at zero is stretched
    along -x with the published link lengths."""
    np.testing.assert_allclose(FRANKA.forward(HOME_Q)[:3, 3], [0.3069, 0.0, 0.4869], atol=1e-3)
    np.testing.assert_allclose(UR5E.forward(np.zeros(6))[:3, 3], [-0.8172, -0.2329, 0.0628], atol=1e-4)
