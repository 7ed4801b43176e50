"""Benchmark: NIR round trips with snnTorch 1.0.0 and norse 1.1.0, both directions.

    ./run stbp train --config configs/digits_mlp.yaml --output-dir runs/nir/digits_mlp   (and _cnn, _resnet,
    _recurrent)
    ./run python benchmarks/bench_nir.py --checkpoints runs/nir/digits_*/checkpoint.safetensors [--lava]

Out: each checkpoint is exported with `stbp export --format nir` (dt = 1e-4 s), read back with
nir.read, imported by snnTorch's import_from_nir and norse's from_nir (dt = 1e-4 s) and run on
the digits test spikes (the evaluation encoding); every population's spikes are compared with
our trained model's; norse also runs the file written with `--nir-r unit` (r = 1, for readers
that ignore r). The file is also imported back here and checked to give the same graph.

In: an MLP 64-128-10 is trained on digits in snnTorch (Leaky, zero reset) and in norse
(LIFBoxCell), each with its own surrogate gradient and BPTT, on the same Bernoulli spikes;
written to NIR by the framework (norse at dt = 1, see below), imported here (`stbp import`),
exported to Loihi fixed point, and run on the emulator (and Lava fixed_pt with --lava); the
framework's own spikes on the test spikes are the reference of the fidelity report.
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
import warnings
from pathlib import Path

import nir
import numpy as np
import torch

from export.hw_config import resolve_hardware_config
from interchange.frameworks import FrameworkError, run_norse, run_snntorch
from interchange.nir_export import graph_to_nir
from interchange.nir_import import import_nir
from lava_backend.fidelity import REFERENCE, BackendRun, build_report, compare_pair
from netgraph.provenance import package_versions
from spikedata import load_dataset
from stbp_cli.pipeline import (emulator_run, export_checkpoint, export_nir, import_nir_checkpoint, lava_run,
                               trained_run)
from trainer.checkpoint import float_graph, load_checkpoint
from trainer.encoding import encode_split

DT = 1e-4


def _agreement(ours: BackendRun, theirs: dict[str, np.ndarray], framework: str) -> list[dict]:
    """Population by population, the harness's own comparison (lava_backend.fidelity.compare_pair)."""
    pair = compare_pair(ours, BackendRun(framework, theirs, ours.output, float("nan")), must_be_identical=False)
    return [{"population": p.population, "train_match": p.spike_train_match, "mismatched_spikes": p.mismatched_spikes,
             "spikes": int(ours.population_spikes[p.population].sum()), "rate_ours": p.reference_rate,
             "rate_theirs": p.candidate_rate} for p in pair.populations]


def export_round_trip(checkpoint_path: str, workdir: Path) -> dict:
    checkpoint = load_checkpoint(checkpoint_path)
    config = checkpoint.config
    test = load_dataset(config.data.name, config.data.path, config.encoding.time_steps).test
    spikes = encode_split(config.encoding.kind, test.inputs, config.encoding.time_steps, config.training.eval_seed)
    ours = trained_run(checkpoint, spikes)
    path = workdir / (Path(checkpoint_path).parent.name + ".nir")
    export_nir(checkpoint_path, path, DT)
    graph = float_graph(checkpoint)
    back = nir.read(str(path))
    same = import_nir(back).graph
    identical = all(np.array_equal(getattr(n, f), getattr(same.node(n.name), f))
                    for n in graph.nodes for f in ("weight", "bias") if getattr(n, f, None) is not None)
    result = {"checkpoint": checkpoint_path, "samples": len(spikes), "T": config.encoding.time_steps,
              "round_trip_identical": identical, "frameworks": {}}
    unit_r = graph_to_nir(graph, DT, r_convention="unit")  # `stbp export --format nir --nir-r unit`
    for name, source, run in (("snntorch", back, lambda g: run_snntorch(g, spikes)),
                              ("norse", back, lambda g: run_norse(g, spikes, DT)),
                              ("norse, --nir-r unit", unit_r, lambda g: run_norse(g, spikes, DT))):
        started = time.perf_counter()
        try:
            theirs = run(copy.deepcopy(source))  # snnTorch's import rewrites the graph it is given
            result["frameworks"][name] = {"populations": _agreement(ours, theirs, name),
                                          "wall_s": round(time.perf_counter() - started, 2)}
        except FrameworkError as exc:
            result["frameworks"][name] = {"error": str(exc)[:300]}
    return result


