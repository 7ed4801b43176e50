"""Benchmark: our Lava runner against lava-dl netx running our netx HDF5 file, same network and samples.

    ./run python benchmarks/bench_netx.py --checkpoint runs/bench_mnist_mlp/checkpoint.safetensors \
        --limit 200 --rounds 3

The checkpoint is quantized for netx (`quantize_graph(..., netx=True)`: bias exponent 6,
weights below 255) and written with `export.netx.save_netx`. Then, alternating in one
process for each round, the test samples run on Lava 0.10.0 fixed_pt (CPU simulator)
through
    runner, 1 shard       lava_backend.runner.run_network(shards=1): one Lava runtime
    runner, auto shards   run_network's default (one runtime per core, at most one per 100 samples)
    netx                  lava.lib.dl.netx.hdf5.Network loaded from the file, fed and recorded by
                          Lava's io RingBuffers (export.netx.run_netx)
recording the output population only. samples/s is measured around each call (building the
Lava graph, starting its runtime and reading back the recording included), after one untimed
warm-up call each. Every run's output spikes are compared with the emulator's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from export.emulator import emulate
from export.hw_config import resolve_hardware_config
from export.netx import run_netx, save_netx
from export.quantize import quantize_graph
from lava_backend.runner import import_lava, run_network
from netgraph.provenance import package_versions
from spikedata import load_dataset
from trainer.checkpoint import float_graph, load_checkpoint
from trainer.encoding import encode_split


def netx_network(checkpoint_path: str, hw_name: str):
    """The checkpoint quantized for netx, as stbp_cli.pipeline.export_checkpoint does otherwise."""
    checkpoint = load_checkpoint(checkpoint_path)
    config = checkpoint.config
    network, _ = quantize_graph(float_graph(checkpoint), config.encoding.kind, config.encoding.time_steps,
                                config.training.eval_seed, resolve_hardware_config(hw_name), netx=True)
    return network, config


def _timed(run) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    output = run()
    return output, time.perf_counter() - started


def measure(checkpoint_path: str, hw_name: str, limit: int, rounds: int) -> dict:
    network, config = netx_network(checkpoint_path, hw_name)
    split = load_dataset(config.data.name, config.data.path, network.time_steps).test.head(limit)
    spikes = encode_split(network.encoding, split.inputs, network.time_steps, network.eval_seed)
    expected = emulate(network, spikes).output_spikes
    output, last = network.graph.output_population.name, len(network.populations) - 1
    import_lava()
    contenders = {
        "runner, 1 shard": lambda x: run_network(network, x, record="output", shards=1,
                                                 progress=False).population_spikes[output],
        "runner, auto shards": lambda x: run_network(network, x, record="output",
                                                     progress=False).population_spikes[output],
        "netx": lambda x: run_netx(path, x, record="output")[0][last],
    }
    rates = {label: [] for label in contenders}
    identical = {label: True for label in contenders}
    with tempfile.TemporaryDirectory(prefix="bench-netx-") as tmp:
        path = Path(tmp) / "net.h5"
        save_netx(network, path)
        file_bytes = path.stat().st_size
        for run in contenders.values():  # warm-up, untimed: module imports (lava-dl's take seconds)
            run(spikes[:2])
        for _ in range(rounds):
            for label, run in contenders.items():
                got, wall = _timed(lambda: run(spikes))
                rates[label].append(round(len(spikes) / wall, 2))
                identical[label] &= bool(np.array_equal(got, expected))
    medians = {label: statistics.median(values) for label, values in rates.items()}
    return {
        "checkpoint": checkpoint_path,
        "network": "-".join("x".join(map(str, shape)) for shape in
                            [network.input_shape] + [p.shape for p in network.populations]),
        "samples": len(spikes), "time_steps": network.time_steps, "netx_file_bytes": file_bytes,
        "samples_per_s": rates, "median_samples_per_s": medians,
        "spread_samples_per_s": {label: round(max(v) - min(v), 2) for label, v in rates.items()},
        "runner_1_shard_over_netx": round(medians["runner, 1 shard"] / medians["netx"], 2),
        "runner_auto_over_netx": round(medians["runner, auto shards"] / medians["netx"], 2),
        "output_spikes_identical_to_emulator": identical,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),  # other work on the machine skews rates
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a trainer checkpoint (a feed-forward chain)")
    parser.add_argument("--hw", default="loihi2", help="hardware config name or YAML path")
    parser.add_argument("--limit", type=int, default=200, help="first N test samples")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    figures = measure(args.checkpoint, args.hw, args.limit, args.rounds)
    print(json.dumps({**figures, "versions": package_versions()}, indent=2, default=str))


if __name__ == "__main__":
    main()
