"""The `stbp` command line: one program, one subcommand per pipeline stage."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from export.artifact import artifact_bytes, load_artifact
from export.emulator import emulate
from export.netx import netx_load_arguments, write_netx
from export.hw_config import resolve_hardware_config
from export.quantize import QuantizationWarning
from export.timing import TimingError, deployment_timing
from interchange.nir_neurons import DEFAULT_DT, NIR_INTEGRATORS, NIR_NEURONS
from lava_backend.fidelity import check_gates
from lava_backend.report_html import pyplot, write_fidelity_files
from lava_backend.runner import run_network
from netgraph import Graph
from netgraph.errors import ConfigError, StbpError, Terminated, UsageError, one_line, raise_on_sigterm, shown
from netgraph.provenance import PACKAGE_NAME, atomic_files, atomic_write, package_versions, read_json
from spikedata import DATASETS, TONIC_DATASETS, load_dataset
from stbp_cli.pipeline import (evaluation_spikes, evaluation_split, export_checkpoint, export_nir,
                               import_nir_checkpoint, run_fidelity)
from trainer.checkpoint import load_checkpoint
from trainer.config import config_with_overrides, float_only_neuron, load_config
from trainer.distributed import launched_rank
from trainer.train import train

EXIT_USAGE = 2
EXIT_GATE = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_progress(p) -> None:
    """--progress / --no-progress: by default progress bars are shown only when stderr is a
    terminal (a log file or a pipe would fill with carriage returns); `_resolve_progress`
    decides, once, for every subcommand."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--progress", dest="force_progress", action="store_true",
                       help="show progress bars even when stderr is not a terminal")
    group.add_argument("--no-progress", action="store_true",
                       help="no progress bars (the default when stderr is not a terminal: a log file or a pipe)")


def _resolve_progress(args) -> None:
    """The one place that decides whether progress bars are drawn: sets args.no_progress,
    which every subcommand reads."""
    if not hasattr(args, "no_progress"):
        return
    if getattr(args, "force_progress", False):
        args.no_progress = False
    elif not args.no_progress:
        args.no_progress = not _stderr_is_terminal()


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train an STBP network from a YAML run config")
    p.add_argument("--config", help="YAML run config (see configs/); with --resume and no --config, the config "
                                    "stored in the checkpoint")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.add_argument("--device", help="override training.device: auto, cpu, cuda[:N]")
    p.add_argument("--seed", type=int, help="override seed")
    p.add_argument("--output-dir", help="override output_dir (checkpoint and history go there)")
    p.add_argument("--data-path", help="override data.path (the data set's folder, or the .npz file of npz)")
    p.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue training from this checkpoint (with its stored config unless --config is given; a "
                        "config that would change the run is refused); raise --epochs to train further")
    _add_progress(p)
    p.set_defaults(handler=_cmd_train)


def _run_config(args):
    """--config, or, with --resume alone, the config stored in that checkpoint (written to the
    checkpoint's folder unless --output-dir says otherwise)."""
    if args.config is not None:
        return load_config(args.config)
    if args.resume is None:
        raise UsageError("give --config (a YAML run config, see configs/), or --resume CHECKPOINT to continue with "
                         "the config stored in it")
    stored = load_checkpoint(args.resume).config
    return config_with_overrides(stored, output_dir=str(Path(args.resume).parent))


def _cmd_train(args) -> int:
    config = config_with_overrides(
        _run_config(args),
        **{
            "training.epochs": args.epochs,
            "training.device": args.device,
            "seed": args.seed,
            "output_dir": args.output_dir,
            "data.path": args.data_path,
        },
    )
    reason = float_only_neuron(config.training)
    if reason is not None and launched_rank() == 0:  # started by torchrun: said once, by rank 0
        print(f"warning: this network trains and evaluates in float, but cannot be exported: it uses {reason}",
              file=sys.stderr)
    result = train(config, resume=args.resume, progress=not args.no_progress, inspect=_warn_if_not_deployable)
    if result.rank != 0:  # one of several data-parallel processes: rank 0 writes and reports
        return 0
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


