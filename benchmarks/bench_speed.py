"""Benchmark: training and emulator speed beside every peer, all contenders in one process, as ratios.

    ./run python benchmarks/bench_speed.py                        # CPU: about 3-4 minutes on 2 cores
    ./run python benchmarks/bench_speed.py --rounds 30 --json speed.json
    ./run python benchmarks/bench_speed.py --networks small --skip-emulator   # a quick look

Training (section a). Each network (default 784-800-10, T = 25, batch 100; and 64-256-10,
T = 16, batch 64) is trained by every contender on the same random Bernoulli input spikes
(rate 0.15): forward over all steps, rate-MSE loss 0.5 * sum((mean_t o - onehot)^2) averaged
over the batch, backward through time, Adam (lr 1e-3). Every contender starts from the same
weights and biases (this trainer's initialisation, copied) and runs the same neuron,
    u[t] = 0.2 u[t-1] (1 - o[t-1]) + W s[t] + b,   o[t] = H(u[t] - 0.5),
each in its own framework's way; the synapse of each layer is one product over all T * batch
rows for everyone (a feed-forward network allows it), except `snntorch-loop`, snnTorch's
tutorial pattern (nn.Linear inside the time loop). The contenders:
    ours          trainer.network.SpikingNetwork from config_from_dict (default settings: the
                  fused LIF recurrence, compiled CPU kernels; surrogate h1 rectangular, width 1)
    ours-tensor   the same, the fused op's tensor path (the one a GPU runs)
    ours-reference  the same, lif_step stepped under autograd (the trainer before the fused op)
    snntorch      snntorch.Leaky(beta=0.2, threshold=0.5, reset_mechanism='zero'), its
                  default ATan surrogate (alpha 2); its reset carries no gradient (snnTorch
                  detaches it) and it fires on u > Vth (ours u >= Vth)
    snntorch-loop the same neurons, nn.Linear applied step by step (snnTorch's tutorials)
    spikingjelly-torch   LIFNode(tau=1.25, decay_input=False, v_threshold=0.5, v_reset=0,
                  detach_reset=False, step_mode='m', backend='torch'): H = V (1 - 1/1.25) + X
                  is u above; default Sigmoid surrogate (alpha 4); fires on u >= Vth
    spikingjelly-cupy    the same with backend='cupy' (GPU, when cupy is installed)
    norse         LIFBoxCell(LIFBoxParameters(tau_mem_inv=0.8, v_th=0.5), dt=1): v += 0.8
                  (i - v), so i = 1.25 (W s + b) (the 1.25 folded into its nn.Linear weights
                  and bias) gives u above up to rounding; default SuperSpike surrogate (alpha
                  100); fires on v > Vth
    compiled      the recurrence above in plain torch (rectangular surrogate as a
                  torch.autograd.Function), the whole forward under torch.compile (default
                  mode; compile time measured on its own and excluded)
    matmul-only   the network's matrix products alone, forward and backward, fp32, into
                  preallocated outputs: X W1^T over all T*batch rows, S1 W2^T, and the
                  backward dW2 = G2^T S1, dS1 = G2 W2, dW1 = G1^T X (no dX for the input)
    matmul+adam   the same plus the Adam step on the four parameter tensors
Before timing, one forward pass of each contender (initial weights) is compared with ours
spike for spike, both layers, on the timed input and on a livelier one (rate 0.7: at 0.15 the
default initialisation leaves the output layer nearly silent): they may differ only where a
potential lands exactly on the threshold or rounds differently (norse). Rounds alternate the
contenders, a few steps each (the order rotates every round); each figure is the median over
rounds, with its range and spread (interquartile range / median); ratios are medians of
per-round ratios (and, as "best", the fastest
round over the fastest round, the least disturbed by other load on the machine).

Emulator (section b). The 784-800-10 checkpoint `runs/bench_mnist_mlp/checkpoint.safetensors`
(from benchmarks/bench_train_mnist.py) is exported (loihi2), N MNIST test images encoded
(the trainer's fixed evaluation encoding) and `export.emulator.emulate` timed with its
default backend and every backend it names, beside the products of the same network on its
effective integer weights, batch by batch as the emulator runs them (inputs converted before
timing): fp32 (torch.mm, and numpy) of all T*N input rows through layer 1 and of the
emulator's layer-1 spikes through layer 2, and int8 (torch._int_mm, weights divided by their
common power of two so they fit int8, shapes padded to multiples of 8). Every backend's
spikes are checked against numpy's.

GPU (section c). With CUDA: section a on the GPU (synchronised around each timing) and the
emulator (every backend but numpy, on CUDA) on all 10,000 test images, against the 1 s target.

Targets (reported, not asserted): CPU training step <= 1.25x the matmul-only step; GPU: ours
>= 2x snnTorch and >= SpikingJelly's fastest backend; emulator on CPU <= 1.25x the fp32
matmul-only time; on a GPU all 10,000 test images (784-800-10, T = 25) in under 1 s.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import export.emulator as emulator  # noqa: E402
from export.emulator import emulate  # noqa: E402
from export.fixed_point import effective_weights  # noqa: E402
from export.hw_config import resolve_hardware_config  # noqa: E402
from netgraph.provenance import package_versions  # noqa: E402
from spikedata import load_dataset  # noqa: E402
from stbp_cli.pipeline import export_checkpoint  # noqa: E402
from trainer.encoding import encode_split  # noqa: E402
from trainer.config import config_from_dict  # noqa: E402
import trainer.network as network_module  # noqa: E402
import trainer.neuron as neuron  # noqa: E402
from trainer.network import SpikingNetwork  # noqa: E402

TAU, V_THRESHOLD, RATE, LR = 0.2, 0.5, 0.15, 1e-3
CHECK_RATE = 0.7  # input rate of the second dynamics check (at 0.15 the default init leaves the output silent)


@dataclass(frozen=True)
class NetworkSpec:
    inputs: int
    hidden: int
    outputs: int
    time_steps: int
    batch: int
    steps: int  # optimizer steps per timing round

    @property
    def name(self) -> str:
        return f"{self.inputs}-{self.hidden}-{self.outputs}"


NETWORKS = {"large": NetworkSpec(784, 800, 10, 25, 100, 3), "small": NetworkSpec(64, 256, 10, 16, 64, 6)}


def parse_network(text: str) -> NetworkSpec:
    """'large', 'small' or 'IN-HIDDEN-OUT:T:BATCH[:STEPS]'."""
    if text in NETWORKS:
        return NETWORKS[text]
    match = re.fullmatch(r"(\d+)-(\d+)-(\d+):(\d+):(\d+)(?::(\d+))?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"network {text!r}: use large, small or IN-HIDDEN-OUT:T:BATCH[:STEPS]")
    i, h, o, t, b, s = match.groups()
    return NetworkSpec(int(i), int(h), int(o), int(t), int(b), int(s or 10))


# ---------------------------------------------------------------- timing helpers

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary(values: list[float]) -> dict:
    """Median, min, max and spread: the interquartile range over the median (robust to the few
    rounds another process on the machine disturbs; min and max show those)."""
    median = statistics.median(values)
    if len(values) >= 4:
        quartiles = statistics.quantiles(values, n=4)
        spread = (quartiles[2] - quartiles[0]) / median
    else:
        spread = (max(values) - min(values)) / median
    return {"median": median, "min": min(values), "max": max(values), "spread": spread}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version_of(name: str) -> str:

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def quiet_import(name: str):
    """Imports a module with its import-time prints and warnings silenced (SpikingJelly's);
    None when it is not installed."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return __import__(name, fromlist=["_"])
        except ImportError:
            return None


# ---------------------------------------------------------------- training contenders

@dataclass
class Contender:
    name: str
    config: str
    step: Callable[[], None]
    # spikes of both layers, each (batch, T, n), of one forward pass on inputs (batch, T, in), (T, batch, in)
    spikes: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]] | None = None
    compile_s: float | None = None


