"""Benchmark: one row of the paper-comparison table (Wu et al. 2018) - train, export,
emulate, run on Lava - printed as JSON.

    ./run python benchmarks/bench_paper.py --config configs/mnist_mlp.yaml --epochs 5
    ./run python benchmarks/bench_paper.py --config configs/mnist_cnn.yaml --epochs 1 --lava-samples 1000
    ./run python benchmarks/bench_paper.py --config configs/mnist_mlp.yaml --set model.layers=784-400-10 \
        --set model.temporal_gradient=false --lava-samples 0       # SDBP (Table 7)
    ./run python benchmarks/bench_paper.py --config configs/nmnist_mlp.yaml --lava-samples 199

Trains with the config (and overrides), exports for loihi2, runs the emulator on the whole
test set and Lava fixed_pt on the first --lava-samples test samples (0 skips Lava), all on
the trainer's evaluation encoding, and prints float / emulator / Lava accuracies, per-epoch
test accuracy, training throughput and wall times. Runs on CUDA when available.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from export.emulator import emulate
from export.hw_config import resolve_hardware_config
from lava_backend.fidelity import BackendRun, compare_pair
from netgraph.provenance import package_versions
from stbp_cli.pipeline import export_checkpoint, trained_run
from trainer.checkpoint import CheckpointError, load_checkpoint
from trainer.config import config_from_dict, load_config
from trainer.encoding import encode_split
from trainer.train import train


def parse_override(text: str):
    key, _, value = text.partition("=")
    if key == "model.layers":  # "784-400-10" style shorthand for an MLP (the first number is the input)
        return key, [{"type": "dense", "units": int(u)} for u in value.split("-")[1:]]
    lowered = value.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, value


def lava_row(network, spikes, emulated, labels, checkpoint_path, samples: int) -> dict:
    """Lava fixed_pt on the first `samples` test samples beside the emulator and the float
    network, and the float-vs-integer error population by population (its growth with depth)."""
    from lava_backend.runner import run_network  # lava: only when Lava samples are asked for

    n = min(samples, len(labels))
    lava = run_network(network, spikes[:n], mode="fixed_pt", record="all", progress=False)
    exact = all(np.array_equal(lava.population_spikes[name], emulated.population_spikes[name][:n])
                for name in lava.population_spikes) and (
        lava.output_potential is None or np.array_equal(lava.output_potential, emulated.output_potential[:n]))
    trained = trained_run(load_checkpoint(checkpoint_path), spikes[:n])
    emulator_part = BackendRun("emulator", {k: v[:n] for k, v in emulated.population_spikes.items()},
                               emulated.output, 0.0, emulated.readout,
                               None if emulated.output_potential is None
                               else network.potential_in_trained_units(emulated.output_potential[:n]))
    by_depth = compare_pair(trained, emulator_part, False)
    spiking = [p for p in by_depth.populations if p.population not in by_depth.non_spiking]
    return {
        "lava_samples": n,
        "lava_fixed_accuracy": float((lava.predictions == labels[:n]).mean()),
        "emulator_accuracy_on_lava_samples": float((emulated.predictions[:n] == labels[:n]).mean()),
        "float_accuracy_on_lava_samples": float((trained.predictions == labels[:n]).mean()),
        # quantization error growth with depth: trained vs emulator, population by population
        "trained_vs_emulator_train_match": {p.population: round(p.spike_train_match, 4) for p in spiking},
        "trained_vs_emulator_count_r": {p.population: round(p.spike_count_correlation, 4) for p in spiking},
        "trained_vs_emulator_output_potential": None if by_depth.output_potential is None else {
            "rms_difference": by_depth.output_potential.rms_difference,
            "reference_rms": by_depth.output_potential.reference_rms},
        "lava_bit_exact_all_layers": exact,
        "lava_samples_per_s": round(lava.samples_per_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. model.surrogate=h3 (repeatable)")
    parser.add_argument("--output-dir")
    parser.add_argument("--lava-samples", type=int, default=1000)
    parser.add_argument("--label", default="")
    parser.add_argument("--resume", metavar="CHECKPOINT",
                        help="continue this run's checkpoint up to --epochs instead of training from scratch")
    args = parser.parse_args()

    raw = json.loads(json.dumps(load_config(args.config).to_dict()))  # tuples -> lists
    overrides = dict(parse_override(s) for s in args.set)
    if args.epochs:
        overrides["training.epochs"] = args.epochs
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        target = raw
        for part in filter(None, section.split(".")):  # a number indexes a list: model.layers.0.units
            target = target[int(part)] if isinstance(target, list) else target[part]
        target[name] = value
    config = config_from_dict(raw, f"{args.config} (with --set)")

    started = time.perf_counter()
    result = train(config, resume=args.resume, progress=False,
                   log=lambda line: print(line, file=sys.stderr, flush=True))  # stdout: the JSON row only
    train_wall = time.perf_counter() - started
    row = {"label": args.label, "config": args.config, "overrides": overrides,
           "device": "cuda" if torch.cuda.is_available() else "cpu",
           "epochs": config.training.epochs, "time_steps": config.encoding.time_steps,
           "float_test_accuracy_per_epoch": [round(h["test_accuracy"], 4) for h in result.history],
           "float_test_accuracy": result.history[-1]["test_accuracy"],
           "float_test_firing_rates": [round(r, 4) for r in result.history[-1]["test_firing_rates"]],
           "train_samples_per_s": round(float(np.mean([h["train_samples_per_s"] for h in result.history])), 1),
           "train_wall_s_this_invocation": round(train_wall, 1), "resumed_from": args.resume}
    try:
        network, report = export_checkpoint(result.checkpoint_path, resolve_hardware_config("loihi2"))
    except CheckpointError as exc:  # a float-only variant (e.g. the paper's neuron): the float row only
        print(json.dumps({**row, "not_deployable": str(exc), "versions": package_versions()}), flush=True)
        return
    test = result.dataset.test
    spikes = encode_split(network.encoding, test.inputs, network.time_steps, network.eval_seed)
    t0 = time.perf_counter()
    emulated = emulate(network, spikes, batch_size=100)
    emulator_wall = time.perf_counter() - t0
    row.update({
        "test_samples": len(test.labels),
        "emulator_test_accuracy": float((emulated.predictions == test.labels).mean()),
        "emulator_wall_s": round(emulator_wall, 1),
        "quantization_flags": {r.name: {"never_fire": r.never_fire, "always_fire": r.always_fire,
                                        "activation_exceeds_16_bits": r.activation_exceeds_hw_bits}
                               for r in report.populations},
        "depth": {r.name: r.depth for r in report.populations},
        "cores_total": report.total_cores,
        # weight precision per population (distinct integer levels of its synapses): a potential
        # readout's output trades levels for headroom below its firing level
        "weight_levels_used": {r.name: [s.weight_levels_used for s in r.synapses] for r in report.populations},
    })
    if args.lava_samples:
        row.update(lava_row(network, spikes, emulated, test.labels, result.checkpoint_path, args.lava_samples))
    row["versions"] = package_versions()
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
