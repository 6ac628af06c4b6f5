"""The deploy artifact: what is exported runs bit-identically after loading, and anything that does not match (hash,
spec, version, the robot it is loaded for, a failed student gate) is refused in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from policies.artifact import ArtifactError, content_hash, is_artifact, load_artifact, save_artifact
from policies.checkpoint import save_checkpoint
from policies.consistency import ConsistencyPolicy
from policies.spec import CheckpointError, CheckpointMismatch
from robo.export import DEFAULT_SAFETY_LIMITS, ExportConfig, ExportError, export
from test_policies import assert_one_line, build, make_batch, predict_seeded

torch.set_num_threads(1)

PROVENANCE = {"task": "Lift", "dataset": "demos.zarr", "stages": [{"name": "bc", "success_rate": 0.5}]}


@pytest.fixture
def artifact(tmp_path):
    policy = build("diffusion-mlp", "lowdim")
    student = ConsistencyPolicy.from_teacher(policy)
    student.use_ema_weights()
    manifest = save_artifact(tmp_path / "art", student, control_rate_hz=20.0, safety_limits=DEFAULT_SAFETY_LIMITS,
                             provenance=PROVENANCE)
    return student, tmp_path / "art", manifest


def _rewrite(path, mutate, rehash=True):
    manifest = json.loads((path / "artifact.json").read_text())
    mutate(manifest)
    if rehash:
        manifest["content_sha256"] = content_hash(manifest)
    (path / "artifact.json").write_text(json.dumps(manifest))


def test_round_trip_is_bit_identical(artifact):
    student, path, manifest = artifact
    assert is_artifact(path)
    loaded, read = load_artifact(path)
    obs = make_batch("lowdim")["obs"]
    assert torch.equal(predict_seeded(loaded, obs), predict_seeded(student, obs))
    assert read["content_sha256"] == manifest["content_sha256"]
    assert read["n_obs"] == 2 and read["n_action_steps"] == 4 and read["control_rate_hz"] == 20.0
    assert read["safety_limits"]["max_delta_pos_m"] == 0.05 and read["provenance"]["task"] == "Lift"
    assert set(read["observation"]) == {"eef_pos", "gripper_qpos"} and read["action"]["dim"] == 4
    assert not any(p.requires_grad for p in loaded.parameters())


REFUSALS = {
    "edited without rehash": (lambda m: m.update(control_rate_hz=50.0), False, "content hash"),
    "version": (lambda m: m.update(format_version=7), True, "format version 7"),
    "format": (lambda m: m.update(format="something-else"), True, "not a robo-deploy-artifact"),
    "n_obs": (lambda m: m.update(n_obs=3), True, "n_obs=3"),
    "n_action_steps": (lambda m: m.update(n_action_steps=1), True, "n_action_steps=1"),
    "obs spec": (lambda m: m["observation"]["eef_pos"].update(shape=[4]), True, "observation"),
    "action dim": (lambda m: m["action"].update(dim=7), True, "action dim 7"),
    "missing limits": (lambda m: m.pop("safety_limits"), True, "safety_limits"),
    "normaliser": (lambda m: m["policy"]["normalizer"].pop("action"), True, "blind policy"),
    "weights hash": (lambda m: m.update(weights_sha256="0" * 64), True, "SHA-256 differs"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals(artifact, case):
    _, path, _ = artifact
    mutate, rehash, words = REFUSALS[case]
    _rewrite(path, mutate, rehash)
    with pytest.raises(ArtifactError) as err:
        load_artifact(path)
    assert_one_line(err)
    assert words in str(err.value), str(err.value)


def test_swapped_weights_are_refused(artifact, tmp_path):
    student, path, _ = artifact
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01)
    save_artifact(tmp_path / "other", student, control_rate_hz=20.0, safety_limits=DEFAULT_SAFETY_LIMITS,
                  provenance=PROVENANCE)
    shutil.copy(tmp_path / "other" / "model.safetensors", path / "model.safetensors")
    with pytest.raises(ArtifactError, match="SHA-256 differs"):
        load_artifact(path)


def test_refuses_a_robot_it_was_not_built_for(artifact):
    _, path, _ = artifact
    good = {"eef_pos": ((3,), "float32"), "gripper_qpos": ((2,), "float32"), "joint_pos": ((7,), "float32")}
    load_artifact(path, expect_obs=good, expect_action_dim=4, expect_control_rate_hz=20.0)
    for kwargs, words in (({"expect_obs": {"eef_pos": ((3,), "float32")}}, "gripper_qpos"),
                          ({"expect_action_dim": 7}, "action size 7"),
                          ({"expect_control_rate_hz": 10.0}, "10.0 Hz")):
        with pytest.raises(CheckpointMismatch) as err:
            load_artifact(path, **kwargs)
        assert_one_line(err)
        assert words in str(err.value)


def test_missing_files_and_bad_limits(tmp_path, artifact):
    student, path, _ = artifact
    (path / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="model.safetensors is missing"):
        load_artifact(path)
    with pytest.raises(ArtifactError, match="safety limits"):
        save_artifact(tmp_path / "x", student, control_rate_hz=20.0, safety_limits={}, provenance={})
    with pytest.raises(ArtifactError, match="control rate"):
        save_artifact(tmp_path / "x", student, control_rate_hz=0.0, safety_limits={"a": 1}, provenance={})


@pytest.fixture
def chain(tmp_path):
    """A BC checkpoint and a student distilled from it, as robo train writes them."""
    teacher = build("diffusion-mlp", "lowdim")
    bc = save_checkpoint(tmp_path / "bc", teacher, {"task": "Lift", "dataset": "d.zarr", "fps": 20,
                                                     "success_rate": 0.4, "eval_episodes": 20})
    student = ConsistencyPolicy.from_teacher(teacher)
    st = save_checkpoint(tmp_path / "st", student, {"task": "Lift", "dataset": "d.zarr", "fps": 20,
                                                     "teacher": str(bc), "success_rate": 0.38})
    return bc, st


def test_export_records_the_whole_chain(tmp_path, chain):
    bc, st = chain
    manifest = export(ExportConfig(checkpoint=st, output=tmp_path / "art"))
    stages = manifest["provenance"]["stages"]
    assert [s["checkpoint"] for s in stages] == [str(st), str(bc)]
    assert [s["success_rate"] for s in stages] == [0.38, 0.4]
    assert manifest["control_rate_hz"] == 20.0 and manifest["policy"]["kind"] == "consistency"
    from hardware.safety import SafetyLimits

    limits = SafetyLimits(**manifest["safety_limits"])  # the robot side's own dataclass takes them back
    assert limits.control_dt == pytest.approx(1 / 20) and limits.output_max_pos == 0.05
    policy, _ = load_artifact(tmp_path / "art")
    assert policy.kind == "consistency"


def test_export_refuses_a_failed_gate(tmp_path, chain):
    _, st = chain
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"student_gate": {"passed": False, "reason": "student 0.80 vs teacher 0.90"}}))
    with pytest.raises(ExportError, match="does not ship"):
        export(ExportConfig(checkpoint=st, output=tmp_path / "art", gate_report=report))
    assert not (tmp_path / "art").exists()
    report.write_text(json.dumps({"student_gate": {"passed": True, "reason": "within 2 points"}}))
    manifest = export(ExportConfig(checkpoint=st, output=tmp_path / "art", gate_report=report))
    assert manifest["provenance"]["student_gate"]["passed"]


def test_export_safety_limits_file(tmp_path, chain):
    _, st = chain
    good = tmp_path / "limits.yaml"
    good.write_text("safety:\n  max_step_pos: 0.02\n  workspace_low: [0.2, -0.5, 0.05]\n")
    manifest = export(ExportConfig(checkpoint=st, output=tmp_path / "art", safety_limits=good))
    assert manifest["safety_limits"]["max_step_pos"] == 0.02 and manifest["safety_limits"]["workspace_low"][0] == 0.2
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_step_poss: 0.02\n")
    with pytest.raises(ExportError, match="unknown safety limits"):
        export(ExportConfig(checkpoint=st, output=tmp_path / "art2", safety_limits=bad))
    bad.write_text("workspace_low: [1, 1, 1]\nworkspace_high: [0, 0, 0]\n")
    with pytest.raises(ExportError, match="must be below"):
        export(ExportConfig(checkpoint=st, output=tmp_path / "art2", safety_limits=bad))


def test_export_reads_the_robots_ros_parameter_file(tmp_path, chain):
    """The nested `/**: ros__parameters: safety:` layout of hardware/robots/*_deploy.yaml (what the node runs) and a
    node-named section over it, as ROS applies them."""
    from pathlib import Path

    from hardware.deploy_config import load_deploy_config

    _, st = chain
    fr3 = Path(__file__).resolve().parents[1] / "hardware" / "robots" / "fr3_deploy.yaml"
    manifest = export(ExportConfig(checkpoint=st, output=tmp_path / "art", safety_limits=fr3))
    node_limits = load_deploy_config(fr3).safety  # the node's own reading of the same file
    assert manifest["safety_limits"]["max_step_pos"] == node_limits.max_step_pos == 0.02
    assert manifest["safety_limits"]["workspace_low"] == list(node_limits.workspace_low) == [0.25, -0.45, 0.03]
    assert manifest["safety_limits"]["joint_upper"] == list(node_limits.joint_upper)
    layered = tmp_path / "layered.yaml"
    layered.write_text("/**:\n  ros__parameters:\n    safety:\n      max_step_pos: 0.03\n      max_step_rot: 0.3\n"
                       "robo_policy_node:\n  ros__parameters:\n    safety.max_step_pos: 0.01\n")
    limits = export(ExportConfig(checkpoint=st, output=tmp_path / "art2", safety_limits=layered))["safety_limits"]
    assert limits["max_step_pos"] == 0.01 and limits["max_step_rot"] == 0.3
    no_safety = tmp_path / "no_safety.yaml"
    no_safety.write_text("/**:\n  ros__parameters:\n    robot: fr3\n")
    with pytest.raises(ExportError, match="without a 'safety:' section"):
        export(ExportConfig(checkpoint=st, output=tmp_path / "art3", safety_limits=no_safety))


def test_cli_export_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "robo.cli", "export", "--checkpoint", str(tmp_path / "nope"),
                           "--output", str(tmp_path / "art")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not a checkpoint" in proc.stderr


def test_artifact_module_needs_no_robo():
    code = "import sys, policies.artifact; bad = [m for m in sys.modules if m.split('.')[0] in ('robo', 'sim', " \
           "'hardware')]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_checkpoint_is_not_an_artifact(tmp_path, chain):
    _, st = chain
    assert not is_artifact(st)
    with pytest.raises(CheckpointError, match="artifact.json is missing"):
        load_artifact(st)


def test_a_noise_steered_student_ships_and_runs_as_it_was_evaluated(tmp_path, chain):
    """A noise-PPO run's ppo/best exports as one artifact (student + steering net); loaded as the node loads it,
    it draws exactly the chunks the run's evaluation drew from the same seed, and its steering file is guarded
    by the manifest's hash like the weights."""
    from hardware.deploy_policy import NumpyPolicy
    from policies.checkpoint import load_checkpoint
    from robo.rl.noise_ppo import NoiseActor, load_noise_policy, save_noise_policy

    bc, st = chain
    actor = NoiseActor(load_checkpoint(st))
    torch.manual_seed(0)
    with torch.no_grad():  # a trained steering net: a mean away from 0 and a narrower std
        for p in actor.parameters():
            p.add_(0.3 * torch.randn_like(p))
    save_noise_policy(tmp_path / "noise", actor, str(st), {"stage": "online_ppo_noise", "success_rate": 0.6,
                                                            "eval_episodes": 20, "env_steps": 4096})
    manifest = export(ExportConfig(checkpoint=tmp_path / "noise", output=tmp_path / "art"))
    stages = manifest["provenance"]["stages"]
    assert [s["checkpoint"] for s in stages] == [str(tmp_path / "noise"), str(st), str(bc)]
    assert stages[0]["policy_kind"] == "noise_steered" and stages[0]["success_rate"] == 0.6
    assert manifest["policy"]["kind"] == "consistency" and "noise_steering" in manifest

    deployed, _ = load_artifact(tmp_path / "art")
    assert deployed.kind == "noise_steered" and deployed.spec == load_checkpoint(st).spec
    obs = make_batch("lowdim", n=2)["obs"]  # numpy, as the runner passes it
    runs = []
    for policy in (load_noise_policy(tmp_path / "noise").shipped(), deployed, load_checkpoint(st)):
        numpy_policy = NumpyPolicy(policy)  # what robo eval and the node call
        numpy_policy.reseed(10_000, 0)
        runs.append(numpy_policy.predict(obs))
    evaluated, shipped, unsteered = runs
    assert (shipped == evaluated).all(), "the artifact does not run what the noise-PPO run evaluated"
    assert abs(shipped - unsteered).max() > 1e-3, "the steering net was dropped on export"

    steering_file = tmp_path / "art" / "noise_steering.safetensors"
    good = steering_file.read_bytes()
    steering_file.write_bytes(good[:-8] + bytes(8))
    with pytest.raises(ArtifactError, match="noise_steering.safetensors is not the file"):
        load_artifact(tmp_path / "art")
    steering_file.unlink()
    with pytest.raises(ArtifactError, match="noise_steering.safetensors is missing"):
        load_artifact(tmp_path / "art")


def test_robo_eval_of_a_noise_run_scores_the_steered_policy(tmp_path, chain, monkeypatch):
    """`robo eval --checkpoint <noise run>/ppo/best` evaluates what would ship: the base fed the steered noise,
    with the base checkpoint's task metadata, not an error and not the unsteered base."""
    import robo.evaluate
    from policies.checkpoint import load_checkpoint, read_config
    from robo.evaluate import EvalConfig, evaluate_checkpoint
    from robo.rl.noise_ppo import NoiseActor, load_noise_policy, save_noise_policy

    _, st = chain
    actor = NoiseActor(load_checkpoint(st))
    with torch.no_grad():
        actor.net[-1].bias.fill_(0.8)  # a steering mean well away from the base's N(0, I)
    save_noise_policy(tmp_path / "noise", actor, str(st))
    seen = []
    monkeypatch.setattr(robo.evaluate, "evaluate_policy", lambda policy, config: seen.append(policy) or {})
    evaluate_checkpoint(EvalConfig(checkpoint=tmp_path / "noise", episodes=1))
    (policy,) = seen
    assert policy.kind == "noise_steered" and policy.extra == read_config(st)["extra"]
    obs = make_batch("lowdim", n=2)["obs"]
    draw = lambda p: p.predict(obs, generator=torch.Generator().manual_seed(3))  # noqa: E731
    assert torch.equal(draw(policy), draw(load_noise_policy(tmp_path / "noise").shipped()))
    assert not torch.allclose(draw(policy), draw(load_checkpoint(st)), atol=1e-3)