def _positive_float(text: str) -> float:
    value = float(text)
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _percentage_points(text: str) -> float:
    """A gate's threshold in percentage points, finite (nan would make every comparison false and
    inf would hold always: gates that never fail)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number of percentage points, got {text}")
    return value


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="quantize a checkpoint to Loihi fixed point and write the ONNX artifact "
                                      "(or the float network as NIR)")
    p.add_argument("checkpoint", help="trainer checkpoint (.safetensors)")
    p.add_argument("--format", choices=["onnx", "nir", "netx"], default="onnx",
                   help="onnx: the Loihi fixed-point artifact `stbp run` and `stbp compare` take (default); "
                        "nir: the trained float network as a NIR graph for snnTorch, norse and other NIR tools; "
                        "netx: lava-dl netx HDF5 for a Loihi 2 board (quantized so netx reproduces the emulator; "
                        "plain chains only), with an ONNX artifact of the same integers beside it")
    p.add_argument("--hw", default="loihi2",
                   help="hardware config: a YAML path or a shipped name, loihi2 or loihi1 (default: loihi2)")
    p.add_argument("-o", "--output", required=True,
                   help="output path (.onnx, .nir or .net); onnx and netx write the quantization report beside it")
    p.add_argument("--allow-clip", action="store_true",
                   help="clip out-of-range weights/biases/decays with a warning instead of refusing")
    p.add_argument("--measure", type=_non_negative_int, default=256, metavar="N",
                   help="onnx, netx: measure each population's quantization error (trained float vs integer, by "
                        "depth) on the first N test samples into the report (default 256; 0: skip)")
    p.add_argument("--data-path", help="--measure: the data set's folder or .npz file (default: the training config's)")
    p.add_argument("--dt", type=_positive_float, default=DEFAULT_DT,
                   help=f"nir only: seconds per time step the NIR time constants are stated for (default {DEFAULT_DT:g}, "
                        "the step snnTorch's import_from_nir assumes)")
    p.add_argument("--nir-r", choices=["tau", "unit"], default="tau",
                   help="nir: 'tau' writes LIF nodes with r = tau_mem/dt and the trained weights (default; snnTorch's "
                        "convention); 'unit' writes r = 1 and weights times tau_mem/dt, for readers that ignore r "
                        "(norse 1.1.0). Both are the same NIR dynamics.")
    p.set_defaults(handler=_cmd_export)


def _cmd_export(args) -> int:
    _expect_kind(args.checkpoint, "checkpoint", "`stbp export` takes the trainer checkpoint (.safetensors)")
    if args.format == "nir":
        if Path(args.output).suffix.lower() == ".onnx":
            raise UsageError(f"{args.output}: a NIR file should not be named .onnx (use .nir)")
        written = export_nir(args.checkpoint, args.output, args.dt, args.nir_r)
        kinds = ", ".join(f"{name} ({type(node).__name__})" for name, node in written.nodes.items()
                          if isinstance(node, NIR_NEURONS + NIR_INTEGRATORS))
        print(f"NIR graph: {args.output} (dt = {args.dt:g} s, r convention {args.nir_r}; populations {kinds}). Conventions: spikes when "
              "v >= v_threshold (NIR states v > v_threshold), reset to 0, bias added every step "
              "(see interchange/nir_neurons.py)")
        return 0
    hw = resolve_hardware_config(args.hw)
    netx = args.format == "netx"
    if netx and Path(args.output).suffix.lower() == ".onnx":
        raise UsageError(f"{args.output}: a netx file needs another suffix (e.g. .net): the ONNX artifact of the "
                         "same integers is written beside it as .onnx")
    with warnings.catch_warnings():
        # The notes are collected in the report and printed with it.
        warnings.simplefilter("ignore", QuantizationWarning)
        network, report = export_checkpoint(args.checkpoint, hw, allow_clip=args.allow_clip, netx=netx,
                                            measure_samples=args.measure, data_path=args.data_path)
    artifact = Path(args.output).with_suffix(".onnx") if netx else Path(args.output)
    report_path = Path(f"{args.output}.report.json")
    _write_export(network, report, artifact, report_path, Path(args.output) if netx else None)
    print(report.format_table())
    if netx:
        load = ", ".join(f"{k}={v}" for k, v in netx_load_arguments(network).items())
        print(f"netx:     {args.output} (load with lava.lib.dl.netx.hdf5.Network(path, {load}))\n"
              f"artifact: {artifact} (the same integers, for `stbp run` and `stbp compare`)")
    else:
        print(f"artifact: {artifact}")
    print(f"report:   {report_path}")
    return 0


def _write_export(network, report, artifact: Path, report_path: Path, netx_path: Path | None) -> None:
    """The artifact, its report (and the netx file) as one unit: all of them or none (a full
    disk or an interrupt while writing leaves the previous files as they were)."""
    payload = artifact_bytes(network)
    report_text = json.dumps(report.to_dict(), indent=2).encode()
    paths = [artifact, report_path] + ([netx_path] if netx_path is not None else [])
    with atomic_files(paths, "w+b") as handles:
        handles[0].write(payload)
        handles[1].write(report_text)
        if netx_path is not None:
            write_netx(network, handles[2])


def _add_lava_conv(p) -> None:
    p.add_argument("--lava-conv", choices=["conv", "dense"], default="conv",
                   help="conv synapses on Lava: 'conv' runs Lava's Conv process with one shared kernel, as a chip "
                        "stores it (default); 'dense' unrolls each into a Dense matrix (about 2.5x faster on the CPU "
                        "simulator, same spikes)")


def _add_import(sub) -> None:
    p = sub.add_parser("import", help="import a NIR graph (e.g. from snnTorch or norse) as a checkpoint that "
                                      "export, run and compare take")
    p.add_argument("model", help="NIR file (.nir)")
    p.add_argument("-o", "--output-dir", required=True, help="directory for checkpoint.safetensors")
    p.add_argument("--dt", type=_positive_float,
                   help="seconds per time step to step the NIR neurons at (default: the dt recorded by `stbp export "
                        "--format nir`; snnTorch uses 1e-4, norse's default is 1e-3)")
    p.add_argument("--data", required=True, choices=DATASETS, help="the data set the network classifies")
    p.add_argument("--data-path", help="directory of the data files (mnist, nmnist)")
    p.add_argument("--time-steps", type=_positive_int, required=True, help="time steps per sample (T)")
    p.add_argument("--encoding", default="bernoulli", help="input encoding of images (default bernoulli)")
    p.add_argument("--eval-seed", type=int, default=12345, help="seed of the evaluation encoding")
    p.set_defaults(handler=_cmd_import)


def _cmd_import(args) -> int:
    input_shape = load_dataset(args.data, args.data_path, args.time_steps).input_shape
    settings = {"data": {"name": args.data, "path": args.data_path},
                "encoding": {"kind": args.encoding, "time_steps": args.time_steps},
                "training": {"eval_seed": args.eval_seed}, "output_dir": args.output_dir}
    path, imported = import_nir_checkpoint(args.model, args.output_dir, args.dt, settings, input_shape)
    for note in imported.notes:
        print(f"note: {note}")
    layers = ", ".join(f"{p.name} {p.shape} tau {p.tau:g}" + (f" tau_current {p.tau_current:g}" if p.tau_current else "")
                       for p in imported.graph.populations)
    print(f"imported {args.model} at dt = {imported.dt:g} s: {layers}\ncheckpoint: {path}")
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run an exported artifact on Lava (or the emulator) over a test set")
    p.add_argument("artifact", help="artifact written by `stbp export` (.onnx)")
    p.add_argument("--backend", choices=["fixed_pt", "floating_pt", "emulator"], default="fixed_pt",
                   help="Lava fixed_pt (bit-accurate), Lava floating_pt, or the bit-exact emulator")
    p.add_argument("--data", help=f"data set: one of {', '.join(DATASETS)}, or tonic:<{'|'.join(TONIC_DATASETS)}> "
                                  "(default: the one the network was trained on; its inputs must have the shape "
                                  "the network reads)")
    p.add_argument("--data-path", help="the data files: mnist's or a tonic data set's folder, or the .npz file of npz "
                                       "(default: the training config's, for its data set)")
    p.add_argument("--limit", type=_positive_int, help="only the first N test samples")
    p.add_argument("--shards", type=_positive_int, help="parallel Lava runtimes (default: one per core, one per 100 samples)")
    _add_lava_conv(p)
    p.add_argument("--save-spikes", metavar="NPZ",
                   help="write the output spikes (samples, T, classes), the predictions and labels here (and, for a "
                        "potential readout, the output potentials in Loihi units)")
    p.add_argument("--save-input-spikes", metavar="NPZ",
                   help="write the encoded input spikes (samples, T, *input_shape) and labels here: run a source "
                        "framework on them and pass its spikes to `stbp compare --reference`")
    _add_progress(p)
    p.set_defaults(handler=_cmd_run)


def _cmd_run(args) -> int:
    _expect_kind(args.artifact, "artifact", "`stbp run` takes the artifact `stbp export` writes from it (.onnx)")
    network = load_artifact(args.artifact)
    training_data = network.metadata.get("training_config", {}).get("data")
    training_data = training_data if isinstance(training_data, dict) else {}
    name = args.data or training_data.get("name")
    if not isinstance(name, str) or not name:
        raise UsageError(f"{args.artifact} does not say which data set it was trained on; pass --data")
    path = args.data_path or (training_data.get("path") if name == training_data.get("name") else None)
    path = path if isinstance(path, str) else None
    dataset = training_data.get("dataset") if name == training_data.get("name") else None  # which tonic data set
    split = evaluation_split(network, name, path, args.limit, dataset if isinstance(dataset, str) else None)
    _check_input_shape(args.artifact, network, name, split.inputs.shape[1:], training_data.get("name"))
    spikes = evaluation_spikes(network, split)
    if args.save_input_spikes:
        with atomic_write(args.save_input_spikes) as handle:
            np.savez_compressed(handle, input_spikes=spikes, labels=split.labels)
        print(f"input spikes {spikes.shape} and labels: {args.save_input_spikes}")
    started = time.perf_counter()
    if args.backend == "emulator":
        result = emulate(network, spikes, progress=not args.no_progress)
        rate = len(spikes) / (time.perf_counter() - started)
        detail = f"emulator ({result.backend})"
    else:
        result = run_network(network, spikes, mode=args.backend, record="output", shards=args.shards,
                             progress=not args.no_progress, conv_mapping=args.lava_conv)
        rate = result.samples_per_s
        detail = (f"Lava {args.backend}, {result.shards} runtime(s), {result.lava_steps} Lava steps, "
                  f"{result.wall_s:.1f} s including {result.setup_s:.1f} s to build and start Lava")
        if result.conv_synapses:
            on_conv = sum(mapping == "conv" for mapping in result.conv_synapses.values())
            detail += f", {on_conv} of {len(result.conv_synapses)} conv synapses on Lava's Conv process"
        for note in result.notes:
            print(f"note: {note}")
    output, potential, predictions = result.output_spikes, result.output_potential, result.predictions
    accuracy = float((predictions == split.labels).mean())
    print(f"{detail}: accuracy {100 * accuracy:.2f}% on {len(split.labels)} {name} test samples, "
          f"{rate:.1f} samples/s (T = {network.time_steps})")
    if args.save_spikes:
        with atomic_write(args.save_spikes) as handle:
            extra = {} if potential is None else {"output_potential": potential}
            np.savez_compressed(handle, output_spikes=output, predictions=predictions, labels=split.labels, **extra)
    return 0


def _check_input_shape(artifact, network, name: str, sample_shape: tuple[int, ...], trained_on) -> None:
    """One line instead of a shape error deep in a backend when the data set's samples (an
    image, or an event recording's frames) do not have the shape the network reads."""
    expected = tuple(int(n) for n in network.input_shape)
    if tuple(sample_shape[-len(expected):]) == expected:
        return
    shown_shape = "x".join(str(n) for n in sample_shape[-len(expected):])
    hint = f"it was trained on {trained_on}; pass --data {trained_on}" if isinstance(trained_on, str) else \
        "pass the data set it was trained on with --data"
    raise UsageError(f"{artifact} expects {'x'.join(map(str, expected))} inputs, but {name} gives {shown_shape} "
                     f"({hint})")


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="fidelity harness: trained model vs emulator vs Lava on the same inputs")
    p.add_argument("checkpoint", help="trainer checkpoint (.safetensors)")
    p.add_argument("artifact", help="the artifact exported from that checkpoint (.onnx)")
    p.add_argument("--data-path", help="the data set's folder or .npz file (default: the training config's)")
    p.add_argument("--limit", type=_positive_int, help="only the first N test samples")
    p.add_argument("--backends", default="trained,emulator,lava_fixed,lava_float",
                   help="comma-separated subset of trained,emulator,lava_fixed,lava_float")
    p.add_argument("--shards", type=_positive_int, help="parallel Lava runtimes")
    _add_lava_conv(p)
    p.add_argument("--json", help="write the full report here (default: beside the artifact)")
    p.add_argument("--plot", help="write the raster/rate plot here (default: beside the artifact)")
    p.add_argument("--max-accuracy-drop", type=_percentage_points, metavar="PP",
                   help="fail (exit 1) if deployed accuracy is more than PP percentage points below trained")
    p.add_argument("--require-bit-exact", action="store_true",
                   help="fail (exit 1) unless the emulator and Lava fixed_pt agree on every spike")
    p.add_argument("--reference", metavar="NPZ",
                   help="spikes the source framework recorded on the inputs `stbp run --save-input-spikes` wrote: one "
                        "(samples, T, neurons) array per population (NIR node name, population name or 'output'); "
                        "compared and reported, not gated")
    _add_progress(p)
    p.set_defaults(handler=_cmd_compare)


