"""The `stbp` command line: one program, one subcommand per pipeline stage."""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from export.artifact import ArtifactError, load_artifact, save_artifact
from export.emulator import emulate
from export.hw_config import HardwareConfigError, resolve_hardware_config
from export.quantize import QuantizationWarning
from export.timing import TimingError, deployment_timing
from export.validate import ExportRangeError
from lava_backend.fidelity import check_gates, plot_report
from lava_backend.runner import run_network
from netgraph import Graph, GraphError, predict_classes
from netgraph.provenance import atomic_write
from spikedata import DataError
from stbp_cli.pipeline import FidelityError, evaluation_spikes, evaluation_split, export_checkpoint, run_fidelity
from trainer.checkpoint import CheckpointError
from trainer.config import ConfigError, config_with_overrides, load_config
from trainer.train import train

EXIT_USAGE = 2
EXIT_GATE = 1


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train an STBP network from a YAML run config")
    p.add_argument("--config", required=True, help="YAML run config (see configs/)")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.add_argument("--device", help="override training.device: auto, cpu, cuda[:N]")
    p.add_argument("--seed", type=int, help="override seed")
    p.add_argument("--output-dir", help="override output_dir (checkpoint and history go there)")
    p.add_argument("--data-path", help="override data.path (directory of the data files)")
    p.add_argument("--resume", metavar="CHECKPOINT", help="continue training from this checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args) -> int:
    config = config_with_overrides(
        load_config(args.config),
        **{
            "training.epochs": args.epochs,
            "training.device": args.device,
            "seed": args.seed,
            "output_dir": args.output_dir,
            "data.path": args.data_path,
        },
    )
    result = train(config, resume=args.resume, progress=not args.no_progress, inspect=_warn_if_not_deployable)
    history_path = Path(config.output_dir) / "history.json"
    with atomic_write(history_path, "w") as handle:
        json.dump(result.history, handle, indent=2)
    final = result.history[-1] if result.history else None
    if final:
        print(f"test accuracy {100 * final['test_accuracy']:.2f}% after {final['epoch']} epochs "
              f"({len(result.dataset.test.labels)} test samples)")
    print(f"checkpoint: {result.checkpoint_path}")
    return 0


def _warn_if_not_deployable(graph: Graph) -> None:
    """Says before the first epoch when the network trains but Lava could not run it with
    its trained timing (e.g. feedback from a later layer), instead of at export."""
    try:
        deployment_timing(graph, resolve_hardware_config("loihi2").max_synaptic_delay)
    except TimingError as exc:
        print(f"warning: this network trains, but cannot be exported for Lava with its trained timing: {exc}",
              file=sys.stderr)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="quantize a checkpoint to Loihi fixed point and write the ONNX artifact")
    p.add_argument("checkpoint", help="trainer checkpoint (.safetensors)")
    p.add_argument("--hw", default="loihi2", help="hardware config: a YAML path or a shipped name (loihi2, loihi1)")
    p.add_argument("-o", "--output", required=True, help="artifact path (.onnx); the report goes beside it")
    p.add_argument("--allow-clip", action="store_true",
                   help="clip out-of-range weights/biases/decays with a warning instead of refusing")
    p.set_defaults(handler=_cmd_export)


def _cmd_export(args) -> int:
    hw = resolve_hardware_config(args.hw)
    with warnings.catch_warnings():
        # The notes are collected in the report and printed with it.
        warnings.simplefilter("ignore", QuantizationWarning)
        network, report = export_checkpoint(args.checkpoint, hw, allow_clip=args.allow_clip)
    save_artifact(network, args.output)
    report_path = Path(f"{args.output}.report.json")
    with atomic_write(report_path, "w") as handle:
        json.dump(report.to_dict(), handle, indent=2)
    print(report.format_table())
    print(f"artifact: {args.output}\nreport:   {report_path}")
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run an exported artifact on Lava (or the emulator) over a test set")
    p.add_argument("artifact", help="artifact written by `stbp export` (.onnx)")
    p.add_argument("--backend", choices=["fixed_pt", "floating_pt", "emulator"], default="fixed_pt",
                   help="Lava fixed_pt (bit-accurate), Lava floating_pt, or the bit-exact emulator")
    p.add_argument("--data", help="data set: digits or mnist (default: the one the network was trained on)")
    p.add_argument("--data-path", help="directory of the data files (mnist)")
    p.add_argument("--limit", type=_positive_int, help="only the first N test samples")
    p.add_argument("--shards", type=_positive_int, help="parallel Lava runtimes (default: one per core, one per 100 samples)")
    p.add_argument("--save-spikes", metavar="NPZ", help="write the output spikes (samples, T, classes) here")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_cmd_run)


