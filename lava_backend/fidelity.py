"""The fidelity harness: the trained model, the emulator and Lava on the same input spikes.

Backends:
    trained      the float PyTorch model from the checkpoint (STBP's dynamics, float32)
    emulator     the artifact's integer network, `export.emulator` (bit-exact Loihi arithmetic)
    lava_fixed   the artifact on Lava's CPU simulator, bit-accurate `fixed_pt` models
    lava_float   the artifact's float parameters on Lava's `floating_pt` models

All four are fed one encoding of the test split (the trainer's evaluation encoding with the
artifact's seed). Emulator vs lava_fixed must match spike for spike: a mismatch is a defect
of this toolchain or of Lava, never a tolerance. The other pairs differ by quantization
(trained vs emulator) or float rounding order (trained vs lava_float) and are measured.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Pairs compared layer by layer: (reference, candidate, must be identical)
PAIRS = (("trained", "emulator", False), ("emulator", "lava_fixed", True), ("trained", "lava_float", False))


@dataclass
class BackendRun:
    """One backend's spikes on the compared samples: uint8 (samples, T, neurons) per layer."""

    name: str
    layer_spikes: list[np.ndarray]
    samples_per_s: float

    @property
    def predictions(self) -> np.ndarray:
        from export.emulator import predict_classes

        return predict_classes(self.layer_spikes[-1])


@dataclass(frozen=True)
class LayerComparison:
    layer: int
    reference: str
    candidate: str
    spike_train_match: float  # fraction of (sample, neuron) trains identical over all T
    spike_count_correlation: float  # Pearson r of per-(sample, neuron) spike counts; nan if constant
    reference_rate: float  # mean spikes per neuron per step
    candidate_rate: float
    mismatched_spikes: int
    samples_diverging: int


@dataclass(frozen=True)
class FirstDivergence:
    sample: int
    layer: int
    time_step: int


@dataclass(frozen=True)
class PairComparison:
    reference: str
    candidate: str
    must_be_identical: bool
    prediction_changes: int
    layers: tuple[LayerComparison, ...]
    first_divergence: tuple[FirstDivergence, ...]  # per diverging sample, earliest (step, layer)
    divergence_by_layer: dict[int, int]

    @property
    def identical(self) -> bool:
        return all(layer.mismatched_spikes == 0 for layer in self.layers)