def _compare_and_report(checkpoint, artifact, args, json_path: Path, plot_path: Path) -> int:
    html_path = json_path.with_suffix(".html")  # beside the JSON, written with it as one unit
    if len({json_path.resolve(), html_path.resolve(), plot_path.resolve()}) < 3:  # before any backend runs
        raise UsageError(f"the JSON report {json_path}, the HTML report {html_path} (the JSON's name with .html) and "
                         f"the plot {plot_path} must be three different files (--json, --plot)")
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    report, runs = run_fidelity(checkpoint, artifact, data_path=args.data_path, limit=args.limit,
                                backends=backends, shards=args.shards, progress=not args.no_progress,
                                reference=args.reference, conv_mapping=args.lava_conv)
    print(report.format_table())
    sample = write_fidelity_files(report, runs, json_path, html_path, args.max_accuracy_drop, args.require_bit_exact,
                                  plot_path)
    plotted = f"{plot_path} (rasters of sample {sample})" if sample is not None else "none (no deployed backend ran)"
    print(f"\nreport: {json_path}\nhtml:   {html_path}\nplot:   {plotted}")
    reason = check_gates(report, args.max_accuracy_drop, args.require_bit_exact)
    if reason:
        print(f"stbp {args.command}: FAILED: {reason}", file=sys.stderr)
        return EXIT_GATE
    return 0


