"""The fidelity harness: compares the spike records of backends run on the same input spikes.

Backends (run by the caller, e.g. `stbp compare`, which composes the stages):
    trained      the float PyTorch model from the checkpoint (STBP's dynamics, float32)
    emulator     the artifact's integer network, `export.emulator` (bit-exact Loihi arithmetic)
    lava_fixed   the artifact on Lava's CPU simulator, bit-accurate `fixed_pt` models
    lava_float   the artifact's float parameters on Lava's `floating_pt` models
    reference    spikes recorded by the framework a network came from (e.g. snnTorch, for a
                 network imported from NIR), on the same input spikes; it may hold only
                 some populations (the output at least), and is compared on those

Each record holds the spikes of every LIF population of the network graph, by node name,
for one encoding of the test split, and, for a network read through its output potential
(netgraph.decision), that potential at every step in the trained network's units (the
integer backends' divided by the population's scale, so bit-exact records stay equal).
Emulator vs lava_fixed must match spike for spike (and potential for potential): a
mismatch is a defect of this toolchain or of Lava, never a tolerance. The other pairs
differ by quantization (trained vs emulator) or float rounding order (trained vs
lava_float) and are measured. This module only compares: it imports neither the trainer
nor Lava.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from netgraph import predict
from netgraph.errors import FidelityError

BACKENDS = ("trained", "emulator", "lava_fixed", "lava_float")
REFERENCE = "reference"
# Pairs compared population by population: (reference, candidate, must be identical)
PAIRS = (("trained", "emulator", False), ("emulator", "lava_fixed", True), ("trained", "lava_float", False),
         (REFERENCE, "trained", False), (REFERENCE, "emulator", False), (REFERENCE, "lava_fixed", False))


@dataclass
class BackendRun:
    """One backend's spikes on the compared samples: uint8 (samples, T, neurons) per LIF
    population, by node name in the graph's order; `output` names the output population,
    `readout` the decision rule, `output_potential` (samples, T, neurons) float64 the output's
    potential in trained units (potential readout only)."""

    name: str
    population_spikes: dict[str, np.ndarray]
    output: str
    samples_per_s: float
    readout: str = "spikes"
    output_potential: np.ndarray | None = None

    @property
    def predictions(self) -> np.ndarray:
        return predict(self.readout, self.population_spikes[self.output], self.output_potential)


@dataclass(frozen=True)
class PotentialComparison:
    """The output population's potentials of two backends (potential readout), trained units."""

    equal: float  # fraction of (sample, step, neuron) values identical
    max_abs_difference: float
    rms_difference: float
    reference_rms: float  # rms of the reference's potentials, the scale the differences compare with


@dataclass(frozen=True)
class PopulationComparison:
    population: str
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
    population: str
    time_step: int


@dataclass(frozen=True)
class PairComparison:
    reference: str
    candidate: str
    must_be_identical: bool
    prediction_changes: int
    populations: tuple[PopulationComparison, ...]
    first_divergence: tuple[FirstDivergence, ...]  # per diverging sample, earliest (step, population)
    divergence_by_population: dict[str, int]
    output_potential: PotentialComparison | None = None
    non_spiking: tuple[str, ...] = ()  # populations read through their potential (their spikes are all 0)

    @property
    def identical(self) -> bool:
        potentials_equal = self.output_potential is None or self.output_potential.equal == 1.0
        return potentials_equal and all(p.mismatched_spikes == 0 for p in self.populations)


@dataclass(frozen=True)
class ChangedPrediction:
    """A sample on which the backends do not all predict the same class."""

    sample: int
    label: int
    predictions: dict[str, int]  # by backend name