@dataclass(frozen=True)
class FidelityReport:
    samples: int
    time_steps: int
    accuracy: dict[str, float]
    samples_per_s: dict[str, float]
    pairs: tuple[PairComparison, ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    def pair(self, reference: str, candidate: str) -> PairComparison | None:
        return next((p for p in self.pairs if (p.reference, p.candidate) == (reference, candidate)), None)

    @property
    def bit_exact(self) -> bool | None:
        """Emulator == Lava fixed_pt on every layer and sample (None if Lava fixed_pt did not run)."""
        pair = self.pair("emulator", "lava_fixed")
        return None if pair is None else pair.identical

    def deltas(self) -> dict[str, float]:
        """Accuracy changes in percentage points along trained -> emulator -> Lava."""
        a = self.accuracy
        chain = [("trained", "emulator"), ("emulator", "lava_fixed"), ("trained", "lava_fixed"), ("trained", "lava_float")]
        return {f"{x}->{y}": 100.0 * (a[y] - a[x]) for x, y in chain if x in a and y in a}

    def to_dict(self, max_divergences: int = 100) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for pair in out["pairs"]:
            pair["first_divergence"] = pair["first_divergence"][:max_divergences]
            pair["divergence_by_layer"] = {str(k): v for k, v in pair["divergence_by_layer"].items()}
            pair["identical"] = all(layer["mismatched_spikes"] == 0 for layer in pair["layers"])
        out["deltas_pp"] = self.deltas()
        out["bit_exact_emulator_vs_lava_fixed"] = self.bit_exact
        return _json_safe(out)

    def format_table(self) -> str:
        lines = [f"fidelity on {self.samples} samples, T = {self.time_steps}", "",
                 f"{'backend':<12}{'accuracy':>10}{'samples/s':>12}"]
        for name, acc in self.accuracy.items():
            lines.append(f"{name:<12}{100 * acc:>9.2f}%{self.samples_per_s.get(name, math.nan):>12.1f}")
        lines.append("(samples/s: trained and emulator count computation only; Lava counts its whole run, "
                     "building and starting the runtime included)")
        lines.append("")
        lines.append("accuracy deltas: " + ", ".join(f"{k} {v:+.2f} pp" for k, v in self.deltas().items()))
        lines.append("")
        lines.append(f"{'pair':<24}{'layer':>6}{'train match':>13}{'count r':>9}{'rate ref':>10}{'rate cand':>10}"
                     f"{'mismatch':>10}{'samples':>9}")
        for pair in self.pairs:
            label = f"{pair.reference} vs {pair.candidate}"
            for layer in pair.layers:
                lines.append(f"{label:<24}{layer.layer:>6}{100 * layer.spike_train_match:>12.2f}%"
                             f"{layer.spike_count_correlation:>9.4f}{layer.reference_rate:>10.4f}"
                             f"{layer.candidate_rate:>10.4f}{layer.mismatched_spikes:>10d}{layer.samples_diverging:>9d}")
                label = ""
            where = ", ".join(f"layer {k}: {v}" for k, v in sorted(pair.divergence_by_layer.items())) or "none"
            lines.append(f"{'':<24}predictions changed: {pair.prediction_changes}; first divergence at {where}")
            if pair.first_divergence:
                first = pair.first_divergence[0]
                lines.append(f"{'':<24}e.g. sample {first.sample}: first differs at layer {first.layer}, step {first.time_step}")
        exact = self.bit_exact
        if exact is not None:
            lines.append("")
            lines.append("emulator == Lava fixed_pt: " + ("bit-exact on every layer and sample" if exact else
                         "MISMATCH - a defect (the emulator and Lava's bit-accurate models must agree exactly)"))
        return "\n".join(lines)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.array_equal(a, b) else math.nan
    return float(np.corrcoef(a, b)[0, 1])


def compare_pair(reference: BackendRun, candidate: BackendRun, must_be_identical: bool) -> PairComparison:
    """Layer-by-layer spike comparison of two backends on the same samples."""
    layers = []
    samples = len(reference.layer_spikes[0])
    first_step = np.full(samples, np.iinfo(np.int64).max)
    first_layer = np.full(samples, -1)
    for index, (ref, cand) in enumerate(zip(reference.layer_spikes, candidate.layer_spikes)):
        differs = ref != cand  # (samples, T, neurons)
        trains_equal = ~differs.any(axis=1)
        step_differs = differs.any(axis=2)  # (samples, T)
        sample_differs = step_differs.any(axis=1)
        earliest = np.where(sample_differs, step_differs.argmax(axis=1), np.iinfo(np.int64).max)
        # Earliest step wins; at equal steps the lower layer (the cause) is kept.
        take = earliest < first_step
        first_step = np.where(take, earliest, first_step)
        first_layer = np.where(take, index, first_layer)
        layers.append(LayerComparison(
            layer=index, reference=reference.name, candidate=candidate.name,
            spike_train_match=float(trains_equal.mean()),
            spike_count_correlation=_correlation(ref.sum(axis=1), cand.sum(axis=1)),
            reference_rate=float(ref.mean()), candidate_rate=float(cand.mean()),
            mismatched_spikes=int(differs.sum()), samples_diverging=int(sample_differs.sum()),
        ))
    diverging = np.flatnonzero(first_layer >= 0)
    divergences = tuple(FirstDivergence(int(s), int(first_layer[s]), int(first_step[s])) for s in diverging)
    by_layer: dict[int, int] = {}
    for d in divergences:
        by_layer[d.layer] = by_layer.get(d.layer, 0) + 1
    return PairComparison(
        reference=reference.name, candidate=candidate.name, must_be_identical=must_be_identical,
        prediction_changes=int((reference.predictions != candidate.predictions).sum()),
        layers=tuple(layers), first_divergence=divergences, divergence_by_layer=by_layer,
    )


def build_report(runs: dict[str, BackendRun], labels: np.ndarray, time_steps: int,
                 metadata: dict[str, Any] | None = None) -> FidelityReport:
    accuracy = {name: float((run.predictions == labels).mean()) for name, run in runs.items()}
    pairs = tuple(compare_pair(runs[a], runs[b], exact) for a, b, exact in PAIRS if a in runs and b in runs)
    return FidelityReport(len(labels), time_steps, accuracy, {n: r.samples_per_s for n, r in runs.items()},
                          pairs, metadata or {})


def deployed_backend(names) -> str | None:
    """The backend that stands for 'deployed': Lava fixed_pt, else the emulator, else Lava floating_pt."""
    return next((name for name in ("lava_fixed", "emulator", "lava_float") if name in names), None)


def check_gates(report: FidelityReport, max_accuracy_drop: float | None, require_bit_exact: bool) -> str | None:
    """The one-line reason a pipeline must fail, or None when every requested gate holds."""
    if require_bit_exact:
        pair = report.pair("emulator", "lava_fixed")
        if pair is None:
            missing = [name for name in ("emulator", "lava_fixed") if name not in report.accuracy]
            return f"--require-bit-exact: {' and '.join(missing)} did not run, so bit-exactness is unproven"
        if not pair.identical:
            bad = [f"layer {l.layer}: {l.mismatched_spikes} spikes in {l.samples_diverging} samples"
                   for l in pair.layers if l.mismatched_spikes]
            return "emulator and Lava fixed_pt differ (" + "; ".join(bad) + ")"
    if max_accuracy_drop is not None:
        deployed = deployed_backend(report.accuracy)
        if deployed is None:
            return "--max-accuracy-drop: no deployed backend (emulator, lava_fixed or lava_float) ran"
        drop = 100.0 * (report.accuracy["trained"] - report.accuracy[deployed])
        if drop > max_accuracy_drop:
            return (f"deployed accuracy dropped {drop:.2f} pp (trained {100 * report.accuracy['trained']:.2f}% -> "
                    f"{deployed} {100 * report.accuracy[deployed]:.2f}%), more than --max-accuracy-drop {max_accuracy_drop:g}")
    return None


def plot_report(report: FidelityReport, runs: dict[str, BackendRun], path, sample: int | None = None) -> int | None:
    """Saves a PNG: spike rasters of the trained and the deployed network for one sample (the
    first whose output differs, else sample 0) and the per-layer mean rates of every backend.
    Returns the sample shown, or None (nothing written) when no deployed backend ran."""
    if deployed_backend(runs) is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainer.provenance import atomic_write

    deployed = deployed_backend(runs)
    if sample is None:
        changed = np.flatnonzero(runs["trained"].predictions != runs[deployed].predictions)
        sample = int(changed[0]) if len(changed) else 0
    layers = len(runs["trained"].layer_spikes)
    fig, axes = plt.subplots(layers + 1, 2, figsize=(12, 2.6 * (layers + 1)), squeeze=False)
    for column, name in enumerate(("trained", deployed)):
        for index, spikes in enumerate(runs[name].layer_spikes):
            ax = axes[index, column]
            t, n = np.nonzero(spikes[sample])
            ax.scatter(t, n, s=4, marker="|", color="black" if column == 0 else "tab:blue")
            other = runs[deployed if column == 0 else "trained"].layer_spikes[index][sample]
            dt, dn = np.nonzero(spikes[sample] != other)
            ax.scatter(dt, dn, s=14, facecolors="none", edgecolors="red", linewidths=0.6)
            ax.set_xlim(-0.5, spikes.shape[1] - 0.5)
            ax.set_ylabel(f"layer {index}\nneuron")
            ax.set_title(f"{name}, sample {sample}, layer {index} (red: differs)", fontsize=9)
        axes[layers - 1, column].set_xlabel("time step")
    rate_ax = axes[layers, 0]
    width = 0.8 / max(1, len(runs))
    for k, (name, run) in enumerate(runs.items()):
        rates = [float(s.mean()) for s in run.layer_spikes]
        rate_ax.bar(np.arange(layers) + k * width, rates, width, label=name)
    rate_ax.set_xticks(np.arange(layers) + 0.4 - width / 2, [f"layer {i}" for i in range(layers)])
    rate_ax.set_ylabel("mean spikes / neuron / step")
    rate_ax.legend(fontsize=8)
    acc_ax = axes[layers, 1]
    names = list(report.accuracy)
    acc_ax.bar(names, [100 * report.accuracy[n] for n in names], color="tab:gray")
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_ylim(max(0, min(100 * a for a in report.accuracy.values()) - 5), 100)
    fig.tight_layout()
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
    return sample


# --------------------------------------------------------------------------- running the backends


class FidelityError(ValueError):
    """The checkpoint, artifact and data cannot be compared (e.g. they do not belong together)."""


def trained_run(checkpoint, spikes: np.ndarray, batch_size: int = 256) -> BackendRun:
    """The float PyTorch model on CPU: spikes (samples, T, *input_shape) uint8."""
    import time

    import torch

    from trainer.checkpoint import build_model

    model = build_model(checkpoint).cpu().eval()
    started = time.perf_counter()
    chunks: list[list[np.ndarray]] = []
    with torch.no_grad():
        for start in range(0, len(spikes), batch_size):
            out = model(torch.from_numpy(spikes[start:start + batch_size]).float())
            chunks.append([s.to(torch.uint8).numpy() for s in out.layer_spikes])
    wall = time.perf_counter() - started
    layers = [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]
    return BackendRun("trained", layers, len(spikes) / wall if wall > 0 else math.inf)


def run_fidelity(checkpoint_path, artifact_path, data_path: str | None = None, limit: int | None = None,
                 backends: tuple[str, ...] = ("trained", "emulator", "lava_fixed", "lava_float"),
                 shards: int | None = None, progress: bool = True) -> tuple[FidelityReport, dict[str, BackendRun]]:
    """Runs the chosen backends on the checkpoint's test split, encoded once, and compares them."""
    import hashlib
    import time
    from pathlib import Path

    from export.artifact import load_artifact
    from export.emulator import emulate
    from trainer.checkpoint import load_checkpoint
    from trainer.data import load_dataset
    from trainer.train import encode_split

    network = load_artifact(artifact_path)
    checkpoint = load_checkpoint(checkpoint_path)
    expected_hash = network.metadata.get("source_checkpoint_sha256")
    actual_hash = hashlib.sha256(Path(checkpoint_path).read_bytes()).hexdigest()
    if expected_hash and expected_hash != actual_hash:
        raise FidelityError(f"{artifact_path} was exported from a different checkpoint than {checkpoint_path} "
                            f"(sha256 {expected_hash[:12]}... vs {actual_hash[:12]}...); export it again")
    unknown = set(backends) - {"trained", "emulator", "lava_fixed", "lava_float"}
    if unknown or "trained" not in backends:
        raise FidelityError(f"backends must include 'trained' and come from trained, emulator, lava_fixed, "
                            f"lava_float; got {', '.join(backends)}")
    data = checkpoint.config.data
    dataset = load_dataset(data.name, data_path or data.path, network.time_steps)
    split = dataset.test.head(limit if limit is not None else data.test_limit)
    if len(split.labels) == 0:
        raise FidelityError("no test samples to compare (check --limit and the data set)")
    spikes = encode_split(network.encoding, split, network.time_steps, network.eval_seed)

    runs: dict[str, BackendRun] = {"trained": trained_run(checkpoint, spikes)}
    if "emulator" in backends:
        started = time.perf_counter()
        emulated = emulate(network, spikes, progress=progress)
        wall = time.perf_counter() - started
        runs["emulator"] = BackendRun("emulator", emulated.layer_spikes, len(spikes) / wall if wall > 0 else math.inf)
    for name, mode in (("lava_fixed", "fixed_pt"), ("lava_float", "floating_pt")):
        if name in backends:
            from lava_backend.runner import run_network

            result = run_network(network, spikes, mode=mode, record="all", shards=shards, progress=progress)
            runs[name] = BackendRun(name, [result.layer_spikes[i] for i in range(len(network.layers))],
                                    result.samples_per_s)
    metadata = {
        "checkpoint": str(checkpoint_path), "artifact": str(artifact_path), "dataset": data.name,
        "data_path": data_path or data.path, "eval_seed": network.eval_seed, "hw_config": network.hardware.name,
        "versions": _versions(),
    }
    return build_report(runs, split.labels, network.time_steps, metadata), runs


def _versions() -> dict[str, str]:
    from trainer.provenance import package_versions

    return package_versions()
