"""Benchmark: bit-exact emulator throughput on the 10,000 MNIST test images.

    ./run python benchmarks/bench_emulator.py --checkpoint runs/bench_mnist_mlp/checkpoint.safetensors \
        --data ../shared/data/mnist

The checkpoint is a 784-800-10 network from `benchmarks/bench_train_mnist.py`. It is
exported with the given hw config, then the same encoded test spikes (the trainer's fixed
evaluation encoding) run through the float PyTorch model and the emulator (numpy, and
torch on CPU or a GPU when present), side by side in one run. Prints samples/s of each,
their accuracies and whether the numpy and torch emulators agree spike for spike. The
emulator's speed against the same network's matrix products alone (and the peers) is
benchmarks/bench_speed.py's.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from export.emulator import emulate
from export.hw_config import resolve_hardware_config
from netgraph.provenance import package_versions
from spikedata import load_dataset
from stbp_cli.pipeline import export_checkpoint
from trainer.checkpoint import build_model, load_checkpoint
from trainer.encoding import encode_split


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/bench_mnist_mlp/checkpoint.safetensors")
    parser.add_argument("--data", default="../shared/data/mnist", help="directory of the MNIST idx files")
    parser.add_argument("--hw", default="loihi2")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N test images")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

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
    numpy_result, numpy_s = timed(lambda: emulate(network, spikes, "numpy", batch_size=args.batch_size))
    torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_result, torch_s = timed(lambda: emulate(network, spikes, "torch", torch_device, batch_size=args.batch_size))
    identical = all(np.array_equal(numpy_result.population_spikes[name], torch_result.population_spikes[name])
                    for name in numpy_result.population_spikes)
    figures = {
        "network": "-".join([str(int(np.prod(network.input_shape)))] + [str(p.neurons) for p in network.populations]),
        "time_steps": network.time_steps,
        "samples": n,
        "hw_config": network.hardware.name,
        "torch_threads": torch.get_num_threads(),
        "encode_s": round(encode_s, 2),
        "float_model_samples_per_s": round(n / float_s, 1),
        "emulator_numpy_samples_per_s": round(n / numpy_s, 1),
        f"emulator_torch_{torch_device}_samples_per_s": round(n / torch_s, 1),
        "float_accuracy": float((float_pred == test.labels).mean()),
        "emulator_accuracy": float((numpy_result.predictions == test.labels).mean()),
        "prediction_agreement_float_vs_emulator": float((float_pred == numpy_result.predictions).mean()),
        "numpy_and_torch_emulators_identical": identical,
        "versions": package_versions(),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