def _sniffed_kind(path: str | Path) -> str | None:
    """'checkpoint' for a safetensors file (8-byte header length, then a JSON object),
    'artifact' for a .onnx name or a protobuf that opens with ONNX's ir_version field,
    None when unsure or unreadable (the loader then says what is wrong)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return None
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 100_000_000:
        return "checkpoint"
    if Path(path).suffix.lower() == ".onnx" or head[:1] == b"\x08":
        return "artifact"
    return None


_KIND_WORDS = {"checkpoint": "a checkpoint (safetensors)", "artifact": "an artifact (ONNX)"}


def _expect_kind(path: str | Path, expected: str, advice: str) -> None:
    """Refuses, in one line, a checkpoint given where an artifact is expected or the reverse."""
    kind = _sniffed_kind(path)
    if kind is not None and kind != expected:
        raise UsageError(f"{path} looks like {_KIND_WORDS[kind]}, not {_KIND_WORDS[expected]}; {advice}")


def _cmd_compare(args) -> int:
    swapped = _sniffed_kind(args.checkpoint) == "artifact" and _sniffed_kind(args.artifact) == "checkpoint"
    if swapped:
        raise UsageError(f"the arguments are swapped: {args.artifact} looks like {_KIND_WORDS['checkpoint']} and "
                         f"{args.checkpoint} like {_KIND_WORDS['artifact']}; give the checkpoint (.safetensors) first "
                         "and the artifact (.onnx) second")
    _expect_kind(args.checkpoint, "checkpoint", "give the checkpoint (.safetensors) first, the artifact (.onnx) second")
    _expect_kind(args.artifact, "artifact", "give the checkpoint (.safetensors) first, the artifact (.onnx) second")
    artifact = Path(args.artifact)
    json_path = Path(args.json) if args.json else artifact.with_suffix(".fidelity.json")
    plot_path = Path(args.plot) if args.plot else artifact.with_suffix(".fidelity.png")
    return _compare_and_report(args.checkpoint, artifact, args, json_path, plot_path)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the embedded digits: train, export, Lava, compare")
    p.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "digits_mlp.yaml"),
                   help="YAML run config to train and deploy (default: configs/digits_mlp.yaml, the embedded 8x8 digits)")
    p.add_argument("--output-dir", default="runs/demo",
                   help="directory for the checkpoint, net.onnx, the quantization report and fidelity.json, "
                        ".html and .png (default: runs/demo)")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.add_argument("--hw", default="loihi2", help="hardware config name or YAML path (default: loihi2)")
    p.add_argument("--limit", type=_positive_int, help="compare on only the first N test samples")
    p.add_argument("--shards", type=_positive_int, help="parallel Lava runtimes")
    p.add_argument("--max-accuracy-drop", type=_percentage_points, default=1.0, metavar="PP",
                   help="fail (exit 1) if deployed accuracy is more than PP percentage points below trained "
                        "(default: 1.0); the demo also fails unless the emulator and Lava fixed_pt agree on every spike")
    _add_progress(p)
    p.set_defaults(handler=_cmd_demo)


def _cmd_demo(args) -> int:
    out = Path(args.output_dir)
    reason = float_only_neuron(load_config(args.config).training)
    if reason is not None:  # the demo deploys what it trains: say so before training, not after
        raise ConfigError(f"{args.config}: stbp demo deploys the network, which cannot be exported: it uses {reason}; "
                          "`stbp train` trains it in float")
    print(f"[1/3] training {args.config} -> {out}")
    train_args = argparse.Namespace(config=args.config, epochs=args.epochs, device="cpu", seed=None,
                                    output_dir=str(out), data_path=None, resume=None, no_progress=args.no_progress)
    _cmd_train(train_args)
    checkpoint = out / "checkpoint.safetensors"
    artifact = out / "net.onnx"
    print(f"\n[2/3] exporting for {args.hw} -> {artifact}")
    _cmd_export(argparse.Namespace(checkpoint=str(checkpoint), format="onnx", hw=args.hw, output=str(artifact),
                                   allow_clip=False, measure=256, data_path=None))
    print("\n[3/3] trained model vs emulator vs Lava fixed_pt vs Lava floating_pt")
    compare_args = argparse.Namespace(command="demo", data_path=None, limit=args.limit,
                                      backends="trained,emulator,lava_fixed,lava_float", shards=args.shards,
                                      max_accuracy_drop=args.max_accuracy_drop, require_bit_exact=True,
                                      reference=None, lava_conv="conv", no_progress=args.no_progress)
    return _compare_and_report(str(checkpoint), artifact, compare_args, out / "fidelity.json", out / "fidelity.png")


def _add_plot_history(sub) -> None:
    p = sub.add_parser("plot-history", help="plot a training run's loss and train/test accuracy per epoch (PNG)")
    p.add_argument("history", help="a run directory (`stbp train --output-dir`) or its history.json")
    p.add_argument("-o", "--output", help="PNG to write (default: history.png beside history.json)")
    p.set_defaults(handler=_cmd_plot_history)


_HISTORY_KEYS = ("loss", "train_accuracy", "test_accuracy")


def read_history(path: Path) -> list[dict]:
    """The epochs of a history.json `stbp train` wrote, checked: a non-empty list of objects
    with an increasing integer 'epoch' and finite 'loss', 'train_accuracy', 'test_accuracy'."""
    try:
        records = read_json(path.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path}: not a history.json `stbp train` writes (not JSON: {one_line(exc)})") from exc
    if not isinstance(records, list) or not records:
        raise UsageError(f"{path}: not a history.json `stbp train` writes (expected a non-empty list of epochs)")
    previous = 0
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise UsageError(f"{path}: entry {index} is not an object with epoch, loss and accuracies")
        epoch = record.get("epoch")
        if type(epoch) is not int or epoch <= previous:
            raise UsageError(f"{path}: entry {index}: 'epoch' must be an integer above the one before, got "
                             f"{shown(epoch)}")
        previous = epoch
        for key in _HISTORY_KEYS:
            value = record.get(key)
            if not _finite_number(value):
                raise UsageError(f"{path}: entry {index} (epoch {epoch}): {key!r} must be a finite number, got "
                                 f"{shown(value)}")
    return records


def _finite_number(value) -> bool:
    """A JSON number that is finite as a float (an integer of 400 digits is not: float() overflows)."""
    if type(value) not in (int, float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _cmd_plot_history(args) -> int:
    source = Path(args.history)
    path = source / "history.json" if source.is_dir() else source
    records = read_history(path)
    output = Path(args.output) if args.output else path.with_name("history.png")
    plot_history(records, output, title=str(path.parent))
    print(f"plot: {output} ({len(records)} epochs)")
    return 0


def plot_history(records: list[dict], output: Path, title: str = "") -> None:
    """Loss and train/test accuracy per epoch, as a PNG written atomically."""
    from matplotlib.ticker import MaxNLocator  # slow to import: only when a plot is asked for

    plt = pyplot()

    epochs = [r["epoch"] for r in records]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    loss_ax.plot(epochs, [r["loss"] for r in records], marker="o", color="tab:red")
    loss_ax.set_ylabel("training loss")
    for key, label, color in (("train_accuracy", "train", "tab:blue"), ("test_accuracy", "test", "tab:green")):
        acc_ax.plot(epochs, [100 * r[key] for r in records], marker="o", label=label, color=color)
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.legend()
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_write(output) as handle:
            fig.savefig(handle, format="png", dpi=110)
    finally:
        plt.close(fig)


def version_text() -> str:
    """`stbp --version`: the package's version, then the versions that shape results (the
    ones every checkpoint and artifact records, netgraph.provenance.package_versions)."""
    versions = package_versions()
    own = versions.pop(PACKAGE_NAME, "not installed")
    versions.pop("platform", None)
    return f"stbp {own} ({PACKAGE_NAME})\n" + ", ".join(f"{name} {value}" for name, value in versions.items())


class _VersionAction(argparse.Action):
    """Like argparse's 'version' action, but the versions are looked up only when asked for."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stbp",
        description="Train STBP spiking networks, export them to Loihi fixed point, "
        "run them on Lava and check that the deployment matches.",
    )
    parser.add_argument("--version", action=_VersionAction,
                        help="print the version of stbp and of the packages that shape results, and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_export(sub)
    _add_import(sub)
    _add_run(sub)
    _add_compare(sub)
    _add_demo(sub)
    _add_plot_history(sub)
    return parser


def _os_error_line(exc: OSError) -> str:
    """`path: reason` (both paths of a failed rename or copy) for a failed file operation."""
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    reason = exc.strerror or one_line(exc)
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand. Exit status: 0 done; 1 a fidelity gate failed; 2 bad input (a
    StbpError: config, data, checkpoint, artifact, hardware, Lava run, interchange), a file
    that cannot be read or written, or memory that ran out, each as one line; 130 Ctrl-C;
    143 SIGTERM, 129 SIGHUP (after Lava's workers and temporary files are cleaned up). Any other exception
    is a bug and prints its traceback; STBP_DEBUG=1 prints the traceback of every error."""
    args = build_parser().parse_args(argv)
    _resolve_progress(args)
    debug = os.environ.get("STBP_DEBUG", "") not in ("", "0")
    try:
        with raise_on_sigterm():
            return args.handler(args)
    except StbpError as exc:
        if debug:
            raise
        print(f"stbp {args.command}: error: {one_line(exc)}", file=sys.stderr)
    except OSError as exc:
        if debug:
            raise
        print(f"stbp {args.command}: error: {_os_error_line(exc)}", file=sys.stderr)
    except (MemoryError, torch.OutOfMemoryError):
        if debug:
            raise
        print(f"stbp {args.command}: error: out of memory (try --limit, fewer --shards, or a smaller batch)",
              file=sys.stderr)
    except KeyboardInterrupt:
        print(f"stbp {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated as exc:
        print(f"stbp {args.command}: terminated", file=sys.stderr)
        return 128 + exc.signum  # 143 for SIGTERM, 129 for SIGHUP, as a shell reports them
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
