"""Gymnasium wrapper around robosuite manipulation tasks (Panda + OSC_POSE delta control).

The observation keys produced here are the same ones the real-robot driver produces, so policies and datasets
never see robosuite's own key names. robosuite itself is imported lazily (it costs about a second and prints
log noise), so `import sim` stays cheap.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

TASKS: tuple[str, ...] = ("Lift", "PickPlaceCan", "NutAssemblySquare")

# Episode lengths (control steps at 20 Hz). The scripted experts finish Lift in ~60-90 steps and the other two in
# ~150-260; these leave roughly 1.5-2x margin for noisy/hesitating experts and for learned policies.
DEFAULT_HORIZONS: dict[str, int] = {"Lift": 200, "PickPlaceCan": 400, "NutAssemblySquare": 400}

# robosuite camera name -> observation key prefix. The prefixes match the real-robot camera names.
CAMERA_KEY_PREFIX: dict[str, str] = {"agentview": "agentview", "robot0_eye_in_hand": "eye_in_hand"}

# robosuite's camera and controller code logs at WARNING/INFO on import and on every make(); the DefaultLogger
# re-sets the level when it is created, so a filter (which survives setLevel) is the clean way to mute it.
logging.getLogger("robosuite_logs").addFilter(lambda record: record.levelno >= logging.ERROR)

_MM_PER_M = 1000.0
_UINT16_MAX = np.iinfo(np.uint16).max


@dataclass(frozen=True)
class EnvConfig:
    """Configuration of one simulated task. Stored with datasets via SimEnv.robot_config()."""

    task: str = "Lift"
    """robosuite task: one of TASKS."""
    robot: str = "Panda"
    """robosuite robot name. Only Panda is tested (the experts assume its gripper and workspace)."""
    control_freq: int = 20
    """Policy/controller rate in Hz; one step() is 1/control_freq seconds of simulated time."""
    horizon: int | None = None
    """Max steps per episode before truncation; None takes DEFAULT_HORIZONS[task]."""
    cameras: tuple[str, ...] = ()
    """robosuite camera names to render ("agentview", "robot0_eye_in_hand"); () is low-dim only and much faster."""
    image_height: int = 84
    """Rendered image height in pixels."""
    image_width: int = 84
    """Rendered image width in pixels."""
    depth: bool = False
    """Also produce `<cam>_depth` (H, W, 1) uint16 millimetres for every camera."""
    reward: Literal["sparse", "dense", "potential"] = "sparse"
    """sparse: 1.0 on success, else 0. dense: robosuite's staged shaped reward (scaled to max 1); an agent that is
    paid every step for hovering near success and stopped at success can prefer to hover. potential: sparse plus
    potential_gamma * phi(s') - phi(s) with phi robosuite's staged reward of a state and phi = 0 once the task is
    done (Ng et al. 1999): the same optimal policies as sparse, with a signal on every step."""
    potential_gamma: float = 0.99
    """Discount of the potential term; must equal the learner's per-step gamma for the optimal policy to hold."""
    model_seed: int = 0
    """Seed of what robosuite draws once, when it builds the model: Lift's cube size (40-44 mm), the first object
    placement. Fixed, so that a scene is a function of the episode seed alone, in every process and every vector-env
    worker; a different value is a (slightly) different task, as a different cube would be on the real table."""

    def resolved_horizon(self) -> int:
        return self.horizon if self.horizon is not None else DEFAULT_HORIZONS[self.task]

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        for cam in self.cameras:
            if cam not in CAMERA_KEY_PREFIX:
                raise ValueError(f"unknown camera {cam!r}; expected one of {tuple(CAMERA_KEY_PREFIX)}")
        if self.resolved_horizon() <= 0 or self.image_height <= 0 or self.image_width <= 0:
            raise ValueError("horizon, image_height and image_width must be positive")
        if self.reward not in ("sparse", "dense", "potential"):
            raise ValueError(f"unknown reward {self.reward!r}; expected sparse, dense or potential")
        if not 0.0 < self.potential_gamma <= 1.0:
            raise ValueError(f"potential_gamma must be in (0, 1], got {self.potential_gamma}")


def _controller_config(robot: str) -> dict[str, Any]:
    """robosuite 1.5 composite controller config: the robot's default, with the arm forced to OSC_POSE delta."""
    import robosuite

    config = robosuite.load_composite_controller_config(robot=robot)
    # In 1.5 the loader flattens body_parts["arms"]["right"] to body_parts["right"].
    arm = config["body_parts"]["right"]
    arm["type"] = "OSC_POSE"
    arm["input_type"] = "delta"
    # Deltas are expressed in the robot base frame; for the Panda tasks the base is axis-aligned with the world.
    arm["input_ref_frame"] = "base"
    return config


class SimEnv(gym.Env):
    """robosuite task as a gymnasium env with stable, robot-agnostic observation keys.

    Observation (dict, all float32 unless noted):
      eef_pos (3,)            gripper site position in the world frame, metres.
      eef_quat (4,)           gripper site orientation, quaternion in xyzw order (robosuite's convention). Taken
                              from the grip *site* (same frame as eef_pos and the OSC controller), not from
                              robosuite's legacy `robot0_eef_quat`, which reads the hand body.
      gripper_qpos (2,)       finger joint positions, metres.
      joint_pos (7,)          arm joint angles, radians.
      object_state (n,)       robosuite's task object-state vector (Lift 10, PickPlaceCan 14, Square 14).
      <prefix>_rgb (H,W,3)    uint8, upright (row 0 is the top of the image).
      <prefix>_depth (H,W,1)  uint16 millimetres, clipped to [0, 65535]; only when config.depth.
    Action: (7,) in [-1, 1]: dx, dy, dz, droll, dpitch, dyaw (scaled by the controller's output_max: 5 cm and
    0.5 rad per step at +-1, base frame), gripper (-1 open, +1 close).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, config: EnvConfig | None = None, seed: int | None = None) -> None:
        """`seed` is used by the first reset() that is given no seed (lets vector envs seed their workers). It does
        not touch the model, which `config.model_seed` builds the same in every process."""
        super().__init__()
        self.config = config if config is not None else EnvConfig()
        self._pending_seed = seed
        self.config.validate()
        self.horizon = self.config.resolved_horizon()
        import robosuite

        use_cameras = len(self.config.cameras) > 0
        self._controller = _controller_config(self.config.robot)
        self._env = robosuite.make(
            self.config.task,
            robots=self.config.robot,
            controller_configs=self._controller,
            has_renderer=False,
            has_offscreen_renderer=use_cameras,
            use_camera_obs=use_cameras,
            use_object_obs=True,
            camera_names=list(self.config.cameras) if use_cameras else "agentview",
            camera_heights=self.config.image_height,
            camera_widths=self.config.image_width,
            camera_depths=self.config.depth,
            control_freq=self.config.control_freq,
            horizon=self.horizon,
            # We track the horizon ourselves; robosuite would otherwise refuse steps after its own "done".
            ignore_done=True,
            # Reset by restoring state instead of recompiling the model: 0.13 s instead of 2.4 s per reset.
            hard_reset=False,
            reward_shaping=self.config.reward != "sparse",
            reward_scale=1.0,
            # robosuite draws the cube's size and a first placement from this rng while building the model, and a
            # soft reset keeps both (it re-seeds the placement only). Seeding the build with the episode seed made
            # an episode depend on which process or worker ran it; one model seed for all makes it depend on the
            # episode seed alone.
            seed=self.config.model_seed,
        )
        self._steps = 0
        self._potential = 0.0  # phi of the current state (reward="potential"), set by reset()
        self._frame_renderers: dict[tuple[int, int], Any] = {}
        self._disable_expensive_render_effects()
        first_obs = self._convert(self._env._get_observations(force_update=True))
        self.observation_space = spaces.Dict({k: self._box_for(k, v) for k, v in first_obs.items()})
        self.action_space = spaces.Box(-1.0, 1.0, shape=(7,), dtype=np.float32)

    # ------------------------------------------------------------------ gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        super().reset(seed=seed)
        if seed is not None:
            # robosuite's placement samplers and robot init noise all hold a reference to the *same* Generator
            # object (env.rng), so re-seed it in place; replacing env.rng would leave the samplers on the old one.
            self._env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        raw = self._env.reset()
        self._disable_expensive_render_effects()
        self._steps = 0
        self._potential = self._staged_reward() if self.config.reward == "potential" else 0.0
        return self._convert(raw), {"success": False}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (7,):
            raise ValueError(f"action must have shape (7,), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action contains NaN/inf: {action}")
        # robosuite clips too, but clipping here makes the stored/executed action the same thing.
        raw, shaped_reward, _, _ = self._env.step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        success = bool(self._env._check_success())
        reward = float(shaped_reward) if self.config.reward == "dense" else float(success)
        if self.config.reward == "potential":
            # robosuite computes its reward after the step, so shaped_reward is phi of the new state (or the
            # success bonus, where phi is 0: the episode ends there)
            potential = 0.0 if success else float(shaped_reward)
            reward += self.config.potential_gamma * potential - self._potential
            self._potential = potential
        truncated = (not success) and self._steps >= self.horizon
        info = {"success": success, "steps": self._steps}
        return self._convert(raw), reward, success, truncated, info

    def close(self) -> None:
        for renderer in self._frame_renderers.values():
            renderer.close()
        self._frame_renderers.clear()
        if getattr(self, "_env", None) is not None:
            self._env.close()  # destroys the offscreen GL context along with the sim
            self._env = None

    def _staged_reward(self) -> float:
        """robosuite's dense staged reward of the current state (reaching, grasping, ...), scaled to max 1."""
        return float(self._env.reward(None))

    # ------------------------------------------------------------------ extras

    @property
    def unwrapped_robosuite(self) -> Any:
        """The underlying robosuite env (privileged state for scripted experts and tests)."""
        return self._env

    def robot_config(self) -> dict[str, Any]:
        """JSON-serialisable description of robot, controller and task; stored alongside recorded datasets."""
        arm = self._controller["body_parts"]["right"]
        return {
            "simulator": "robosuite",
            "task": self.config.task,
            "robot": self.config.robot,
            "control_freq": self.config.control_freq,
            "horizon": self.horizon,
            "cameras": [CAMERA_KEY_PREFIX[c] for c in self.config.cameras],
            "image_size": [self.config.image_height, self.config.image_width],
            "depth": self.config.depth,
            "depth_units": "mm",
            "model_seed": self.config.model_seed,
            "eef_quat_order": "xyzw",
            "action": ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"],
            "gripper": "-1 open, +1 close",
            "controller": {
                "type": arm["type"],
                "input_type": arm["input_type"],
                "input_ref_frame": arm["input_ref_frame"],
                "input_max": arm["input_max"],
                "input_min": arm["input_min"],
                "output_max": list(arm["output_max"]),
                "output_min": list(arm["output_min"]),
                "kp": arm["kp"],
                "damping_ratio": arm["damping_ratio"],
                "uncouple_pos_ori": arm["uncouple_pos_ori"],
            },
        }

    def render_frame(self, camera: str = "agentview", height: int = 256, width: int = 256) -> np.ndarray:
        """Upright (H, W, 3) uint8 frame for videos, independent of the observation cameras."""
        import mujoco

        key = (height, width)
        if key not in self._frame_renderers:
            self._frame_renderers[key] = mujoco.Renderer(self._env.sim.model._model, height=height, width=width)
            scene_flags = self._frame_renderers[key].scene.flags
            scene_flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            scene_flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        renderer = self._frame_renderers[key]
        # Show visual geoms only (group 1), like robosuite's own renderer; group 0 holds the collision meshes.
        option = mujoco.MjvOption()
        option.geomgroup[0] = 0
        renderer.update_scene(self._env.sim.data._data, camera=camera, scene_option=option)
        return renderer.render().copy()  # mujoco.Renderer already returns row 0 = top

    # ------------------------------------------------------------------ internals

    def _disable_expensive_render_effects(self) -> None:
        """Shadows and reflections roughly halve CPU (llvmpipe) render speed and are not needed for learning."""
        context = getattr(self._env.sim, "_render_context_offscreen", None)
        if context is None:
            return
        import mujoco

        context.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        context.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    def _convert(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sim = self._env.sim
        robot = self._env.robots[0]
        site_id = robot.eef_site_id["right"]
        from robosuite.utils.transform_utils import mat2quat

        obs: dict[str, np.ndarray] = {
            "eef_pos": np.asarray(sim.data.site_xpos[site_id], dtype=np.float32).copy(),
            "eef_quat": mat2quat(np.asarray(sim.data.site_xmat[site_id]).reshape(3, 3)).astype(np.float32),
            "gripper_qpos": np.asarray(raw["robot0_gripper_qpos"], dtype=np.float32),
            "joint_pos": np.asarray(raw["robot0_joint_pos"], dtype=np.float32),
            "object_state": np.asarray(raw["object-state"], dtype=np.float32),
        }
        for cam in self.config.cameras:
            prefix = CAMERA_KEY_PREFIX[cam]
            # robosuite renders in OpenGL convention (row 0 = bottom); flip to the camera convention.
            obs[f"{prefix}_rgb"] = np.ascontiguousarray(raw[f"{cam}_image"][::-1])
            if self.config.depth:
                from robosuite.utils.camera_utils import get_real_depth_map

                metres = get_real_depth_map(sim, np.clip(raw[f"{cam}_depth"][::-1], 0.0, 1.0))
                millimetres = np.clip(np.rint(metres * _MM_PER_M), 0, _UINT16_MAX)
                obs[f"{prefix}_depth"] = np.ascontiguousarray(millimetres.astype(np.uint16))
        return obs

    @staticmethod
    def _box_for(key: str, value: np.ndarray) -> spaces.Box:
        if key.endswith("_rgb"):
            return spaces.Box(0, 255, shape=value.shape, dtype=np.uint8)
        if key.endswith("_depth"):
            return spaces.Box(0, _UINT16_MAX, shape=value.shape, dtype=np.uint16)
        if key == "eef_quat":
            return spaces.Box(-1.0, 1.0, shape=value.shape, dtype=np.float32)
        return spaces.Box(-math.inf, math.inf, shape=value.shape, dtype=np.float32)