def _train_source(framework: str, spikes: np.ndarray, labels: np.ndarray, epochs: int, seed: int):
    """An MLP 64-128-10 trained in the framework itself: (module, step function)."""
    torch.manual_seed(seed)
    if framework == "snntorch":
        import snntorch as snn
        from snntorch import utils as snn_utils

        def leaky(n, output=False):
            return snn.Leaky(beta=torch.full((n,), 0.8), threshold=torch.full((n,), 1.0), reset_mechanism="zero",
                             init_hidden=True, reset_delay=False, output=output)
        net = torch.nn.Sequential(torch.nn.Linear(64, 128), leaky(128), torch.nn.Linear(128, 10), leaky(10, True))

        def forward(x):
            snn_utils.reset(net)
            return torch.stack([net(x[:, t])[0] for t in range(x.shape[1])], 1)
    else:
        import norse.torch as norse

        def cell(n):
            return norse.LIFBoxCell(norse.LIFBoxParameters(tau_mem_inv=torch.full((n,), 200.0),
                                                           v_th=torch.full((n,), 1.0), v_leak=torch.zeros(n),
                                                           v_reset=torch.zeros(n)), dt=1e-3)
        net = norse.SequentialState(torch.nn.Linear(64, 128), cell(128), torch.nn.Linear(128, 10), cell(10))
        with torch.no_grad():  # its input gain is dt * tau_mem_inv = 0.2: start where neurons can reach threshold
            for layer in (net[0], net[2]):
                layer.weight.mul_(5.0)

        def forward(x):
            state, outs = None, []
            for t in range(x.shape[1]):
                out, state = net(x[:, t], state)
                outs.append(out)
            return torch.stack(outs, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    data = torch.from_numpy(spikes.reshape(len(spikes), spikes.shape[1], -1).astype(np.float32))
    target = torch.from_numpy(labels.astype(np.int64))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(data), generator=generator).split(64):
            counts = forward(data[batch]).sum(1)
            loss = torch.nn.functional.cross_entropy(counts, target[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net, forward


def import_from_framework(framework: str, epochs: int, workdir: Path, with_lava: bool, seed: int = 0) -> dict:
    """Trains in the framework, writes NIR there, imports, deploys and compares with its spikes."""
    time_steps, dataset = 16, load_dataset("digits")
    train_spikes = encode_split("bernoulli", dataset.train.inputs, time_steps, seed + 1)
    net, forward = _train_source(framework, train_spikes, dataset.train.labels, epochs, seed)
    path = workdir / f"{framework}.nir"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if framework == "snntorch":
            from snntorch.export_nir import export_to_nir
            graph, dt = export_to_nir(net, torch.zeros(64), model_name="snntorch"), 1e-4
        else:
            from norse.torch import to_nir
            # norse 1.1.0's to_nir writes tau = dt / tau_mem_inv (dt times the time constant);
            # at dt = 1 it writes the time constant itself. Its cells step at dt = 1e-3 s.
            graph, dt = to_nir(net, torch.zeros(1, 64), dt=1.0), 1e-3
    nir.write(str(path), graph)
    settings = {"data": {"name": "digits"}, "encoding": {"kind": "bernoulli", "time_steps": time_steps}}
    checkpoint_path, imported = import_nir_checkpoint(path, workdir / framework, dt, settings, (1, 8, 8))
    network, report = export_checkpoint(checkpoint_path, resolve_hardware_config("loihi2"))
    test = dataset.test
    spikes = encode_split("bernoulli", test.inputs, time_steps, network.eval_seed)
    with torch.no_grad():
        source = forward(torch.from_numpy(spikes.reshape(len(spikes), time_steps, -1).astype(np.float32)))
    output = imported.graph.output_population.name
    runs = {REFERENCE: BackendRun(REFERENCE, {output: source.to(torch.uint8).numpy()}, output, float("nan")),
            "trained": trained_run(load_checkpoint(checkpoint_path), spikes), "emulator": emulator_run(network, spikes)}
    if with_lava:
        runs["lava_fixed"] = lava_run(network, spikes, "fixed_pt")
    fidelity = build_report(runs, test.labels, time_steps)
    print(fidelity.format_table())
    return {"framework": framework, "epochs": epochs, "dt": dt, "notes": list(imported.notes),
            "accuracy": fidelity.accuracy, "bit_exact": fidelity.bit_exact,
            "pairs": [{"reference": p.reference, "candidate": p.candidate, "prediction_changes": p.prediction_changes,
                       "output_train_match": p.populations[-1].spike_train_match,
                       "mismatched_spikes": sum(q.mismatched_spikes for q in p.populations)} for p in fidelity.pairs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="*", default=[], help="our checkpoints to export to NIR")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs of the snnTorch and norse MLPs")
    parser.add_argument("--lava", action="store_true", help="also run the imported networks on Lava fixed_pt")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    results = {"versions": package_versions(), "export": [], "import": []}
    with tempfile.TemporaryDirectory() as tmp:
        for checkpoint in args.checkpoints:
            row = export_round_trip(checkpoint, Path(tmp))
            results["export"].append(row)
            print(json.dumps(row, indent=1))
        for framework in ("snntorch", "norse"):
            results["import"].append(import_from_framework(framework, args.epochs, Path(tmp), args.lava))
    print(json.dumps(results["import"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
