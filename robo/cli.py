"""The ``robo`` command line. Subcommands import their modules lazily so ``robo --help`` starts fast."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from robo.config_cli import add_dataclass_args, dataclass_from_args


def _pipeline(args: argparse.Namespace) -> int:
    from robo.pipeline import PipelineConfig, run_pipeline

    summary = run_pipeline(dataclass_from_args(PipelineConfig, args))
    return 0 if summary["dataset_ok"] else 1


def _collect(args: argparse.Namespace) -> int:
    from robo.collect import CollectConfig, collect

    config = dataclass_from_args(CollectConfig, args)
    path, stats = collect(config)
    print(f"saved {stats.saved} episodes to {path} (success {stats.success_rate:.2f}, {stats.discarded} discarded, "
          f"{stats.overruns} control overruns)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from robo.config_cli import explicit_values
    from robo.train import TrainConfig, build_config, train

    config = build_config(args.preset, explicit_values(TrainConfig, args))
    summary = train(config)
    print(f"trained {config.policy} for {summary['steps']} steps ({summary['samples_per_s']:.0f} samples/s); "
          f"checkpoints in {summary['output_dir']}/best and /last")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from robo.evaluate import EvalConfig, evaluate_checkpoint

    summary = evaluate_checkpoint(dataclass_from_args(EvalConfig, args))
    lo, hi = summary["ci95"]
    print(f"{summary['task']}: success {summary['success_rate']:.3f} over {summary['episodes']} episodes "
          f"(95% CI {lo:.2f}-{hi:.2f}); results in {args.output_dir}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from robo.finetune import FinetuneConfig, finetune

    report = finetune(dataclass_from_args(FinetuneConfig, args))
    ppo = report["ppo"]
    print(f"PPO: {ppo['env_steps']} env steps in {ppo['iterations']} iterations; refined policy in {ppo['best_dir']}"
          f"; report in {args.output_dir}/report.json")
    gate = report.get("student_gate")
    return 0 if gate is None or gate["passed"] else 3


def _compare_runs(args: argparse.Namespace) -> int:
    from robo.compare_runs import CompareRunsConfig, compare_runs

    compare_runs(dataclass_from_args(CompareRunsConfig, args))
    return 0


def _export(args: argparse.Namespace) -> int:
    from robo.export import ExportConfig, export

    manifest = export(dataclass_from_args(ExportConfig, args))
    print(f"artifact {args.output} ({manifest['policy']['kind']}, {manifest['control_rate_hz']:g} Hz, "
          f"content {manifest['content_sha256'][:16]})")
    return 0


def _bench_finetune(args: argparse.Namespace) -> int:
    from robo.bench.finetune import FinetuneBenchConfig, run_finetune_bench

    run_finetune_bench(dataclass_from_args(FinetuneBenchConfig, args))
    return 0


def _bench_store(args: argparse.Namespace) -> int:
    from robo.bench.store import StoreBenchConfig, run_store_bench

    run_store_bench(dataclass_from_args(StoreBenchConfig, args))
    return 0


def _bench_latency(args: argparse.Namespace) -> int:
    from robo.bench.latency import LatencyBenchConfig, run_latency_bench

    run_latency_bench(dataclass_from_args(LatencyBenchConfig, args))
    return 0


def _bench_train(args: argparse.Namespace) -> int:
    from robo.bench.train import TrainBenchConfig, run_train_bench

    run_train_bench(dataclass_from_args(TrainBenchConfig, args))
    return 0


def _improve(args: argparse.Namespace) -> int:
    from robo.rl.improve import ImproveConfig, run_improve

    s = run_improve(dataclass_from_args(ImproveConfig, args))
    print(f"{s['task']}: OPE {s['ope_start']:.3f} -> {s['ope_accepted']:.3f} ({s['accepted']} accepted, "
          f"{s['rejected']} rejected); accepted policy in {s['output_dir']}/accepted")
    return 0


def _bench_ope(args: argparse.Namespace) -> int:
    from robo.bench.ope import OPEBenchConfig, run_ope_bench

    run_ope_bench(dataclass_from_args(OPEBenchConfig, args))
    return 0


def _bench_improve(args: argparse.Namespace) -> int:
    from robo.bench.improve import ImproveBenchConfig, run_improve_bench

    run_improve_bench(dataclass_from_args(ImproveBenchConfig, args))
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from robo.deploy import DeployRunConfig, run_deploy

    return run_deploy(dataclass_from_args(DeployRunConfig, args))


def _bench_node(args: argparse.Namespace) -> int:
    from robo.bench.node import NodeBenchConfig, run_node_bench

    run_node_bench(dataclass_from_args(NodeBenchConfig, args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    # Imported here (cheap: dataclasses only) so the flags come from the same dataclasses the code uses.
    from robo.bench.finetune import FinetuneBenchConfig
    from robo.bench.latency import LatencyBenchConfig
    from robo.bench.node import NodeBenchConfig
    from robo.bench.store import StoreBenchConfig
    from robo.bench.train import TrainBenchConfig
    from robo.collect import CollectConfig
    from robo.deploy import DeployRunConfig
    from robo.data.cli import add_data_commands
    from robo.evaluate import EvalConfig
    from robo.export import ExportConfig
    from robo.finetune import FinetuneConfig
    from robo.pipeline import PipelineConfig
    from robo.train import TrainConfig

    parser = argparse.ArgumentParser(prog="robo", description="Robot learning stack: record, train, improve, deploy.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pipeline", help="run the simulated pipeline on the embedded default")
    add_dataclass_args(p, PipelineConfig)
    p.set_defaults(func=_pipeline)

    p = sub.add_parser("collect", help="record demonstrations into a Zarr dataset")
    add_dataclass_args(p, CollectConfig)
    p.set_defaults(func=_collect)

    add_data_commands(sub)

    p = sub.add_parser("train", help="behaviour cloning: diffusion, consistency or Gaussian policy")
    p.add_argument("--preset", default=None, help="preset name in robo/presets or a YAML path (train: / policy:)")
    add_dataclass_args(p, TrainConfig, skip=("policy_config",), only_explicit=True)
    p.set_defaults(func=_train)

    from robo.rl.improve import ImproveConfig

    p = sub.add_parser("improve", help="offline PPO across the denoising steps, every update gated by OPE")
    add_dataclass_args(p, ImproveConfig)
    p.set_defaults(func=_improve)

    p = sub.add_parser("eval", help="simulated success rate of a checkpoint, with videos and a summary plot")
    add_dataclass_args(p, EvalConfig)
    p.set_defaults(func=_eval)

    p = sub.add_parser("finetune", help="online PPO in sim, then distil, gate the student and export")
    add_dataclass_args(p, FinetuneConfig)
    p.set_defaults(func=_finetune)

    from robo.compare_runs import CompareRunsConfig

    p = sub.add_parser("compare-runs", help="online runs side by side: one success-vs-env-steps PNG and a table")
    add_dataclass_args(p, CompareRunsConfig)
    p.set_defaults(func=_compare_runs)

    p = sub.add_parser("export", help="the deploy artifact the ROS node loads (weights, spec, limits, provenance)")
    add_dataclass_args(p, ExportConfig)
    p.set_defaults(func=_export)

    p = sub.add_parser("deploy", help="run a launch file's processes (policy node, sim mock) without ros2cli")
    add_dataclass_args(p, DeployRunConfig)
    p.set_defaults(func=_deploy)

    bench = sub.add_parser("bench", help="benchmarks: a table, then one JSON line of figures")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    p = bench_sub.add_parser("finetune", help="online PPO, distilled student and noise-space PPO on one budget")
    add_dataclass_args(p, FinetuneBenchConfig)
    p.set_defaults(func=_bench_finetune)
    p = bench_sub.add_parser("store", help="recording headroom and sampler throughput")
    add_dataclass_args(p, StoreBenchConfig)
    p.set_defaults(func=_bench_store)
    p = bench_sub.add_parser("latency", help="per-chunk latency: DDPM 100, DDIM 10, one-step; low-dim and 2 cameras")
    add_dataclass_args(p, LatencyBenchConfig)
    p.set_defaults(func=_bench_latency)
    p = bench_sub.add_parser("train", help="training samples per second, beside a baseline UNet")
    add_dataclass_args(p, TrainBenchConfig)
    p.set_defaults(func=_bench_train)
    p = bench_sub.add_parser("node", help="policy node through DDS: latency at 50/100 Hz, missed deadlines, CPU, fuzz")
    add_dataclass_args(p, NodeBenchConfig)
    p.set_defaults(func=_bench_node)
    from robo.bench.improve import ImproveBenchConfig
    from robo.bench.ope import OPEBenchConfig

    p = bench_sub.add_parser("ope", help="AM-Q and FQE against simulated success: Spearman, regret@1, gate accuracy")
    add_dataclass_args(p, OPEBenchConfig)
    p.set_defaults(func=_bench_ope)
    p = bench_sub.add_parser("improve", help="true success of BC, gated and ungated offline improvement, Uni-O4")
    add_dataclass_args(p, ImproveBenchConfig)
    p.set_defaults(func=_bench_improve)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, ``kill``, systemd, ``docker stop``), unwound like Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM would otherwise end the interpreter without running `finally`: the processes `robo deploy` and the
    # node bench start would be left running (still on the ROS domain, answering /sim/reset) and a recorder would
    # skip its last commit. Unwinding as Ctrl-C does stops them the same way.
    in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return _run(args)
    finally:
        if in_main_thread:  # main() called in-process (tests) leaves the caller's handler as it was
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    # PyOpenGL announces at INFO, on every command that renders, that an optional accelerator is not installed.
    logging.getLogger("OpenGL.acceleratesupport").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    from robo.data.schema import DatasetError

    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that went away shows here, inside the handler, not at interpreter exit
        return code
    except BrokenPipeError:
        # `robo data info --json | head`: the reader stopped reading. Quiet, as Unix tools are; 141 = 128 + SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (DatasetError, FileNotFoundError, ValueError, RuntimeError) as exc:
        # Bad input gets one line saying what is wrong; -v shows the traceback.
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("interrupted; committed episodes are safe", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130  # 128 + the signal, as the shell reports it


if __name__ == "__main__":
    sys.exit(main())
