"""Benchmark: Lava fixed_pt throughput for 784-800-10 on MNIST, multi-sample vs naive.

    ./run python benchmarks/bench_lava.py --checkpoint runs/bench_mnist_mlp/checkpoint.safetensors \
        --data ../shared/data/mnist

For each T, side by side in one run on the same encoded test images:
  naive     one Lava runtime built, run for T + layers steps and stopped per sample (the
            pattern of most Lava tutorials), measured on --naive-samples images;
  one run   all --samples images in one long run, states reset between samples (LIFReset);
  sharded   the same split over --shards parallel runtimes, each pinned to one core.
Every Lava output is checked spike for spike against the bit-exact emulator. Finally the
whole test set (--full-samples, default 10,000) runs at T = 25 sharded, timed end to end.
The checkpoint was trained at T = 25; other T only re-time the same network (their
accuracies are printed but are not the trained configuration's).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

from export.emulator import emulate
from export.hw_config import resolve_hardware_config
from lava_backend.runner import run_network
from netgraph.provenance import package_versions
from spikedata import load_dataset
from stbp_cli.pipeline import export_checkpoint
from trainer.encoding import encode_split


def lava_figures(network, spikes, labels, shards, naive):
    expected = emulate(network, spikes)
    if naive:
        started = time.perf_counter()
        results = [run_network(network, spikes[i:i + 1], record="output", shards=1, progress=False)
                   for i in range(len(spikes))]
        wall = time.perf_counter() - started
        output = np.concatenate([r.output_spikes for r in results])
        predictions = np.concatenate([r.predictions for r in results])
        potential = (None if results[0].output_potential is None
                     else np.concatenate([r.output_potential for r in results]))
    else:
        result = run_network(network, spikes, record="output", shards=shards, progress=False)
        wall, output = result.wall_s, result.output_spikes
        predictions, potential = result.predictions, result.output_potential
    exact = np.array_equal(output, expected.output_spikes) and (
        potential is None or np.array_equal(potential, expected.output_potential))
    return {
        "samples": len(spikes),
        "wall_s": round(wall, 2),
        "samples_per_s": round(len(spikes) / wall, 2),
        "accuracy": float((predictions == labels).mean()),  # the network's own readout
        "bit_exact_vs_emulator": bool(exact),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/bench_mnist_mlp/checkpoint.safetensors")
    parser.add_argument("--data", default="../shared/data/mnist")
    parser.add_argument("--hw", default="loihi2")
    parser.add_argument("--time-steps", default="8,16,25,30")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--naive-samples", type=int, default=40)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--full-samples", type=int, default=10000, help="0 skips the full test-set run")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    base, _ = export_checkpoint(args.checkpoint, resolve_hardware_config(args.hw))
    test = load_dataset("mnist", args.data).test
    figures = {"network": "784-800-10", "hw_config": base.hardware.name, "per_time_steps": {}}
    for steps in [int(t) for t in args.time_steps.split(",")]:
        network = dataclasses.replace(base, time_steps=steps)
        split = test.head(args.samples)
        spikes = encode_split(network.encoding, split.inputs, steps, network.eval_seed)
        row = {
            "naive_one_runtime_per_sample": lava_figures(network, spikes[:args.naive_samples],
                                                         split.labels[:args.naive_samples], 1, naive=True),
            "one_run": lava_figures(network, spikes, split.labels, 1, naive=False),
            f"sharded_{args.shards}": lava_figures(network, spikes, split.labels, args.shards, naive=False),
        }
        naive_rate = row["naive_one_runtime_per_sample"]["samples_per_s"]
        row["speedup_one_run_vs_naive"] = round(row["one_run"]["samples_per_s"] / naive_rate, 1)
        row["speedup_sharded_vs_naive"] = round(row[f"sharded_{args.shards}"]["samples_per_s"] / naive_rate, 1)
        figures["per_time_steps"][steps] = row
        print(json.dumps({f"T={steps}": row}), flush=True)
    if args.full_samples:
        split = test.head(args.full_samples)
        started = time.perf_counter()
        spikes = encode_split(base.encoding, split.inputs, base.time_steps, base.eval_seed)
        result = run_network(base, spikes, record="output", shards=args.shards, progress=False)
        end_to_end = time.perf_counter() - started
        expected = emulate(base, spikes).output_spikes
        figures["full_test_set"] = {
            "samples": len(spikes), "time_steps": base.time_steps, "shards": result.shards,
            "lava_wall_s": round(result.wall_s, 1), "end_to_end_wall_s_incl_encoding": round(end_to_end, 1),
            "samples_per_s": round(result.samples_per_s, 1),
            "accuracy": float((result.predictions == split.labels).mean()),
            "bit_exact_vs_emulator": bool(np.array_equal(result.output_spikes, expected)),
        }
        print(json.dumps({"full_test_set": figures["full_test_set"]}), flush=True)
    figures["versions"] = package_versions()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