@dataclass(frozen=True)
class FidelityReport:
    samples: int
    time_steps: int
    accuracy: dict[str, float]
    samples_per_s: dict[str, float]
    pairs: tuple[PairComparison, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    changed_predictions: tuple[ChangedPrediction, ...] = ()  # every sample where the backends disagree

    def pair(self, reference: str, candidate: str) -> PairComparison | None:
        return next((p for p in self.pairs if (p.reference, p.candidate) == (reference, candidate)), None)

    @property
    def bit_exact(self) -> bool | None:
        """Emulator == Lava fixed_pt on every population and sample (None if Lava fixed_pt did not run)."""
        pair = self.pair("emulator", "lava_fixed")
        return None if pair is None else pair.identical

    def deltas(self) -> dict[str, float]:
        """Accuracy changes in percentage points along trained -> emulator -> Lava."""
        a = self.accuracy
        chain = [("trained", "emulator"), ("emulator", "lava_fixed"), ("trained", "lava_fixed"), ("trained", "lava_float"),
                 (REFERENCE, "trained"), (REFERENCE, "lava_fixed")]
        return {f"{x}->{y}": 100.0 * (a[y] - a[x]) for x, y in chain if x in a and y in a}

    def to_dict(self, max_divergences: int = 100) -> dict[str, Any]:
        """JSON-ready; each pair's first_divergence list is cut to `max_divergences` entries,
        with its full length in first_divergence_count and first_divergence_truncated set."""
        out = dataclasses.asdict(self)
        for pair, compared in zip(out["pairs"], self.pairs):
            pair["first_divergence"] = pair["first_divergence"][:max_divergences]
            pair["first_divergence_count"] = len(compared.first_divergence)
            pair["first_divergence_truncated"] = len(compared.first_divergence) > max_divergences
            pair["identical"] = compared.identical
            pair["meaning"] = pair_meaning(compared)
        out["deltas_pp"] = self.deltas()
        out["bit_exact_emulator_vs_lava_fixed"] = self.bit_exact
        return json_safe(out)

    def format_table(self) -> str:
        lines = [f"fidelity on {self.samples} samples, T = {self.time_steps}", "",
                 f"{'backend':<12}{'accuracy':>10}{'samples/s':>12}"]
        for name, acc in self.accuracy.items():
            rate = self.samples_per_s.get(name, math.nan)
            lines.append(f"{name:<12}{100 * acc:>9.2f}%" + (f"{rate:>12.1f}" if math.isfinite(rate) else f"{'-':>12}"))
        lines.append("(samples/s: trained and emulator count computation only; Lava counts its whole run, "
                     "building and starting the runtime included)")
        lines.append("")
        lines.append("accuracy deltas: " + ", ".join(f"{k} {v:+.2f} pp" for k, v in self.deltas().items()))
        lines.append("")
        width = max([12] + [len(p.population) + 2 for pair in self.pairs for p in pair.populations])
        lines.append(f"{'pair':<24}{'population':>{width}}{'trains equal':>14}{'count r':>9}{'rate ref':>10}"
                     f"{'rate cand':>10}{'mismatch':>10}{'samples':>9}")
        lines.append("(trains equal: share of (sample, neuron) spike trains identical over all steps; rates in "
                     "spikes/neuron/step; mismatch: differing spikes; samples: samples with any difference)")
        for pair in self.pairs:
            lines.extend(self._pair_lines(pair, width))
        if self.changed_predictions:
            lines.append("")
            lines.append(f"changed predictions ({len(self.changed_predictions)} samples): " + "; ".join(
                f"sample {c.sample} label {c.label}: " + ", ".join(f"{b} {p}" for b, p in c.predictions.items())
                for c in self.changed_predictions[:10]) + ("; ... (all in the JSON)" if len(self.changed_predictions) > 10 else ""))
        exact = self.bit_exact
        if exact is not None:
            lines.append("")
            lines.append("emulator == Lava fixed_pt: " + ("bit-exact on every population and sample" if exact else
                         "MISMATCH - a defect (the emulator and Lava's bit-accurate models must agree exactly)"))
        return "\n".join(lines)

    @staticmethod
    def _pair_lines(pair: PairComparison, width: int) -> list[str]:
        lines, label = [""], f"{pair.reference} vs {pair.candidate}"
        for p in pair.populations:
            if p.population in pair.non_spiking:
                lines.append(f"{label:<24}{p.population:>{width}}  never fires (potential readout): "
                             f"{p.mismatched_spikes} spikes")
            else:
                lines.append(f"{label:<24}{p.population:>{width}}{100 * p.spike_train_match:>13.2f}%"
                             f"{p.spike_count_correlation:>9.4f}{p.reference_rate:>10.4f}"
                             f"{p.candidate_rate:>10.4f}{p.mismatched_spikes:>10d}{p.samples_diverging:>9d}")
            label = ""
        if pair.output_potential is not None:
            lines.append(f"{'':<24}output potential: {potential_summary(pair.output_potential)}")
        lines.append(f"{'':<24}predictions changed: {pair.prediction_changes}; {divergence_summary(pair)}")
        lines.append(f"{'':<24}meaning: {pair_meaning(pair)}")
        return lines


def divergence_summary(pair: PairComparison) -> str:
    """Where the diverging samples first differ, in words."""
    if not pair.first_divergence:
        return "no sample differs in any spike"
    where = ", ".join(f"{n} {k}" for n, k in pair.divergence_by_population.items())
    first = pair.first_divergence[0]
    return (f"{len(pair.first_divergence)} samples differ somewhere; population where each first differs: {where} "
            f"(e.g. sample {first.sample}: {first.population}, step {first.time_step})")


def pair_meaning(pair: PairComparison) -> str:
    """One plain sentence on what this pair's match rates mean and what is expected of them."""
    ref, cand = pair.reference, pair.candidate
    if pair.must_be_identical:
        verdict = "they do: bit-exact." if pair.identical else "they do NOT: this is a defect, not a tolerance."
        return (f"{ref} and {cand} run the same integer arithmetic, so every spike must match (100%); " + verdict)
    if (ref, cand) == ("trained", "emulator"):
        why = "quantization rounds weights, thresholds and decays to Loihi's integers"
    elif cand == "lava_float":
        why = "Lava floating_pt runs the exported parameters in float with its own rounding order and dynamics"
    elif ref == REFERENCE:
        why = "the source framework and this toolchain are different implementations"
    else:
        why = "the two backends compute differently"
    if pair.identical:
        return f"{ref} and {cand} may differ because {why}, but here they agree on every spike (100%)."
    return (f"{ref} and {cand} are expected to differ because {why}; one changed spike propagates, so many "
            f"samples diverge (often in the first population) and that is expected: what matters is the "
            f"accuracy and the number of changed predictions ({pair.prediction_changes} here).")


def potential_summary(v) -> str:
    """One line on how a pair's output potentials agree (the table's and the HTML report's)."""
    return (f"{100 * v.equal:.2f}% of values equal, max |difference| {v.max_abs_difference:.4g}, rms "
            f"{v.rms_difference:.4g} (rms of the potential {v.reference_rms:.4g})")


def json_safe(value):
    """value with non-finite floats as None and numpy scalars as Python ones (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.array_equal(a, b) else math.nan
    return float(np.corrcoef(a, b)[0, 1])


def compare_pair(reference: BackendRun, candidate: BackendRun, must_be_identical: bool) -> PairComparison:
    """Population-by-population spike comparison of two backends on the same samples and the
    same populations, in the reference's order (the graph's)."""
    names = list(reference.population_spikes)
    if set(names) != set(candidate.population_spikes):
        raise FidelityError(f"{reference.name} recorded populations {sorted(names)} but {candidate.name} recorded "
                         f"{sorted(candidate.population_spikes)}: they ran different networks")
    compared = []
    samples = len(next(iter(reference.population_spikes.values())))
    first_step = np.full(samples, np.iinfo(np.int64).max)
    first_population = np.full(samples, -1)
    for index, name in enumerate(names):
        ref, cand = reference.population_spikes[name], candidate.population_spikes[name]
        if ref.shape != cand.shape:
            raise FidelityError(f"population {name}: {reference.name} recorded {ref.shape}, {candidate.name} {cand.shape}")
        differs = ref != cand  # (samples, T, neurons)
        trains_equal = ~differs.any(axis=1)
        step_differs = differs.any(axis=2)  # (samples, T)
        sample_differs = step_differs.any(axis=1)
        earliest = np.where(sample_differs, step_differs.argmax(axis=1), np.iinfo(np.int64).max)
        # Earliest step wins; at equal steps the upstream population (the cause) is kept.
        take = earliest < first_step
        first_step = np.where(take, earliest, first_step)
        first_population = np.where(take, index, first_population)
        compared.append(PopulationComparison(
            population=name, reference=reference.name, candidate=candidate.name,
            spike_train_match=float(trains_equal.mean()),
            spike_count_correlation=_correlation(ref.sum(axis=1), cand.sum(axis=1)),
            reference_rate=float(ref.mean()), candidate_rate=float(cand.mean()),
            mismatched_spikes=int(differs.sum()), samples_diverging=int(sample_differs.sum()),
        ))
    diverging = np.flatnonzero(first_population >= 0)
    divergences = tuple(FirstDivergence(int(s), names[first_population[s]], int(first_step[s])) for s in diverging)
    by_population = {name: 0 for name in names}
    for d in divergences:
        by_population[d.population] += 1
    return PairComparison(
        reference=reference.name, candidate=candidate.name, must_be_identical=must_be_identical,
        prediction_changes=int((reference.predictions != candidate.predictions).sum()),
        populations=tuple(compared), first_divergence=divergences,
        divergence_by_population={k: v for k, v in by_population.items() if v},
        output_potential=_compare_potentials(reference, candidate),
        non_spiking=(reference.output,) if reference.readout == "potential" else (),
    )


def _compare_potentials(reference: BackendRun, candidate: BackendRun) -> PotentialComparison | None:
    if reference.output_potential is None or candidate.output_potential is None:
        return None
    ref, cand = reference.output_potential, candidate.output_potential
    if ref.shape != cand.shape:
        raise FidelityError(f"output potential: {reference.name} recorded {ref.shape}, {candidate.name} {cand.shape}")
    difference = cand.astype(np.float64) - ref.astype(np.float64)
    return PotentialComparison(equal=float((difference == 0).mean()),
                               max_abs_difference=float(np.abs(difference).max(initial=0.0)),
                               rms_difference=float(np.sqrt(np.mean(difference ** 2))),
                               reference_rms=float(np.sqrt(np.mean(ref.astype(np.float64) ** 2))))


def _recorded_like(candidate: BackendRun, reference: BackendRun) -> BackendRun:
    """The candidate's record cut to the populations a framework reference recorded."""
    if reference.name != REFERENCE:
        return candidate
    unknown = sorted(set(reference.population_spikes) - set(candidate.population_spikes))
    if unknown:
        raise FidelityError(f"the reference recorded populations {unknown} that {candidate.name} does not have "
                         f"(its populations: {sorted(candidate.population_spikes)})")
    kept = {name: candidate.population_spikes[name] for name in reference.population_spikes}
    return dataclasses.replace(candidate, population_spikes=kept)