@dataclass
class Workload:
    """The shared inputs of one network: spikes (batch, T, in) and (T, batch, in), targets."""

    spec: NetworkSpec
    device: torch.device
    x_bt: torch.Tensor
    x_tb: torch.Tensor
    target: torch.Tensor
    weights: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # ours' initial (W, b)
    # inputs of the dynamics check: (label, (batch, T, in), (T, batch, in)): the timed input and a livelier one
    checks: list[tuple[str, torch.Tensor, torch.Tensor]] = field(default_factory=list)


def rate_mse(rates: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((rates - target) ** 2).sum(dim=1).mean()


def training_step(rates: Callable[[], torch.Tensor], parameters, target: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.Adam(list(parameters), lr=LR)

    def step() -> None:
        loss = rate_mse(rates(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def linear_from(weight: torch.Tensor, bias: torch.Tensor, scale: float = 1.0) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0]).to(weight.device)
    with torch.no_grad():
        layer.weight.copy_(weight * scale)
        layer.bias.copy_(bias * scale)
    return layer


# ours ----

# Which LIF recurrence `ours` runs: "fused" (the default: trainer.neuron.lif_sequence, the
# compiled CPU kernels), "tensor" (the same fused op's tensor path, the one a GPU takes) or
# "reference" (lif_step stepped under autograd, the trainer before the fused op).
LIF_PATHS = {"ours": "fused", "ours-tensor": "tensor", "ours-reference": "reference"}


@contextlib.contextmanager
def lif_path(path: str):
    """Runs SpikingNetwork's LIF populations on the given recurrence (see LIF_PATHS)."""
    saved = neuron.USE_COMPILED_CPU, network_module.lif_sequence
    neuron.USE_COMPILED_CPU = path == "fused"
    if path == "reference":
        network_module.lif_sequence = neuron.lif_sequence_reference
    try:
        yield
    finally:
        neuron.USE_COMPILED_CPU, network_module.lif_sequence = saved


def build_ours(spec: NetworkSpec, init: str = "pytorch") -> SpikingNetwork:
    layers = [{"type": "dense", "units": spec.hidden}, {"type": "dense", "units": spec.outputs}]
    model: dict = {"layers": layers, "tau": TAU, "v_threshold": V_THRESHOLD}
    if init != "pytorch":
        model["init"] = init
    config = config_from_dict({"model": model})
    return SpikingNetwork.from_config(config.model, (spec.inputs,))


def network_weights(network: SpikingNetwork) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(W, b) of each layer, copies."""
    return [(layer.weight.detach().clone(), layer.bias.detach().clone()) for layer in network.dense_chain()]


def load_weights(network: SpikingNetwork, weights) -> None:
    with torch.no_grad():
        for layer, (w, b) in zip(network.dense_chain(), weights):
            layer.weight.copy_(w)
            layer.bias.copy_(b)


def ours_contender(work: Workload, network: SpikingNetwork, name: str, config: str) -> Contender:
    network.to(work.device)
    load_weights(network, work.weights)
    path = LIF_PATHS[name]
    inner = training_step(lambda: network(work.x_bt).output_spikes.mean(dim=1), network.parameters(), work.target)

    def step() -> None:
        with lif_path(path):
            inner()

    def both(x_bt, x_tb):
        with lif_path(path):
            return tuple(network(x_bt).population_spikes.values())

    return Contender(name, config, step, both)


# snnTorch ----

def snntorch_contender(work: Workload, per_step: bool) -> Contender:
    import snntorch as snn  # a peer, in the dev extra: imported only when timed

    (w1, b1), (w2, b2) = work.weights
    fc1, fc2 = linear_from(w1, b1), linear_from(w2, b2)
    lif1 = snn.Leaky(beta=TAU, threshold=V_THRESHOLD, reset_mechanism="zero").to(work.device)
    lif2 = snn.Leaky(beta=TAU, threshold=V_THRESHOLD, reset_mechanism="zero").to(work.device)
    steps = work.spec.time_steps

    def layer(lif, currents):  # (T, batch, n) -> (T, batch, n)
        mem, out = lif.reset_mem(), []
        for t in range(steps):
            spikes, mem = lif(currents[t], mem)
            out.append(spikes)
        return torch.stack(out)

    def both(x_tb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # spikes of both layers, (T, batch, n)
        if not per_step:
            hidden = layer(lif1, fc1(x_tb))
            return hidden, layer(lif2, fc2(hidden))
        mem1, mem2, hidden, out = lif1.reset_mem(), lif2.reset_mem(), [], []
        for t in range(steps):
            s1, mem1 = lif1(fc1(x_tb[t]), mem1)
            s2, mem2 = lif2(fc2(s1), mem2)
            hidden.append(s1)
            out.append(s2)
        return torch.stack(hidden), torch.stack(out)

    params = [*fc1.parameters(), *fc2.parameters()]
    how = "nn.Linear per time step (tutorial loop)" if per_step else "nn.Linear over all T*batch rows"
    return Contender("snntorch-loop" if per_step else "snntorch",
                     f"snntorch {snn.__version__} Leaky(beta={TAU}, threshold={V_THRESHOLD}, reset_mechanism='zero'), "
                     f"default surrogate ATan(alpha=2), reset detached, fires on u > Vth; {how}; (T, batch, n)",
                     training_step(lambda: both(work.x_tb)[1].mean(dim=0), params, work.target),
                     lambda x_bt, x_tb: tuple(s.transpose(0, 1) for s in both(x_tb)))


# SpikingJelly ----

def spikingjelly_contender(work: Workload, backend: str) -> Contender:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        from spikingjelly.activation_based import functional, layer, neuron  # a peer, dev extra only

    (w1, b1), (w2, b2) = work.weights

    def sj_linear(w, b):
        lin = layer.Linear(w.shape[1], w.shape[0], step_mode="m").to(work.device)
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        return lin

    def lif():  # H = V (1 - 1/tau) + X with tau = 1.25: V * 0.2 + X; hard reset to 0, not detached
        return neuron.LIFNode(tau=1.0 / (1.0 - TAU), decay_input=False, v_threshold=V_THRESHOLD, v_reset=0.0,
                              detach_reset=False, step_mode="m", backend=backend)

    net = nn.Sequential(sj_linear(w1, b1), lif(), sj_linear(w2, b2), lif()).to(work.device)

    def forward() -> torch.Tensor:  # (T, batch, outputs)
        functional.reset_net(net)
        return net(work.x_tb)

    def both(x_bt: torch.Tensor, x_tb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        functional.reset_net(net)
        hidden = net[1](net[0](x_tb))
        return hidden.transpose(0, 1), net[3](net[2](hidden)).transpose(0, 1)

    return Contender(f"spikingjelly-{backend}",
                     f"spikingjelly {version_of('spikingjelly')} LIFNode(tau=1.25, decay_input=False, "
                     f"v_threshold={V_THRESHOLD}, v_reset=0, detach_reset=False, step_mode='m', backend='{backend}'), "
                     "default surrogate Sigmoid(alpha=4), fires on u >= Vth; layer.Linear(step_mode='m') over all "
                     "T*batch rows; (T, batch, n)",
                     training_step(lambda: forward().mean(dim=0), net.parameters(), work.target), both)


# norse ----

def norse_contender(work: Workload) -> Contender:
    from norse.torch import LIFBoxCell, LIFBoxParameters  # a peer, in the dev extra: imported only when timed

    # v[t] = v[t-1] + dt tau_mem_inv (i - v[t-1]) = 0.2 v[t-1] + 0.8 i: with i = 1.25 (W s + b), v is our u.
    gain = 1.0 / (1.0 - TAU)
    (w1, b1), (w2, b2) = work.weights
    fc1, fc2 = linear_from(w1, b1, gain), linear_from(w2, b2, gain)
    p = LIFBoxParameters(tau_mem_inv=torch.as_tensor(1.0 - TAU, device=work.device),
                         v_th=torch.as_tensor(V_THRESHOLD, device=work.device),
                         v_leak=torch.as_tensor(0.0, device=work.device),
                         v_reset=torch.as_tensor(0.0, device=work.device),
                         alpha=torch.as_tensor(100.0, device=work.device))
    cell1, cell2 = LIFBoxCell(p, dt=1.0).to(work.device), LIFBoxCell(p, dt=1.0).to(work.device)
    steps = work.spec.time_steps

    def layer(cell, currents):
        state, out = None, []
        for t in range(steps):
            spikes, state = cell(currents[t], state)
            out.append(spikes)
        return torch.stack(out)

    def both(x_tb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (T, batch, n)
        hidden = layer(cell1, fc1(x_tb))
        return hidden, layer(cell2, fc2(hidden))

    return Contender("norse",
                     f"norse {version_of('norse')} LIFBoxCell(LIFBoxParameters(tau_mem_inv=0.8, "
                     f"v_th={V_THRESHOLD}, v_leak=0, v_reset=0), dt=1), the 1.25 input gain folded into nn.Linear "
                     "(over all T*batch rows); default surrogate SuperSpike(alpha=100), fires on v > Vth; "
                     "(T, batch, n)",
                     training_step(lambda: both(work.x_tb)[1].mean(dim=0),
                                   [*fc1.parameters(), *fc2.parameters()], work.target),
                     lambda x_bt, x_tb: tuple(s.transpose(0, 1) for s in both(x_tb)))


# plain torch under torch.compile ----

class _RectangularSpike(torch.autograd.Function):
    """H(z) (1 where z >= 0), derivative 1[|z| < 0.5]: the trainer's default h1 surrogate, a = 1."""

    @staticmethod
    def forward(ctx, z):  # type: ignore[override]
        ctx.save_for_backward(z)
        return (z >= 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return grad * (z.abs() < 0.5).to(grad.dtype)


class PlainLIFNetwork(nn.Module):
    def __init__(self, weights):
        super().__init__()
        (w1, b1), (w2, b2) = weights
        self.fc1, self.fc2 = linear_from(w1, b1), linear_from(w2, b2)

    @staticmethod
    def lif(currents: torch.Tensor) -> torch.Tensor:  # (batch, T, n)
        u = torch.zeros_like(currents[:, 0])
        o = torch.zeros_like(u)
        out = []
        for t in range(currents.shape[1]):
            u = TAU * u * (1.0 - o) + currents[:, t]
            o = _RectangularSpike.apply(u - V_THRESHOLD)
            out.append(o)
        return torch.stack(out, dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # spikes of both layers
        hidden = self.lif(self.fc1(x))
        return hidden, self.lif(self.fc2(hidden))


def compiled_contender(work: Workload, warmup: int) -> Contender:
    module = PlainLIFNetwork(work.weights).to(work.device)
    compiled = torch.compile(module)
    step = training_step(lambda: compiled(work.x_bt)[1].mean(dim=1), module.parameters(), work.target)
    synchronize(work.device)
    started = time.perf_counter()
    # the first call compiles the forward; the dynamics check reads these spikes of the initial weights
    first_spikes = {id(x_bt): tuple(s.detach() for s in compiled(x_bt)) for _, x_bt, _ in work.checks}
    step()  # compiles the backward
    synchronize(work.device)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(work.device)
    typical = (time.perf_counter() - started) / max(warmup, 1)
    # compile time: the first forwards and first step, less as many warm steps
    return Contender("compiled", "plain torch recurrence (nn.Linear over all T*batch rows, rectangular surrogate "
                                 "h1 a=1 as an autograd.Function, fires on u >= Vth), whole forward under "
                                 "torch.compile(mode='default'); loss and Adam eager; (batch, T, n)",
                     step, lambda x_bt, x_tb: first_spikes[id(x_bt)],
                     compile_s=max(first - (1 + len(work.checks)) * typical, 0.0))


# matrix products alone ----

def matmul_contender(work: Workload, with_adam: bool) -> Contender:
    spec, device = work.spec, work.device
    rows = spec.batch * spec.time_steps
    generator = torch.Generator().manual_seed(1)
    x = work.x_bt.reshape(rows, spec.inputs)
    s1 = (torch.rand(rows, spec.hidden, generator=generator) < RATE).float().to(device)
    g1 = torch.randn(rows, spec.hidden, generator=generator).to(device)
    g2 = torch.randn(rows, spec.outputs, generator=generator).to(device)
    (w1, b1), (w2, b2) = work.weights
    params = [nn.Parameter(w1.clone()), nn.Parameter(b1.clone()), nn.Parameter(w2.clone()), nn.Parameter(b2.clone())]
    p1, q1, p2, q2 = params
    y1 = torch.empty(rows, spec.hidden, device=device)
    y2 = torch.empty(rows, spec.outputs, device=device)
    ds1 = torch.empty(rows, spec.hidden, device=device)
    dw1, dw2 = torch.empty_like(w1), torch.empty_like(w2)
    optimizer = torch.optim.Adam(params, lr=LR) if with_adam else None
    if optimizer is not None:
        p1.grad, p2.grad, q1.grad, q2.grad = dw1, dw2, torch.zeros_like(b1), torch.zeros_like(b2)

    def step() -> None:
        with torch.no_grad():
            torch.mm(x, p1.t(), out=y1)      # layer 1, all T*batch rows
            torch.mm(s1, p2.t(), out=y2)     # layer 2
            torch.mm(g2.t(), s1, out=dw2)    # dL/dW2
            torch.mm(g2, p2, out=ds1)        # dL/dS1
            torch.mm(g1.t(), x, out=dw1)     # dL/dW1 (no dL/dX: the input needs none)
        if optimizer is not None:
            optimizer.step()

    what = ("fp32 products only, into preallocated outputs: X W1^T, S1 W2^T, G2^T S1, G2 W2, G1^T X "
            f"({rows} rows)")
    return Contender("matmul+adam" if with_adam else "matmul-only",
                     what + (" + Adam step on W1, b1, W2, b2" if with_adam else ""), step)


# ---------------------------------------------------------------- section a: training

def make_workload(spec: NetworkSpec, device: torch.device, seed: int,
                  init: str) -> tuple[Workload, SpikingNetwork]:
    torch.manual_seed(seed)
    ours = build_ours(spec, init=init)
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(spec.batch, spec.time_steps, spec.inputs, generator=generator) < RATE).float()
    labels = torch.randint(0, spec.outputs, (spec.batch,), generator=generator)
    work = Workload(spec, device, x.to(device), x.transpose(0, 1).contiguous().to(device),
                    F.one_hot(labels, spec.outputs).float().to(device))
    work.weights = [(w.to(device), b.to(device)) for w, b in network_weights(ours)]
    lively = (torch.rand(spec.batch, spec.time_steps, spec.inputs, generator=generator) < CHECK_RATE).float()
    work.checks = [(f"rate {RATE}", work.x_bt, work.x_tb),
                   (f"rate {CHECK_RATE}", lively.to(device), lively.transpose(0, 1).contiguous().to(device))]
    return work, ours


def build_contenders(work: Workload, ours: SpikingNetwork, args, log) -> tuple[list[Contender], dict]:
    notes: dict = {}
    contenders = [ours_contender(work, ours, "ours", "SpikingNetwork.from_config(config_from_dict(...).model), "
                                 "default settings (its default LIF implementation; surrogate h1 rectangular a=1; "
                                 f"fires on u >= Vth; init {args.init!r}); (batch, T, n)")]
    for name, detail in (("ours-tensor", "the fused op's tensor path (what a GPU runs)"),
                         ("ours-reference", "lif_step stepped under autograd (the trainer before the fused op)")):
        if not args.contenders or name in args.contenders:
            contenders.append(ours_contender(work, build_ours(work.spec, args.init), name, f"as ours, {detail}"))
    for label, factory in (("snntorch", lambda: snntorch_contender(work, per_step=False)),
                           ("snntorch-loop", lambda: snntorch_contender(work, per_step=True)),
                           ("spikingjelly-torch", lambda: spikingjelly_contender(work, "torch")),
                           ("spikingjelly-cupy", lambda: spikingjelly_contender(work, "cupy")),
                           ("norse", lambda: norse_contender(work)),
                           ("compiled", lambda: compiled_contender(work, args.warmup)),
                           ("matmul-only", lambda: matmul_contender(work, with_adam=False)),
                           ("matmul+adam", lambda: matmul_contender(work, with_adam=True))):
        if args.contenders and label not in args.contenders and label not in ("ours", "matmul-only"):
            continue
        if label == "spikingjelly-cupy" and (work.device.type != "cuda" or quiet_import("cupy") is None):
            notes[label] = "not run (needs CUDA and cupy)"
            continue
        if label.startswith("spikingjelly") and quiet_import("spikingjelly") is None:
            notes[label] = "not run (spikingjelly not installed: pip install -e '.[dev]')"
            continue
        if label == "compiled" and args.no_compile:
            notes[label] = "not run (--no-compile)"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if label == "compiled":
                    log(f"  compiling the plain recurrence ({work.spec.name}) ...")
                contenders.append(factory())
        except Exception as exc:  # noqa: BLE001 - a peer that fails is reported, not fatal
            notes[label] = f"failed: {type(exc).__name__}: {exc}"
            log(f"  {label}: {notes[label]}")
    return contenders, notes


def check_dynamics(contenders: list[Contender], checks) -> dict:
    """Spikes of both layers in one forward pass of each contender beside ours' (same initial
    weights), on each check input: {contender: {input label: {spikes, differing_spikes}}}."""
    ours = next(c for c in contenders if c.name == "ours")
    results: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, x_bt, x_tb in checks:
            reference = [s.detach() for s in ours.spikes(x_bt, x_tb)]
            for contender in contenders:
                if contender.spikes is None:
                    continue
                spikes = [s.detach() for s in contender.spikes(x_bt, x_tb)]
                results.setdefault(contender.name, {})[label] = {
                    "spikes": [int(s.sum().item()) for s in spikes],
                    "differing_spikes": [int((s != r).sum().item()) for s, r in zip(spikes, reference)]}
    return results


def time_training(spec: NetworkSpec, device: torch.device, args, log) -> dict:
    work, ours = make_workload(spec, device, args.seed, args.init)
    with torch.no_grad():
        recorded = ours.to(device)(work.x_bt)
    rates = {name: round(float(s.mean().item()), 4) for name, s in recorded.population_spikes.items()}
    contenders, notes = build_contenders(work, ours, args, log)
    checks = check_dynamics(contenders, work.checks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for contender in contenders:  # warm-up (the compiled one is warm already)
            for _ in range(0 if contender.compile_s is not None else args.warmup):
                contender.step()
        synchronize(device)
        steps = args.steps or spec.steps
        times: dict[str, list[float]] = {c.name: [] for c in contenders}
        for round_index in range(args.rounds):
            shift = round_index % len(contenders)
            for contender in contenders[shift:] + contenders[:shift]:
                synchronize(device)
                started = time.perf_counter()
                for _ in range(steps):
                    contender.step()
                synchronize(device)
                times[contender.name].append((time.perf_counter() - started) / steps)
    base = times["matmul-only"]
    mine = times["ours"]
    rows = {}
    for contender in contenders:
        t = times[contender.name]
        rows[contender.name] = {
            "config": contender.config,
            "step_ms": {k: round(v * 1e3, 3) for k, v in summary(t).items() if k != "spread"},
            "samples_per_s": {k: round(spec.batch / v, 1) for k, v in
                              (("median", statistics.median(t)), ("min", max(t)), ("max", min(t)))},
            "spread": round(summary(t)["spread"], 3),
            "step_over_matmul_only": _ratio(t, base),
            "step_over_ours": _ratio(t, mine),
            "rounds_step_ms": [round(v * 1e3, 3) for v in t],
            **({"compile_s": round(contender.compile_s, 1)} if contender.compile_s is not None else {}),
            **({"dynamics_check": checks[contender.name]} if contender.name in checks else {}),
        }
    return {"network": spec.name, "time_steps": spec.time_steps, "batch": spec.batch, "steps_per_round": steps,
            "rounds": args.rounds, "device": str(device), "ours_spike_rates_at_start": rates,
            "contenders": rows, "notes": notes}


def _ratio(times: list[float], base: list[float]) -> dict:
    """Median (and range) of the per-round ratio times / base (same round, side by side), and
    the ratio of the best (least loaded) rounds, min(times) / min(base)."""
    ratios = [a / b for a, b in zip(times, base)]
    return {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3), "max": round(max(ratios), 3),
            "best_over_best": round(min(times) / min(base), 3)}


def print_training(result: dict) -> None:
    if "failed" in result:
        print(f"\n== training: failed: {result['failed']} ==")
        return
    spec = f"{result['network']}, T = {result['time_steps']}, batch {result['batch']}"
    print(f"\n== training {spec} on {result['device']}: forward + backward + Adam, "
          f"{result['steps_per_round']} steps x {result['rounds']} rounds ==")
    print(f"   ours' spike rates at the start: {result['ours_spike_rates_at_start']}")
    print(f"   {'contender':<20}{'samples/s':>11}{'min..max':>17}{'spread':>8}{'step/matmul':>13}{'(best)':>8}"
          f"{'step/ours':>11}{'(best)':>8}{'compile s':>11}  spikes differing from ours': "
          f"layer 1 / 2, input {RATE}, then {CHECK_RATE}")
    for name, row in result["contenders"].items():
        sps, over_mm, over_ours = row["samples_per_s"], row["step_over_matmul_only"], row["step_over_ours"]
        check = row.get("dynamics_check")
        check_text = "   ".join(" / ".join(f"{d} of {n}" for d, n in zip(c["differing_spikes"], c["spikes"]))
                                   for c in check.values()) if check else ""
        print(f"   {name:<20}{sps['median']:>11,.0f}{sps['min']:>8,.0f}..{sps['max']:<7,.0f}"
              f"{row['spread'] * 100:>7.0f}%{over_mm['median']:>12.2f}x{over_mm['best_over_best']:>7.2f}x"
              f"{over_ours['median']:>10.2f}x{over_ours['best_over_best']:>7.2f}x{row.get('compile_s', ''):>11}"
              f"  {check_text}")
    print("   (spread: interquartile range / median; step/matmul: step time over matmul-only's, median of per-round "
          "ratios; step/ours: over ours' = how many times faster ours is; (best): fastest round over fastest round)")
    ours = result["contenders"]["ours"]["step_over_matmul_only"]
    where = "target (set for the CPU)" if result["device"].startswith("cuda") else "target"
    print(f"   {where}: ours' step within 1.25x of matmul-only: {ours['median']:.3f}x (rounds {ours['min']:.2f}.."
          f"{ours['max']:.2f}, best {ours['best_over_best']:.2f}x) -> {'met' if ours['median'] <= 1.25 else 'not met'}")
    peers = {n: r["step_over_ours"]["median"] for n, r in result["contenders"].items()
             if n not in ("ours", "matmul-only", "matmul+adam") and not n.startswith("ours-")}
    if peers:
        behind = [n for n, r in peers.items() if r < 1.0]
        print(f"   ours ahead of every peer: {'yes' if not behind else 'no (behind ' + ', '.join(behind) + ')'}")
    for key, note in result["notes"].items():
        print(f"   note {key}: {note}")


# ---------------------------------------------------------------- section b: emulator

def synapse_weights(network) -> list[tuple[str, np.ndarray]]:
    """(population, effective integer weights (out, in)) of each population's forward synapse."""

    layers = []
    for population in network.graph.populations:
        synapse = next(s for s, e in network.graph.synapses_into(population.name) if not e.recurrent)
        q = synapse.quantized
        layers.append((population.name, effective_weights(q.weight, q.sign_mode, q.num_weight_bits,
                                                          network.hardware)))
    return layers


def int8_weights(weights: np.ndarray) -> tuple[np.ndarray, int] | None:
    """weights / 2^k in int8, k their common power of two (the emulator's own choice), or None."""
    shift = emulator._common_power_of_two(weights)
    scaled = weights >> shift
    if scaled.min(initial=0) < -128 or scaled.max(initial=0) > 127:
        return None
    return scaled.astype(np.int8), shift


def pad_to(tensor: torch.Tensor, multiple: int, dim: int) -> torch.Tensor:
    extra = -tensor.shape[dim] % multiple
    if not extra:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = extra
    return torch.cat([tensor, tensor.new_zeros(shape)], dim=dim)


class MatmulOnly:
    """The emulated network's products alone, batch by batch as the emulator runs them."""

    def __init__(self, layers, spikes: np.ndarray, hidden: np.ndarray, batch: int, device: torch.device):
        (_, w1), (_, w2) = layers
        self.device, self.rows = device, batch * spikes.shape[1]
        n = len(spikes)
        flat_in = spikes.reshape(n * spikes.shape[1], -1)
        flat_hidden = hidden.reshape(n * hidden.shape[1], -1)
        starts = range(0, len(flat_in), self.rows)
        self.x8 = [torch.from_numpy(flat_in[s:s + self.rows]).to(device).view(torch.int8) for s in starts]
        self.h8 = [torch.from_numpy(flat_hidden[s:s + self.rows]).to(device).view(torch.int8) for s in starts]
        self.x32 = [x.float() for x in self.x8]
        self.h32 = [h.float() for h in self.h8]
        self.w1t = torch.from_numpy(np.ascontiguousarray(w1.T)).float().to(device)
        self.w2t = torch.from_numpy(np.ascontiguousarray(w2.T)).float().to(device)
        self.x_np = [x.cpu().numpy() for x in self.x32] if device.type == "cpu" else None
        self.h_np = [h.cpu().numpy() for h in self.h32] if device.type == "cpu" else None
        self.w1t_np, self.w2t_np = self.w1t.cpu().numpy(), self.w2t.cpu().numpy()
        self.int8 = None
        q1, q2 = int8_weights(w1), int8_weights(w2)
        if q1 is not None and q2 is not None:
            # torch._int_mm: int8 (m, k) @ int8 (k, n) -> int32; CUDA needs k and n multiples of 8 (m > 16):
            # weights (n, k) padded with zeros to multiples of 8 both ways, used as their (k, n) transpose.
            b1 = pad_to(pad_to(torch.from_numpy(q1[0]), 8, 0), 8, 1).to(device).t()
            b2 = pad_to(pad_to(torch.from_numpy(q2[0]), 8, 0), 8, 1).to(device).t()
            self.int8 = (b1, b2, q1[1], q2[1])
            self.x8 = [pad_to(x, 8, 1) for x in self.x8]
            self.h8 = [pad_to(h, 8, 1) for h in self.h8]

    def fp32(self) -> None:
        for x, h in zip(self.x32, self.h32):
            torch.mm(x, self.w1t)
            torch.mm(h, self.w2t)
        synchronize(self.device)

    def fp32_numpy(self) -> None:
        for x, h in zip(self.x_np, self.h_np):
            np.matmul(x, self.w1t_np)
            np.matmul(h, self.w2t_np)

    def int8_mm(self) -> None:
        b1, b2, _, _ = self.int8
        for x, h in zip(self.x8, self.h8):
            torch._int_mm(x, b1)
            torch._int_mm(h, b2)
        synchronize(self.device)

    def check(self) -> bool:
        """The int8 products (scaled back) equal the fp32 ones on the first batch."""
        b1, b2, s1, s2 = self.int8
        one = torch.equal(torch._int_mm(self.x8[0], b1)[:, :self.w1t.shape[1]].double() * (1 << s1),
                          torch.mm(self.x32[0], self.w1t).double())
        two = torch.equal(torch._int_mm(self.h8[0], b2)[:, :self.w2t.shape[1]].double() * (1 << s2),
                          torch.mm(self.h32[0], self.w2t).double())
        return one and two


def _emulator_inputs(args, samples: int | None):
    """(network, test split, encoded spikes, encoding seconds), or {'skipped': why}."""
    if not Path(args.checkpoint).is_file():
        return {"skipped": f"checkpoint {args.checkpoint} not found (make it with benchmarks/bench_train_mnist.py)"}
    try:
        test = load_dataset("mnist", args.data).test.head(samples)
    except Exception as exc:  # noqa: BLE001 - missing data: skip the section
        return {"skipped": f"MNIST test set not loaded from {args.data}: {exc}"}
    network, _ = export_checkpoint(args.checkpoint, resolve_hardware_config(args.hw))
    started = time.perf_counter()
    spikes = encode_split(network.encoding, test.inputs, network.time_steps, network.eval_seed)
    return network, test, spikes, time.perf_counter() - started


def _emulate_calls(network, spikes, checked, reference, device: torch.device, batch: int, log) -> tuple:
    """emulate() with its default and every backend that runs on `device` (numpy only on the
    CPU), each warmed up and checked spike for spike against `reference` (numpy's on `checked`):
    (calls by label, agreement, first-call seconds, one run's result or None)."""
    on_gpu = device.type == "cuda"
    default = inspect.signature(emulate).parameters["backend"].default
    names = [None] + [b for b in emulator.BACKENDS if b != default] if not on_gpu else \
        [b for b in emulator.BACKENDS if b != "numpy"]
    calls, agreement, first_call, sample = {}, {}, {}, None
    for name in names:
        label = f"emulate default ({default})" if name is None else f"emulate {name}"
        kwargs = {"batch_size": batch, **({"backend": name} if name else {})}
        if name != "numpy":
            label += f" [{device}]"
            kwargs["device"] = str(device)
        try:
            started = time.perf_counter()
            result = emulate(network, spikes, **kwargs)  # the warm-up
            synchronize(device)
            first_call[label] = round(time.perf_counter() - started, 4)
            check = result if len(checked) == len(spikes) else emulate(network, checked, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a backend that fails is reported
            agreement[label] = f"failed: {type(exc).__name__}: {exc}"
            log(f"  {label}: {agreement[label]}")
            continue
        same = all(np.array_equal(check.population_spikes[k], v) for k, v in reference.population_spikes.items())
        agreement[label] = f"{same} (ran: {result.backend})"
        calls[label] = (lambda kw: lambda: emulate(network, spikes, **kw))(kwargs)
        sample = sample or result
    return calls, agreement, first_call, sample


def _product_calls(layers, spikes, hidden, batch: int, device: torch.device) -> tuple[dict, str]:
    """The same network's products alone: fp32 (torch, and numpy on the CPU) and int8."""
    products = MatmulOnly(layers, spikes, hidden, batch, device)
    calls = {"fp32 products (torch.mm)": products.fp32}
    if device.type != "cuda":
        calls["fp32 products (numpy)"] = products.fp32_numpy
    if products.int8 is None:
        return calls, "the effective weights do not fit int8 by a power-of-two scale"
    try:
        exact = products.check()
    except Exception as exc:  # noqa: BLE001 - e.g. a device without int8 products
        return calls, f"torch._int_mm failed: {type(exc).__name__}: {exc}"
    calls["int8 products (torch._int_mm)"] = products.int8_mm
    return calls, f"weights / 2^{products.int8[2]}, 2^{products.int8[3]}; equal to fp32: {exact}"


def timed_rounds(calls: dict[str, Callable[[], object]], rounds: int, device: torch.device) -> dict[str, list]:
    """Seconds of each call per round, the calls alternating (the order rotates every round)."""
    for call in calls.values():  # warm-up
        call()
    times: dict[str, list[float]] = {k: [] for k in calls}
    order = list(calls)
    for round_index in range(rounds):
        shift = round_index % len(order)
        for name in order[shift:] + order[:shift]:
            synchronize(device)
            started = time.perf_counter()
            calls[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - started)
    return times


def time_emulator(args, device: torch.device, samples: int | None, rounds: int, batch: int, log) -> dict:
    """Section b (or c's emulator): emulate() beside its network's products alone."""
    inputs = _emulator_inputs(args, samples)
    if isinstance(inputs, dict):
        return inputs
    network, test, spikes, encode_s = inputs
    n = len(spikes)
    log(f"  emulator backends: {list(emulator.BACKENDS)}; {n} samples, batch {batch}")
    # The spikes every backend must reproduce: numpy's (on a GPU, on the first 1,000 samples only).
    checked = spikes if device.type != "cuda" else spikes[:1000]
    reference = emulate(network, checked, "numpy", batch_size=batch)
    calls, agreement, first_call, sample = _emulate_calls(network, spikes, checked, reference, device, batch, log)
    layers = synapse_weights(network)
    sample = sample or emulate(network, spikes, "numpy", batch_size=batch)
    hidden = sample.population_spikes[layers[0][0]]  # layer 1's spikes, layer 2's products' input
    products, int8_note = _product_calls(layers, spikes, hidden, batch, device)
    times = timed_rounds({**calls, **products}, rounds, device)
    fp32, int8 = times["fp32 products (torch.mm)"], times.get("int8 products (torch._int_mm)")
    rows = {name: {"seconds": {k: round(v, 4) for k, v in summary(t).items() if k != "spread"},
                   "samples_per_s": round(n / statistics.median(t), 1), "spread": round(summary(t)["spread"], 3),
                   "over_fp32_products": _ratio(t, fp32), **({"over_int8_products": _ratio(t, int8)} if int8 else {})}
            for name, t in times.items()}
    return {"network": "-".join([str(int(np.prod(network.input_shape)))] + [str(p.neurons) for p in
                                                                          network.graph.populations]),
            "time_steps": network.time_steps, "samples": n, "batch": batch, "rounds": rounds, "device": str(device),
            "hw_config": network.hardware.name, "encode_s": round(encode_s, 2),
            "emulator_accuracy": float((reference.predictions == test.labels[:len(checked)]).mean()),
            "accuracy_samples": len(checked), "backends": list(emulator.BACKENDS),
            "default_backend": inspect.signature(emulate).parameters["backend"].default,
            "identical_to_numpy": agreement, "int8": int8_note, "first_call_s": first_call, "calls": rows}


def guarded(section: Callable[[], dict]) -> dict:
    """A section's figures, or {'failed': why} (e.g. code being rewritten that does not import)."""
    try:
        return section()
    except Exception as exc:  # noqa: BLE001 - a failing section is reported, the others still run
        traceback.print_exc()
        return {"failed": f"{type(exc).__name__}: {exc}"}


def print_emulator(result: dict, gpu: bool = False) -> None:
    for key in ("skipped", "failed"):
        if key in result:
            print(f"\n== emulator{' (GPU)' if gpu else ''}: {key}: {result[key]} ==")
            return
    print(f"\n== emulator {result['network']}, T = {result['time_steps']}, {result['samples']} MNIST test images, "
          f"batch {result['batch']}, {result['rounds']} rounds, {result['device']} ({result['hw_config']}) ==")
    print(f"   encode {result['encode_s']} s (not timed below); emulator accuracy {result['emulator_accuracy']:.4f}; "
          f"backends {result['backends']} (default {result['default_backend']!r})")
    print(f"   spikes identical to numpy's: {result['identical_to_numpy']}")
    print(f"   int8 products: {result['int8']}")
    print(f"   {'call':<36}{'samples/s':>11}{'median s':>10}{'min..max s':>17}{'spread':>8}"
          f"{'/fp32 mm':>10}{'(best)':>8}{'/int8 mm':>10}{'(best)':>8}")
    for name, row in result["calls"].items():
        s = row["seconds"]
        int8 = row.get("over_int8_products", {})
        fp32 = row["over_fp32_products"]
        int8_text = (f"{int8['median']:>9.2f}x{int8['best_over_best']:>7.2f}x" if int8 else f"{'-':>10}{'-':>8}")
        print(f"   {name:<36}{row['samples_per_s']:>11,.0f}{s['median']:>10.3f}{s['min']:>8.3f}..{s['max']:<7.3f}"
              f"{row['spread'] * 100:>7.0f}%{fp32['median']:>9.2f}x{fp32['best_over_best']:>7.2f}x{int8_text}")
    emulated = {k: v for k, v in result["calls"].items() if k.startswith("emulate")}
    if emulated:
        best = min(emulated, key=lambda k: emulated[k]["over_fp32_products"]["median"])
        ratio = emulated[best]["over_fp32_products"]["median"]
        if gpu:
            wall = emulated[best]["seconds"]["median"]
            print(f"   target (GPU): all {result['samples']} images in under 1 s: {best} {wall:.3f} s -> "
                  f"{'met' if wall < 1.0 and result['samples'] >= 10000 else 'not met'}")
        else:
            print(f"   target (CPU): emulator within 1.25x of the fp32 products: fastest {best} {ratio:.2f}x -> "
                  f"{'met' if ratio <= 1.25 else 'not met'}")


# ---------------------------------------------------------------- main

def machine(load_before, load_after) -> dict:
    versions = package_versions()
    for name in ("snntorch", "spikingjelly", "norse", "cupy"):
        versions[name] = version_of(name)
    info = {"cpu": cpu_model(), "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average_before": load_before,
            "load_average_after": load_after, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else None, "versions": versions}
    return info


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--networks", default="large,small",
                        help="comma-separated: large (784-800-10, T 25, batch 100), small (64-256-10, T 16, "
                             "batch 64) or IN-HIDDEN-OUT:T:BATCH[:STEPS]")
    parser.add_argument("--rounds", type=int, default=20, help="timing rounds (training)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per contender per round "
                                                                 "(default: 3 large, 6 small)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each contender first")
    parser.add_argument("--contenders", default=None,
                        help="comma-separated subset of snntorch, snntorch-loop, spikingjelly-torch, "
                             "spikingjelly-cupy, norse, compiled, matmul+adam (ours and matmul-only always run)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile contender")
    parser.add_argument("--compile-cache", default=None, help="keep torch.compile's cache in this folder "
                                                              "(default: a fresh one, removed at exit)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", choices=("pytorch", "paper"), default="pytorch",
                        help="initial weights of every contender: the trainer's model.init (default its default, "
                             "PyTorch's; 'paper' gives livelier spiking)")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-emulator", action="store_true")
    parser.add_argument("--skip-gpu", action="store_true", help="CPU sections only, even with CUDA")
    parser.add_argument("--checkpoint", default="runs/bench_mnist_mlp/checkpoint.safetensors")
    parser.add_argument("--data", default="../shared/data/mnist", help="directory of the MNIST idx files")
    parser.add_argument("--hw", default="loihi2")
    parser.add_argument("--emulator-samples", type=int, default=2000, help="test images on the CPU")
    parser.add_argument("--emulator-batch", type=int, default=500)
    parser.add_argument("--emulator-rounds", type=int, default=7)
    parser.add_argument("--gpu-emulator-batch", type=int, default=10000)
    parser.add_argument("--json", help="also write every figure to this JSON file")
    args = parser.parse_args()
    args.networks = [parse_network(t.strip()) for t in args.networks.split(",") if t.strip()]
    args.contenders = set(args.contenders.split(",")) if args.contenders else None
    return args


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def fresh_compile_cache(args) -> str | None:
    """torch.compile's cache (read when it compiles) goes to a fresh folder, removed at exit, so
    compile times are cold-cache times and nothing is left behind; --compile-cache keeps one."""
    if args.compile_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(args.compile_cache).resolve())
    elif "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        fresh = tempfile.mkdtemp(prefix="bench_speed_inductor_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = fresh
        return fresh
    return None


def training_section(args, device: torch.device) -> list[dict]:
    """Section a (or c's training) on `device`: every network's figures, printed as they come."""
    results = []
    for spec in args.networks:
        log(f"training {spec.name} on {device.type} ...")
        result = guarded(lambda: time_training(spec, device, args, log))
        results.append(result)
        print_training(result)
        if device.type == "cuda" and "failed" not in result:
            peers = result["contenders"]
            snn = peers.get("snntorch", {}).get("step_over_ours", {}).get("median")
            sj = [r["step_over_ours"]["median"] for n, r in peers.items() if n.startswith("spikingjelly")]
            print(f"   target (GPU): ours >= 2x snnTorch: {snn and f'{snn:.2f}x'}; ours >= SpikingJelly's "
                  f"fastest backend: {sj and f'{min(sj):.2f}x'}")
    return results


def run_sections(args, figures: dict) -> None:
    """Sections a and b on the CPU, then c on a GPU when there is one."""
    cpu = torch.device("cpu")
    if not args.skip_training:
        figures["training"] = training_section(args, cpu)
    if not args.skip_emulator:
        log("emulator on cpu ...")
        figures["emulator"] = guarded(lambda: time_emulator(args, cpu, args.emulator_samples, args.emulator_rounds,
                                                            args.emulator_batch, log))
        print_emulator(figures["emulator"])
    if not torch.cuda.is_available() or args.skip_gpu:
        figures["gpu"] = "not run: " + ("--skip-gpu" if args.skip_gpu else "no CUDA device")
        print(f"\n== GPU: {figures['gpu']} ==")
        return
    gpu = torch.device("cuda")
    if not args.skip_training:
        figures["gpu_training"] = training_section(args, gpu)
    if not args.skip_emulator:
        log("emulator on cuda, all test images ...")
        figures["gpu_emulator"] = guarded(lambda: time_emulator(args, gpu, None, args.emulator_rounds,
                                                                args.gpu_emulator_batch, log))
        print_emulator(figures["gpu_emulator"], gpu=True)


def print_machine(figures: dict) -> None:
    m = figures["machine"]
    v = m["versions"]
    print(f"\n== machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), torch threads "
          f"{m['torch_threads']}, CUDA {m['cuda']}; load average before {m['load_average_before']}, after "
          f"{m['load_average_after']}; python {v.get('python')}, torch {v.get('torch')}, numpy {v.get('numpy')}, "
          f"snntorch {v['snntorch']}, spikingjelly {v['spikingjelly']}, norse {v['norse']}, commit "
          f"{v.get('git_commit')}; wall {figures['wall_s']} s ==")


def main() -> None:
    args = parse_arguments()
    fresh_cache = fresh_compile_cache(args)
    load_before = load_average()
    figures: dict = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "training": [],
                     "gpu_training": []}
    started = time.perf_counter()
    try:
        run_sections(args, figures)
    finally:
        if fresh_cache:
            shutil.rmtree(fresh_cache, ignore_errors=True)
    figures["machine"] = machine(load_before, load_average())
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    print_machine(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
