"""Benchmark: a trained checkpoint's float accuracy (its training method's neuron) when its test
samples are presented for other numbers of steps (same weights, same evaluation seed), with the output spike count per
sample and the share of samples whose largest output count is tied (the decision rule then
takes the lower class index).

    ./run python benchmarks/bench_presentation_length.py runs/mpbp/mnist_mpbp/checkpoint.safetensors \
        --steps 32 100 --limit 10000
"""
from __future__ import annotations

import argparse

import torch

from spikedata import load_dataset
from trainer.checkpoint import build_model, load_checkpoint
from trainer.encoding import encode_split
from trainer.train import method_forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--steps", type=int, nargs="+", required=True)
    parser.add_argument("--limit", type=int, help="the first N test samples (default: all)")
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()

    checkpoint = load_checkpoint(args.checkpoint)
    model, config = build_model(checkpoint), checkpoint.config
    for steps in args.steps:  # event data are binned into the number of steps when loaded
        test = load_dataset(config.data.name, config.data.path, steps).test.head(args.limit)
        labels = torch.from_numpy(test.labels)
        spikes = torch.from_numpy(encode_split(config.encoding.kind, test.inputs, steps, config.training.eval_seed))
        with torch.no_grad():  # the training method's own neuron (e.g. MPBP's paper neuron)
            outs = [method_forward(model, spikes[s:s + args.batch_size].float(), config)
                    for s in range(0, len(spikes), args.batch_size)]
        counts = torch.cat([out.output_spikes.sum(1) for out in outs])
        top2 = counts.topk(2, dim=1).values
        accuracy = float((torch.cat([out.predictions for out in outs]) == labels).float().mean())  # its own readout
        print(f"T = {steps}: accuracy {100 * accuracy:.2f}%, "
              f"output spikes per sample {float(counts.sum(1).mean()):.2f}, "
              f"largest count tied in {100 * float((top2[:, 0] == top2[:, 1]).float().mean()):.1f}% of samples "
              f"({len(labels)} test samples)")


if __name__ == "__main__":
    main()
