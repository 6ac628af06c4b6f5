"""The policy as the ROS node runs it: loaded from a deploy artifact or a checkpoint and checked against what the
robot provides, then called numpy in, numpy out. No ROS imports, so a planner process can load it too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hardware.deploy_config import DeployConfig, DeployConfigError, split_mapping


class NumpyPolicy:
    """numpy in, numpy out, no autograd: what the runner calls, in ``robo eval`` and on the robot alike. Sampling
    noise comes from the policy's own generator, so :meth:`reseed` makes a run reproducible."""

    def __init__(self, policy: Any, steps: int = 0, scheduler: str = ""):
        import torch

        self.policy, self.kwargs = policy, {}
        if steps:
            self.kwargs["steps"] = steps
        if scheduler:
            self.kwargs["scheduler"] = scheduler
        self.generator = torch.Generator()

    def reseed(self, *entropy: int) -> None:
        """Restart the noise stream from ``entropy`` (e.g. the evaluation seed and a wave index)."""
        self.generator.manual_seed(int(np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0]) >> 1)

    def predict(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.policy.predict(obs, generator=self.generator, **self.kwargs).detach().float().cpu().numpy()


def provided_obs_spec(config: DeployConfig, wanted: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, Any]:
    """What the robot provides, as key -> (shape, dtype). Topic-fed keys (images, low-dim topics) take the
    policy's shape (images are resized), so only their presence and kind (RGB uint8, depth uint16) are checked."""
    spec: dict[str, Any] = {"eef_pos": ((3,), "float32"), "eef_quat": ((4,), "float32"),
                            "joint_pos": ((len(config.joint_names),), "float32")}
    if config.gripper_joint_names:
        spec["gripper_qpos"] = ((len(config.gripper_joint_names),), "float32")
    for entry in config.image_topics:
        key, _ = split_mapping(entry)
        shape = wanted.get(key, ((0, 0, 1), ""))[0]
        if key.endswith("_depth"):
            spec[key] = ((*shape[:2], 1), "uint16")
        else:
            spec[key] = ((*shape[:2], 3), "uint8")
    for entry in config.lowdim_topics:
        key, _ = split_mapping(entry)
        spec[key] = (wanted.get(key, ((0,), ""))[0], "float32")
    return spec


def load_policy(config: DeployConfig) -> tuple[Any, Any, dict[str, Any]]:
    """(policy, spec, manifest) from a deploy artifact or a checkpoint; refuses, in one line, one whose
    observation spec the robot does not provide or whose action size is not 7. Sets torch's intra-op threads to
    ``config.torch_threads`` first, so every process that runs the policy runs it alike."""
    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    path = Path(config.checkpoint)
    if not config.checkpoint or not path.is_dir():
        raise DeployConfigError(f"checkpoint '{config.checkpoint}' is not a directory; pass -p checkpoint:=<dir>")
    if (path / "artifact.json").is_file():
        from policies.artifact import load_artifact, read_manifest

        wanted = {k: (tuple(v["shape"]), v["dtype"]) for k, v in read_manifest(path)["observation"].items()}
        policy, manifest = load_artifact(path, expect_obs=provided_obs_spec(config, wanted), expect_action_dim=7,
                                         expect_control_rate_hz=config.control_hz)
        return policy, policy.spec, manifest
    from policies.checkpoint import check_against, load_checkpoint

    policy = load_checkpoint(path)
    check_against(policy, provided_obs_spec(config, dict(policy.spec.obs_keys)), 7)
    return policy, policy.spec, {}



def load_numpy_policy(config: DeployConfig) -> NumpyPolicy:
    """The node's policy for a planner process: the same loader and checks, then the runner's numpy interface."""
    return NumpyPolicy(load_policy(config)[0], config.inference_steps)