def build_report(runs: dict[str, BackendRun], labels: np.ndarray, time_steps: int,
                 metadata: dict[str, Any] | None = None) -> FidelityReport:
    accuracy = {name: float((run.predictions == labels).mean()) for name, run in runs.items()}
    pairs = tuple(compare_pair(runs[a], _recorded_like(runs[b], runs[a]), exact)
                  for a, b, exact in PAIRS if a in runs and b in runs)
    return FidelityReport(len(labels), time_steps, accuracy, {n: r.samples_per_s for n, r in runs.items()},
                          pairs, metadata or {}, changed_predictions(runs, labels))


def changed_predictions(runs: dict[str, BackendRun], labels: np.ndarray) -> tuple[ChangedPrediction, ...]:
    """Every sample on which the backends do not all predict the same class, in sample order."""
    predictions = {name: np.asarray(run.predictions) for name, run in runs.items()}
    stacked = np.stack(list(predictions.values()))  # (backends, samples)
    disagree = np.flatnonzero((stacked != stacked[:1]).any(axis=0))
    return tuple(ChangedPrediction(int(s), int(labels[s]), {n: int(p[s]) for n, p in predictions.items()})
                 for s in disagree)


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
            bad = [f"{p.population}: {p.mismatched_spikes} spikes in {p.samples_diverging} samples"
                   for p in pair.populations if p.mismatched_spikes]
            if pair.output_potential is not None and pair.output_potential.equal < 1.0:
                bad.append(f"output potential: {100 * (1 - pair.output_potential.equal):.2f}% of values")
            return "emulator and Lava fixed_pt differ (" + "; ".join(bad) + ")"
    if max_accuracy_drop is not None:
        deployed = deployed_backend(report.accuracy)
        if deployed is None:
            return "--max-accuracy-drop: no deployed backend (emulator, lava_fixed or lava_float) ran"
        drop = 100.0 * (report.accuracy["trained"] - report.accuracy[deployed])
        if drop > max_accuracy_drop:
            return (f"deployed accuracy dropped {drop:.2f} pp (trained {100 * report.accuracy['trained']:.2f}% -> "
                    f"{deployed} {100 * report.accuracy[deployed]:.2f}% on {report.samples} samples, where one "
                    f"prediction is {100 / report.samples:.2f} pp), more than --max-accuracy-drop {max_accuracy_drop:g}")
    return None
