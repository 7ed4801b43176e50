"""The `stbp` command line: one program, one subcommand per pipeline stage."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_USAGE = 2


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
    from trainer.config import config_with_overrides, load_config
    from trainer.provenance import atomic_write
    from trainer.train import train

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
    result = train(config, resume=args.resume, progress=not args.no_progress)
    history_path = Path(config.output_dir) / "history.json"
    with atomic_write(history_path, "w") as handle:
        json.dump(result.history, handle, indent=2)
    final = result.history[-1] if result.history else None
    if final:
        print(f"test accuracy {100 * final['test_accuracy']:.2f}% after {final['epoch']} epochs "
              f"({len(result.dataset.test.labels)} test samples)")
    print(f"checkpoint: {result.checkpoint_path}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="quantize a checkpoint to Loihi fixed point and write the ONNX artifact")
    p.add_argument("checkpoint", help="trainer checkpoint (.safetensors)")
    p.add_argument("--hw", default="loihi2", help="hardware config: a YAML path or a shipped name (loihi2, loihi1)")
    p.add_argument("-o", "--output", required=True, help="artifact path (.onnx); the report goes beside it")
    p.add_argument("--allow-clip", action="store_true",
                   help="clip out-of-range weights/biases/decays with a warning instead of refusing")
    p.set_defaults(handler=_cmd_export)


def _cmd_export(args) -> int:
    import warnings

    from export.artifact import save_artifact
    from export.hw_config import resolve_hardware_config
    from export.quantize import QuantizationWarning, export_checkpoint
    from trainer.provenance import atomic_write

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stbp",
        description="Train STBP spiking networks, export them to Loihi fixed point, "
        "run them on Lava and check that the deployment matches.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_export(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from trainer.checkpoint import CheckpointError
    from trainer.config import ConfigError
    from trainer.data import DataError

    try:
        return args.handler(args)
    except (ConfigError, CheckpointError, DataError, ValueError, FloatingPointError) as exc:
        print(f"stbp {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"stbp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