def _cmd_run(args) -> int:
    network = load_artifact(args.artifact)
    training_data = network.metadata.get("training_config", {}).get("data")
    training_data = training_data if isinstance(training_data, dict) else {}
    name = args.data or training_data.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{args.artifact} does not say which data set it was trained on; pass --data")
    path = args.data_path or (training_data.get("path") if name == training_data.get("name") else None)
    path = path if isinstance(path, str) else None
    split = evaluation_split(network, name, path, args.limit)
    spikes = evaluation_spikes(network, split)
    started = time.perf_counter()
    if args.backend == "emulator":
        output = emulate(network, spikes, progress=not args.no_progress).output_spikes
        rate = len(spikes) / (time.perf_counter() - started)
        detail = "emulator (numpy)"
    else:
        result = run_network(network, spikes, mode=args.backend, record="output", shards=args.shards,
                             progress=not args.no_progress)
        output, rate = result.output_spikes, result.samples_per_s
        detail = (f"Lava {args.backend}, {result.shards} runtime(s), {result.lava_steps} Lava steps, "
                  f"{result.wall_s:.1f} s including {result.setup_s:.1f} s to build and start Lava")
    predictions = predict_classes(output)
    accuracy = float((predictions == split.labels).mean())
    print(f"{detail}: accuracy {100 * accuracy:.2f}% on {len(split.labels)} {name} test samples, "
          f"{rate:.1f} samples/s (T = {network.time_steps})")
    if args.save_spikes:
        with atomic_write(args.save_spikes) as handle:
            np.savez_compressed(handle, output_spikes=output, predictions=predictions, labels=split.labels)
    return 0


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="fidelity harness: trained model vs emulator vs Lava on the same inputs")
    p.add_argument("checkpoint", help="trainer checkpoint (.safetensors)")
    p.add_argument("artifact", help="the artifact exported from that checkpoint (.onnx)")
    p.add_argument("--data-path", help="directory of the data files (default: the training config's)")
    p.add_argument("--limit", type=_positive_int, help="only the first N test samples")
    p.add_argument("--backends", default="trained,emulator,lava_fixed,lava_float",
                   help="comma-separated subset of trained,emulator,lava_fixed,lava_float")
    p.add_argument("--shards", type=_positive_int, help="parallel Lava runtimes")
    p.add_argument("--json", help="write the full report here (default: beside the artifact)")
    p.add_argument("--plot", help="write the raster/rate plot here (default: beside the artifact)")
    p.add_argument("--max-accuracy-drop", type=float, metavar="PP",
                   help="fail (exit 1) if deployed accuracy is more than PP percentage points below trained")
    p.add_argument("--require-bit-exact", action="store_true",
                   help="fail (exit 1) unless the emulator and Lava fixed_pt agree on every spike")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_cmd_compare)


def _compare_and_report(checkpoint, artifact, args, json_path: Path, plot_path: Path) -> int:
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    report, runs = run_fidelity(checkpoint, artifact, data_path=args.data_path, limit=args.limit,
                                backends=backends, shards=args.shards, progress=not args.no_progress)
    print(report.format_table())
    with atomic_write(json_path, "w") as handle:
        json.dump(report.to_dict(), handle, indent=2)
    sample = plot_report(report, runs, plot_path)
    plotted = f"{plot_path} (rasters of sample {sample})" if sample is not None else "none (no deployed backend ran)"
    print(f"\nreport: {json_path}\nplot:   {plotted}")
    reason = check_gates(report, args.max_accuracy_drop, args.require_bit_exact)
    if reason:
        print(f"stbp {args.command}: FAILED: {reason}", file=sys.stderr)
        return EXIT_GATE
    return 0


def _cmd_compare(args) -> int:
    artifact = Path(args.artifact)
    json_path = Path(args.json) if args.json else artifact.with_suffix(".fidelity.json")
    plot_path = Path(args.plot) if args.plot else artifact.with_suffix(".fidelity.png")
    return _compare_and_report(args.checkpoint, artifact, args, json_path, plot_path)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the embedded digits: train, export, Lava, compare")
    p.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "digits_mlp.yaml"))
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.add_argument("--hw", default="loihi2", help="hardware config name or YAML path")
    p.add_argument("--limit", type=_positive_int, help="compare on only the first N test samples")
    p.add_argument("--shards", type=_positive_int, help="parallel Lava runtimes")
    p.add_argument("--max-accuracy-drop", type=float, default=1.0, metavar="PP")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_cmd_demo)


def _cmd_demo(args) -> int:
    out = Path(args.output_dir)
    print(f"[1/3] training {args.config} -> {out}")
    train_args = argparse.Namespace(config=args.config, epochs=args.epochs, device="cpu", seed=None,
                                    output_dir=str(out), data_path=None, resume=None, no_progress=args.no_progress)
    _cmd_train(train_args)
    checkpoint = out / "checkpoint.safetensors"
    artifact = out / "net.onnx"
    print(f"\n[2/3] exporting for {args.hw} -> {artifact}")
    _cmd_export(argparse.Namespace(checkpoint=str(checkpoint), hw=args.hw, output=str(artifact), allow_clip=False))
    print("\n[3/3] trained model vs emulator vs Lava fixed_pt vs Lava floating_pt")
    compare_args = argparse.Namespace(command="demo", data_path=None, limit=args.limit,
                                      backends="trained,emulator,lava_fixed,lava_float", shards=args.shards,
                                      max_accuracy_drop=args.max_accuracy_drop, require_bit_exact=True,
                                      no_progress=args.no_progress)
    return _compare_and_report(str(checkpoint), artifact, compare_args, out / "fidelity.json", out / "fidelity.png")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stbp",
        description="Train STBP spiking networks, export them to Loihi fixed point, "
        "run them on Lava and check that the deployment matches.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_export(sub)
    _add_run(sub)
    _add_compare(sub)
    _add_demo(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, CheckpointError, DataError, ArtifactError, ExportRangeError, HardwareConfigError, GraphError,
            FidelityError, ValueError, FloatingPointError) as exc:
        print(f"stbp {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"stbp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
