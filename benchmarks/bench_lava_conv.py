"""Benchmark: conv synapses on Lava's own Conv process vs as the unrolled Dense (CPU simulator).

    ./run stbp train --config configs/digits_cnn.yaml --epochs 2 --output-dir /tmp/cnn --no-progress
    ./run stbp export /tmp/cnn/checkpoint.safetensors -o /tmp/cnn/net.onnx
    ./run python benchmarks/bench_lava_conv.py /tmp/cnn/net.onnx

Lava fixed_pt runs the same digits test samples (one runtime, so the two are not competing
for the cores) with conv_mapping="conv" (lava.proc.conv's Conv, one kernel per synapse) and
conv_mapping="dense" (a Dense holding the unrolled (out, in) matrix), alternating in the same
process for `--rounds` rounds. Prints samples/s of every round with its median and spread
(max - min), the runtime set-up seconds, which mapping each conv synapse got, and whether
every run's spikes equal the emulator's in every population.
"""
from __future__ import annotations

import argparse
import json
import statistics

import numpy as np

from export.artifact import load_artifact
from export.emulator import emulate
from lava_backend import runner
from netgraph import Conv2d
from netgraph.provenance import package_versions
from spikedata import load_dataset
from trainer.encoding import encode_split

MAPPINGS = ("conv", "dense")


def measure(path: str, rounds: int, limit: int | None, mode: str) -> dict:
    network = load_artifact(path)
    test = load_dataset("digits").test.head(limit)
    spikes = encode_split(network.encoding, test.inputs, network.time_steps, network.eval_seed)
    expected = emulate(network, spikes).population_spikes
    rates = {m: [] for m in MAPPINGS}
    setup = {m: [] for m in MAPPINGS}
    exact = {m: True for m in MAPPINGS}
    spikes_of = {}
    for _ in range(rounds):
        for mapping in MAPPINGS:
            result = runner.run_network(network, spikes, mode=mode, shards=1, progress=False, conv_mapping=mapping)
            rates[mapping].append(round(result.samples_per_s, 1))
            setup[mapping].append(round(result.setup_s, 2))
            exact[mapping] &= all(np.array_equal(result.population_spikes[n], expected[n]) for n in expected)
            spikes_of[mapping], synapses = result.population_spikes, result.conv_synapses
            if mapping == "conv":
                conv_synapses = synapses
    same = all(np.array_equal(spikes_of["conv"][n], spikes_of["dense"][n]) for n in spikes_of["conv"])
    convs = [n for n in network.graph.nodes if isinstance(n, Conv2d)]
    return {"artifact": path, "mode": mode, "samples": len(spikes), "time_steps": network.time_steps,
            "conv synapses (mapping under conv)": conv_synapses,
            "kernels": {n.name: list(n.quantized.weight.shape) for n in convs},
            **{f"{m} samples/s": rates[m] for m in MAPPINGS},
            **{f"{m} median": statistics.median(rates[m]) for m in MAPPINGS},
            **{f"{m} spread": round(max(rates[m]) - min(rates[m]), 1) for m in MAPPINGS},
            **{f"{m} setup_s": setup[m] for m in MAPPINGS},
            "conv / dense (medians)": round(statistics.median(rates["conv"]) / statistics.median(rates["dense"]), 3),
            "spikes identical conv vs dense": same,
            **({f"{m} bit-exact with the emulator": exact[m] for m in MAPPINGS} if mode == "fixed_pt" else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", help="artifact of a conv network, e.g. configs/digits_cnn.yaml exported")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, help="only the first N test images")
    parser.add_argument("--mode", choices=runner.MODES, default="fixed_pt")
    args = parser.parse_args()
    figures = measure(args.artifact, args.rounds, args.limit, args.mode)
    print(json.dumps({**figures, "versions": package_versions()}, indent=2))


if __name__ == "__main__":
    main()
