"""Benchmark: training throughput of this trainer beside snnTorch, same network, same steps.

    ./run python benchmarks/bench_vs_snntorch.py --device cpu

Both train 784-800-10 LIF networks on the same random Bernoulli input spikes (T = 25,
batch 100): forward over all steps, rate-MSE loss, backward through time, Adam step.
snnTorch uses `snn.Leaky` (beta = tau, threshold, reset to zero, its default fast-sigmoid
surrogate) stepped in a Python loop, the pattern of its tutorials; ours uses
`trainer.network.SpikingNetwork` (linear layer batched over all time steps, then the LIF
recurrence). The two are timed alternately, several rounds, in one process; the median
samples/s of each is printed. Synthetic inputs: this measures speed, not accuracy.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

from trainer.config import config_from_dict
from trainer.network import SpikingNetwork
from netgraph.provenance import package_versions


def snntorch_model(tau: float, v_threshold: float):
    import snntorch as snn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(784, 800), nn.Linear(800, 10)
            self.lif1 = snn.Leaky(beta=tau, threshold=v_threshold, reset_mechanism="zero")
            self.lif2 = snn.Leaky(beta=tau, threshold=v_threshold, reset_mechanism="zero")

        def forward(self, spikes):  # (batch, T, 784)
            mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
            out = []
            for t in range(spikes.shape[1]):
                s1, mem1 = self.lif1(self.fc1(spikes[:, t]), mem1)
                s2, mem2 = self.lif2(self.fc2(s1), mem2)
                out.append(s2)
            return torch.stack(out, dim=1)

    return Net()


def ours_model(tau: float, v_threshold: float):
    config = config_from_dict({"model": {"layers": [{"type": "dense", "units": 800}, {"type": "dense", "units": 10}],
                                         "tau": tau, "v_threshold": v_threshold}})
    network = SpikingNetwork.from_config(config.model, (784,))
    return lambda spikes: network(spikes).output_spikes, network


def time_training(forward, parameters, inputs, labels, steps: int) -> float:
    optimizer = torch.optim.Adam(parameters, lr=1e-3)
    target = F.one_hot(labels, 10).float()
    if inputs.is_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        out = forward(inputs)
        loss = 0.5 * ((out.mean(dim=1) - target) ** 2).sum(dim=1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if inputs.is_cuda:
        torch.cuda.synchronize()
    return steps * len(inputs) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--time-steps", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per timing round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    inputs = (torch.rand(args.batch_size, args.time_steps, 784) < 0.2).float().to(device)
    labels = torch.randint(0, 10, (args.batch_size,)).to(device)
    ours_forward, ours_net = ours_model(0.2, 0.5)
    ours_net.to(device)
    theirs = snntorch_model(0.2, 0.5).to(device)
    rates = {"stbp-loihi": [], "snntorch": []}
    time_training(ours_forward, ours_net.parameters(), inputs, labels, 2)  # warm-up
    time_training(theirs, theirs.parameters(), inputs, labels, 2)
    for _ in range(args.rounds):
        rates["stbp-loihi"].append(time_training(ours_forward, ours_net.parameters(), inputs, labels, args.steps))
        rates["snntorch"].append(time_training(theirs, theirs.parameters(), inputs, labels, args.steps))
    figures = {
        "network": "784-800-10", "time_steps": args.time_steps, "batch_size": args.batch_size,
        "device": f"{args.device} (torch threads {torch.get_num_threads()})",
        "median_train_samples_per_s": {k: round(statistics.median(v), 1) for k, v in rates.items()},
        "rounds": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "versions": {**{k: v for k, v in package_versions().items() if k in ("torch", "python", "git_commit")},
                     "snntorch": __import__("snntorch").__version__},
    }
    figures["ratio_ours_over_snntorch"] = round(figures["median_train_samples_per_s"]["stbp-loihi"]
                                                / figures["median_train_samples_per_s"]["snntorch"], 2)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
