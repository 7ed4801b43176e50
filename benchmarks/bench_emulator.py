"""Benchmark: bit-exact emulator throughput on MNIST test images, against the same network's
matrix products alone.

    ./run python benchmarks/bench_emulator.py --checkpoint runs/bench_mnist_mlp/checkpoint.safetensors \
        --data ../shared/data/mnist --limit 2000 --rounds 5

The checkpoint is a 784-800-10 network from `benchmarks/bench_train_mnist.py`. It is
exported with the given hw config, then the same encoded test spikes (the trainer's fixed
evaluation encoding) run through the float PyTorch model once and, interleaved for
`--rounds` rounds in this one process (the machine may be shared: the figures are medians,
with the fastest and slowest round), through:
  - the emulator's default backend ('auto': torch on the CPU, or a GPU when present) and its
    numpy backend;
  - the network's synaptic products alone, nothing else: every Dense synapse's input spikes
    (T x batch rows) times its weights, batch by batch, as fp32 matrix products (torch, and
    numpy's BLAS; the spikes already float) and as int8 ones (torch._int_mm).
Prints samples/s of each, the ratio of the default emulator's time to the faster fp32
products' (per round and the median), the accuracies, and whether both emulator backends
agree spike for spike.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from export.emulator import emulate
from export.fixed_point import effective_weights
from export.hw_config import resolve_hardware_config
from netgraph import Dense, Synapse
from netgraph.provenance import package_versions
from spikedata import load_dataset
from stbp_cli.pipeline import export_checkpoint
from trainer.checkpoint import build_model, load_checkpoint
from trainer.encoding import encode_split


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def product_operands(network, spikes: np.ndarray, population_spikes: dict, batch_size: int) -> list[tuple]:
    """Per batch and Dense synapse: (input spikes uint8 (T x batch, inputs), weights int64
    (inputs, outputs)), the synapse's input being the network input or a population's spikes."""
    graph, operands = network.graph, []
    for node in graph.nodes:
        if not isinstance(node, Synapse):
            continue
        if not isinstance(node, Dense):
            raise SystemExit(f"the products-alone figures cover Dense synapses only; {node.name} is a {node.kind}")
        q = node.quantized
        weights = effective_weights(q.weight, q.sign_mode, q.num_weight_bits, network.hardware).T
        source = graph.inputs_of(node.name)[0].source
        recorded = spikes if source == graph.input.name else population_spikes[source]
        for start in range(0, len(spikes), batch_size):
            part = recorded[start:start + batch_size]
            operands.append((np.ascontiguousarray(part.reshape(-1, weights.shape[0])), weights))
    return operands


def product_runners(operands: list[tuple]) -> dict:
    """The products alone: fp32 (torch and numpy, inputs already float) and int8 (torch._int_mm,
    the mixed-sign weights halved as the emulator takes them)."""
    as_float = [(torch.from_numpy(x).float(), torch.from_numpy(w.astype(np.float32))) for x, w in operands]
    as_numpy = [(x.numpy(), w.numpy()) for x, w in as_float]
    halved = [(torch.from_numpy(x).view(torch.int8), torch.from_numpy((w >> 1).astype(np.int8))) for x, w in operands]
    return {
        "fp32_products_torch": lambda: [x @ w for x, w in as_float],
        "fp32_products_numpy": lambda: [x @ w for x, w in as_numpy],
        "int8_products_torch": lambda: [torch._int_mm(x, w) for x, w in halved],
    }


def spread(seconds: list[float], samples: int) -> dict:
    median = statistics.median(seconds)
    return {"samples_per_s": round(samples / median, 1), "median_s": round(median, 4),
            "fastest_s": round(min(seconds), 4), "slowest_s": round(max(seconds), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/bench_mnist_mlp/checkpoint.safetensors")
    parser.add_argument("--data", default="../shared/data/mnist", help="directory of the MNIST idx files")
    parser.add_argument("--hw", default="loihi2")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N test images")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch's CPU threads (default: torch's own)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    network, _ = export_checkpoint(args.checkpoint, resolve_hardware_config(args.hw))
    test = load_dataset("mnist", args.data).test.head(args.limit)
    spikes, encode_s = timed(lambda: encode_split(network.encoding, test.inputs, network.time_steps, network.eval_seed))
    n = len(test.labels)
    model = build_model(load_checkpoint(args.checkpoint))

    def float_predictions():
        predictions = []
        with torch.no_grad():
            for start in range(0, n, args.batch_size):
                out = model(torch.from_numpy(spikes[start:start + args.batch_size]).float())
                predictions.append(out.predictions.numpy())  # the network's own readout
        return np.concatenate(predictions)

    float_pred, float_s = timed(float_predictions)
    default_result = emulate(network, spikes, batch_size=args.batch_size)
    numpy_result = emulate(network, spikes, "numpy", batch_size=args.batch_size)
    runners = {
        "emulator_default": lambda: emulate(network, spikes, batch_size=args.batch_size),
        "emulator_numpy": lambda: emulate(network, spikes, "numpy", batch_size=args.batch_size),
        **product_runners(product_operands(network, spikes, numpy_result.population_spikes, args.batch_size)),
    }
    seconds = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            seconds[name].append(timed(run)[1])
    fp32 = min(("fp32_products_torch", "fp32_products_numpy"), key=lambda name: statistics.median(seconds[name]))
    identical = all(np.array_equal(numpy_result.population_spikes[name], default_result.population_spikes[name])
                    for name in numpy_result.population_spikes)
    figures = {
        "network": "-".join([str(int(np.prod(network.input_shape)))] + [str(p.neurons) for p in network.populations]),
        "time_steps": network.time_steps,
        "samples": n,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "hw_config": network.hardware.name,
        "torch_threads": torch.get_num_threads(),
        "emulator_default_backend": default_result.backend,
        "encode_s": round(encode_s, 2),
        "float_model_samples_per_s": round(n / float_s, 1),
        **{name: spread(times, n) for name, times in seconds.items()},
        "default_emulator_over_fp32_products": round(statistics.median(seconds["emulator_default"])
                                                     / statistics.median(seconds[fp32]), 3),
        "default_emulator_over_fp32_products_per_round": [round(a / b, 3) for a, b in
                                                          zip(seconds["emulator_default"], seconds[fp32])],
        "fp32_products_reference": fp32,
        "float_accuracy": float((float_pred == test.labels).mean()),
        "emulator_accuracy": float((default_result.predictions == test.labels).mean()),
        "prediction_agreement_float_vs_emulator": float((float_pred == default_result.predictions).mean()),
        "numpy_and_default_emulators_identical": identical,
        "versions": package_versions(),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
