"""`RealArmEnv`: the simulator's gymnasium-style interface on a real arm + cameras.

Observation keys, dtypes and the action convention are the stack's contract (see hardware.arm), so the same
policy object runs in simulation and here. Reward is always 0 and `info["success"]` False: on hardware the
operator labels success when saving an episode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from hardware.arm import ACTION_DIM, N_ARM_JOINTS, N_GRIPPER_JOINTS, OUTPUT_MAX_POS_M, OUTPUT_MAX_ROT_RAD, ArmInterface, validate_action
from hardware.camera import CameraSource


@dataclass
class RealArmEnvConfig:
    """Episode and timing settings of the real environment."""

    horizon: int = 400  # steps before truncated=True (episode time limit)
    control_hz: float = 20.0  # step() paces itself to this rate; 0 disables pacing (tests, replay)
    robot_name: str = "Panda"  # reported by robot_config(), must match the sim's robot for policy transfer
    controller: str = "OSC_POSE"  # reported by robot_config(); the action convention the policy was trained on
    output_max_pos: float = OUTPUT_MAX_POS_M  # reported scaling, metres per unit action per step
    output_max_rot: float = OUTPUT_MAX_ROT_RAD  # reported scaling, radians per unit action per step


class RealArmEnv:
    """reset()/step()/close() over an ArmInterface and zero or more CameraSources."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, arm: ArmInterface, cameras: Sequence[CameraSource] = (), config: Optional[RealArmEnvConfig] = None) -> None:
        from gymnasium import spaces  # gymnasium is a core dependency, but keep `import hardware` light

        self.arm = arm
        self.cameras = list(cameras)
        self.config = config or RealArmEnvConfig()
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")
        obs_spaces: dict[str, Any] = {
            "eef_pos": spaces.Box(-np.inf, np.inf, (3,), np.float32),
            "eef_quat": spaces.Box(-1.0, 1.0, (4,), np.float32),
            "gripper_qpos": spaces.Box(-np.inf, np.inf, (N_GRIPPER_JOINTS,), np.float32),
            "joint_pos": spaces.Box(-np.inf, np.inf, (N_ARM_JOINTS,), np.float32),
        }
        for cam in self.cameras:
            h, w = cam.image_shape
            obs_spaces[f"{cam.name}_rgb"] = spaces.Box(0, 255, (h, w, 3), np.uint8)
            if cam.has_depth:
                obs_spaces[f"{cam.name}_depth"] = spaces.Box(0, np.iinfo(np.uint16).max, (h, w, 1), np.uint16)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._steps = 0
        self._last_step_t: Optional[float] = None

    def _observe(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        state = self.arm.read_state()  # raises StaleStateError: never build an observation from old state
        obs = state.as_observation()
        stamps = {"arm": state.stamp_s}
        for cam in self.cameras:
            frame = cam.read()
            obs[f"{cam.name}_rgb"] = frame.rgb
            if cam.has_depth:
                if frame.depth_mm is None:
                    raise RuntimeError(f"camera '{cam.name}' declared depth but returned none")
                obs[f"{cam.name}_depth"] = frame.depth_mm
            stamps[cam.name] = frame.stamp_s
        info = {"success": False, "stamps": stamps, "step": self._steps}
        return obs, info

    def reset(self, seed: Optional[int] = None, options: Optional[Mapping[str, Any]] = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode from wherever the operator left the scene (no automatic homing on hardware)."""
        del seed, options  # accepted for API parity with the sim env; the real world is not seedable
        self._steps = 0
        self._last_step_t = None
        return self._observe()

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        a = validate_action(action)  # one-line ValueError on NaN / wrong shape, before anything moves
        self.arm.send_command(a.astype(np.float32))
        self._pace()
        self._steps += 1
        obs, info = self._observe()
        truncated = self._steps >= self.config.horizon
        return obs, 0.0, False, truncated, info

    def _pace(self) -> None:
        # Sleep to the next control tick so the per-step motion (output_max per step) means the same speed as
        # in training; if the loop is already late, do not sleep (and do not try to catch up).
        hz = self.config.control_hz
        now = time.monotonic()
        if hz > 0 and self._last_step_t is not None:
            wait = self._last_step_t + 1.0 / hz - now
            if wait > 0:
                time.sleep(wait)
        self._last_step_t = time.monotonic()

    def robot_config(self) -> dict[str, Any]:
        """Static description a policy checkpoint can be checked against (same keys as the sim env)."""
        cfg = self.config
        return {
            "robot": cfg.robot_name,
            "controller": cfg.controller,
            "control_freq": cfg.control_hz,
            "horizon": cfg.horizon,
            "output_max_pos": cfg.output_max_pos,
            "output_max_rot": cfg.output_max_rot,
            "cameras": {c.name: {"shape": list(c.image_shape), "depth": c.has_depth} for c in self.cameras},
            "action_dim": ACTION_DIM,
        }

    def close(self) -> None:
        for cam in self.cameras:
            cam.stop()
        stop = getattr(self.arm, "stop", None)
        if callable(stop):
            stop()
