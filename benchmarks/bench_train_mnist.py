"""Benchmark: STBP training throughput and accuracy of 784-800-10 on the real MNIST files.

    ./run python benchmarks/bench_train_mnist.py --data ../shared/data/mnist --epochs 1

Prints training samples/s (forward + backward + Adam, encoding included, evaluation
excluded), the wall time of the epoch(s) and the test accuracy on all 10,000 test images.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from trainer.config import config_with_overrides, load_config
from netgraph.provenance import package_versions
from trainer.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/mnist", help="directory of the MNIST idx files")
    parser.add_argument("--config", default="configs/mnist_mlp.yaml")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--time-steps", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output-dir", default="runs/bench_mnist_mlp")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    config = config_with_overrides(
        load_config(args.config),
        **{"data.path": args.data, "training.epochs": args.epochs, "training.device": args.device,
           "output_dir": args.output_dir, "encoding.time_steps": args.time_steps},
    )
    started = time.perf_counter()
    result = train(config, progress=False)
    wall = time.perf_counter() - started
    device = "cuda" if config.training.device == "auto" and torch.cuda.is_available() else config.training.device
    device_name = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    figures = {
        "network": "784-" + "-".join(str(layer.units) for layer in config.model.layers),
        "time_steps": config.encoding.time_steps,
        "batch_size": config.training.batch_size,
        "epochs": args.epochs,
        "device": f"{device} ({device_name}, torch threads {torch.get_num_threads()})",
        "train_samples_per_s": [round(h["train_samples_per_s"], 1) for h in result.history],
        "test_accuracy": [h["test_accuracy"] for h in result.history],
        "wall_s_including_data_and_eval": round(wall, 1),
        "versions": package_versions(),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
