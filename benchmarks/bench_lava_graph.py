"""Benchmark: what exact timing costs on Lava's CPU simulator for skip and recurrent graphs.

    ./run stbp demo --config configs/digits_resnet.yaml --output-dir runs/demo_resnet
    ./run stbp demo --config configs/digits_recurrent.yaml --output-dir runs/demo_recurrent
    ./run python benchmarks/bench_lava_graph.py --resnet runs/demo_resnet/net.onnx \
        --recurrent runs/demo_recurrent/net.onnx

For each artifact, Lava fixed_pt runs the digits test set (one runtime) as deployed - the
residual network's shortcut as a DelayDense, the recurrent network paused before every
sample to clear its recurrent Dense - and, alternating in the same process, the ablation
that drops that measure (plain Dense / no pauses), which runs faster but is no longer
bit-exact with the emulator. Prints samples/s of every round and whether each run matched
the emulator.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

import numpy as np

from export.artifact import load_artifact
from export.emulator import emulate
from lava_backend import runner
from netgraph.provenance import package_versions
from spikedata import load_dataset
from trainer.encoding import encode_split

EXACT_TIMING = runner.deployment_timing
EXACT_CLEARS = runner.PipelineSchedule.clear_points


def _without_delays(graph, max_delay):
    timing = EXACT_TIMING(graph, max_delay)
    return dataclasses.replace(timing, delay={name: 0 for name in timing.delay})


def _ablate(enabled: bool) -> None:
    """Installs (or removes) the ablation: no DelayDense, no clearing pauses."""
    runner.deployment_timing = _without_delays if enabled else EXACT_TIMING
    runner.PipelineSchedule.clear_points = (lambda self, population: []) if enabled else EXACT_CLEARS


def measure(path: str, rounds: int, limit: int | None) -> dict:
    network = load_artifact(path)
    test = load_dataset("digits").test.head(limit)
    spikes = encode_split(network.encoding, test.inputs, network.time_steps, network.eval_seed)
    expected = emulate(network, spikes).population_spikes
    rows = {"deployed (exact)": [], "ablation": []}
    exact = {"deployed (exact)": True, "ablation": True}
    for _ in range(rounds):
        for label, ablated in (("deployed (exact)", False), ("ablation", True)):
            _ablate(ablated)
            try:
                result = runner.run_network(network, spikes, shards=1, progress=False)
            finally:
                _ablate(False)
            rows[label].append(round(result.samples_per_s, 1))
            exact[label] &= all(np.array_equal(result.population_spikes[n], expected[n]) for n in expected)
            if not ablated:
                pauses = result.pauses
    return {"artifact": path, "samples": len(spikes), "time_steps": network.time_steps, "pauses_per_run": pauses,
            **{f"{label} samples/s": values for label, values in rows.items()},
            **{f"{label} median": statistics.median(values) for label, values in rows.items()},
            **{f"{label} bit-exact": value for label, value in exact.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resnet", required=True, help="artifact of configs/digits_resnet.yaml")
    parser.add_argument("--recurrent", required=True, help="artifact of configs/digits_recurrent.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, help="only the first N test images")
    args = parser.parse_args()
    figures = {"resnet": measure(args.resnet, args.rounds, args.limit),
               "recurrent": measure(args.recurrent, args.rounds, args.limit), "versions": package_versions()}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
