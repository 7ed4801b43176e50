"""What quantization did to each population of the network, as a table and as JSON."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SynapseReport:
    """One synapse feeding a population. Errors are in the trained network's potential units."""

    name: str
    source: str
    sign_mode: str
    weight_levels_used: int
    weights_clipped: int
    weight_max_abs_error: float
    weight_rms_error: float
    delay: int  # steps a Lava DelayDense adds to align this path (export.timing)
    stored_weights: int  # weights a chip keeps: a conv's kernel (out*in*kh*kw, once per core), a dense matrix
    connections: int  # (input, neuron) pairs linked: what the synapse stores unrolled (= stored_weights for dense)


@dataclass(frozen=True)
class PopulationReport:
    """One LIF population and the synapses feeding it (which share its scale)."""

    name: str
    synapses: tuple[SynapseReport, ...]
    scale: float
    bias_exp: int
    bias_clipped: int
    bias_max_abs_error: float
    vth: int
    threshold_error: float
    dv: int
    tau_effective: float
    tau_error: float
    du: int
    tau_current_effective: float
    max_activation: int
    activation_exceeds_hw_bits: bool
    current_may_wrap: bool
    voltage_may_saturate: bool
    never_fire: int
    always_fire: int
    neurons: int
    # Resources, estimated (export.quantize.cores_needed): the shared-weight mapping a chip
    # would use, each conv kernel kept once per core; and, for comparison, every conv
    # unrolled into one weight per connection (the conv as per-neuron synapses; Lava's
    # conv_mapping="dense" simulates that, holding even the zeros in its dense matrix).
    cores_needed: int
    synaptic_memory_bits: int  # over all cores_needed cores, kernels counted once per core
    cores_needed_unrolled: int
    fan_in_exceeds_core: bool
    # False for a non-spiking population read through its potential (its vth is the largest,
    # and the potential provably stays below it: export.quantize).
    spiking: bool = True
    # Synapse stages between the network input and this population on the chip (each adds a
    # step of latency on Lava, export.timing): 1 for the first layer.
    depth: int = 0

    @property
    def weights_clipped(self) -> int:
        return sum(s.weights_clipped for s in self.synapses)

    @property
    def weight_max_abs_error(self) -> float:
        return max((s.weight_max_abs_error for s in self.synapses), default=0.0)


@dataclass(frozen=True)
class MeasuredLayerError:
    """Quantization error of one population measured on data: the trained float network vs
    the integer network (emulator) on the same input spikes."""

    population: str
    depth: int
    spike_train_match: float  # fraction of (sample, neuron) spike trains identical over all T
    spike_count_correlation: float  # Pearson r of per-(sample, neuron) spike counts
    trained_rate: float  # mean spikes per neuron per step
    deployed_rate: float


@dataclass(frozen=True)
class QuantizationReport:
    hardware: str
    populations: tuple[PopulationReport, ...]
    warnings: tuple[str, ...] = ()
    # Error growth with depth, measured at export on `measured_samples` test samples (none: not measured).
    measured: tuple[MeasuredLayerError, ...] = ()
    measured_samples: int = 0
    # Potential readout: rms of (deployed - trained) output potential over the rms of the trained one.
    measured_output_potential_error: float | None = None

    def population(self, name: str) -> PopulationReport:
        return next(p for p in self.populations if p.name == name)

    @property
    def total_cores(self) -> int:
        return sum(p.cores_needed for p in self.populations)

    @property
    def total_neurons(self) -> int:
        return sum(p.neurons for p in self.populations)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format_table(self) -> str:
        width = max([12] + [len(p.name) + 2 for p in self.populations])
        header = (f"{'population':<{width}}{'depth':>5} {'sign':<7}{'scale':>9}{'w clip':>7}{'w maxerr':>10}"
                  f"{'b exp':>6}{'b clip':>7}{'b maxerr':>10}{'vth':>7}{'vth err':>9}{'dv':>6}{'tau eff':>9}"
                  f"{'|a| max':>9}{'never':>7}{'always':>7}{'syn KiB':>9}{'cores':>6}{'unrl':>5}  flags")
        lines = [f"quantization report ({self.hardware})", header]
        for r in self.populations:
            flags = [name for name, on in (("act>16bit", r.activation_exceeds_hw_bits), ("u-may-wrap", r.current_may_wrap),
                                           ("v-may-saturate", r.voltage_may_saturate)) if on]
            if r.tau_current_effective > 0:
                flags.append(f"current-based du={r.du}")
            if not r.spiking:
                flags.append("non-spiking (potential readout, cannot reach vth)")
            modes = sorted({s.sign_mode for s in r.synapses})
            signs = modes[0][:6] if len(modes) == 1 else "+".join(m[:3] for m in modes)
            lines.append(
                f"{r.name:<{width}}{r.depth:>5d} {signs:<7}{r.scale:>9.2f}{r.weights_clipped:>7d}"
                f"{r.weight_max_abs_error:>10.2e}{r.bias_exp:>6d}{r.bias_clipped:>7d}{r.bias_max_abs_error:>10.2e}"
                f"{r.vth:>7d}{r.threshold_error:>9.1e}"
                f"{r.dv:>6d}{r.tau_effective:>9.5f}{r.max_activation:>9d}{r.never_fire:>7d}{r.always_fire:>7d}"
                f"{r.synaptic_memory_bits / 8192:>9.1f}{r.cores_needed:>6d}{r.cores_needed_unrolled:>5d}  "
                + (", ".join(flags) or "-")
            )
            if len(r.synapses) > 1 or any(s.delay for s in r.synapses):
                for s in r.synapses:
                    lines.append(f"  <- {s.name} (from {s.source}): {s.sign_mode}, {s.weights_clipped} clipped, "
                                 f"max error {s.weight_max_abs_error:.2e}"
                                 + (f", delayed {s.delay} step(s) on Lava" if s.delay else ""))
        lines.append(f"total: {len(self.populations)} populations, {self.total_neurons} neurons, "
                     f"{sum(p.synaptic_memory_bits for p in self.populations) / 8192:.1f} KiB of synaptic memory, "
                     f"about {self.total_cores} cores")
        lines.append("depth: synapse stages from the input (one step of latency each on Lava); syn KiB, cores: "
                     "synaptic memory and cores with each conv kernel stored once per core (shared weights); "
                     "unrl: cores with convs unrolled into per-neuron synapses (estimates, see hw config)")
        lines += self._measured_lines()
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def _measured_lines(self) -> list[str]:
        if not self.measured:
            return []
        lines = [f"error growth with depth, trained float vs integer (emulator) on {self.measured_samples} test "
                 "samples:",
                 f"  {'depth':>5}  {'population':<20}{'trains equal':>13}{'count r':>9}{'rate float':>11}"
                 f"{'rate int':>10}"]
        for m in sorted(self.measured, key=lambda m: m.depth):
            lines.append(f"  {m.depth:>5}  {m.population:<20}{100 * m.spike_train_match:>12.2f}%"
                         f"{m.spike_count_correlation:>9.4f}{m.trained_rate:>11.4f}{m.deployed_rate:>10.4f}")
        if self.measured_output_potential_error is not None:
            error = 100 * self.measured_output_potential_error
            lines.append(f"  output potential (read out): rms difference {error:.2f}% of its rms")
        lines.append("  (a spike that flips early changes every later step of its train and the layers it feeds, so "
                     "train matches fall with depth while counts stay correlated; the fidelity harness measures the "
                     "accuracy)")
        return lines
