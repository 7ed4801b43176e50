"""What quantization did to each population of the network, as a table and as JSON."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from netgraph import Synapse


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


# What each column of the table measures (units: the trained network's potential unless named).
COLUMN_LEGEND = {
    "population": "the LIF population (the synapses feeding it share its scale)",
    "depth": "synapse stages from the input; each adds one step of latency on Lava",
    "sign": "weight sign mode of its synapses (mixed, excitatory, inhibitory; 'exc+mix' when they differ)",
    "scale": "s, integer weight units per potential unit (weights, bias and threshold share it)",
    "w clip": "weights clipped to the sign mode's integer range (0 unless --allow-clip)",
    "w maxerr": "largest |w_int / s - w| over its weights",
    "b exp": "bias exponent: the chip adds bias_mant << b exp to v each step",
    "b clip": "bias values clipped to the mantissa's range",
    "b maxerr": "largest bias rounding error",
    "vth": "integer threshold mantissa: the neuron spikes when v > vth << vth_shift",
    "vth err": "deployed firing level minus the trained v_threshold",
    "dv": "integer voltage decay (12 bits): v keeps (4096 - dv) / 4096 of itself each step",
    "tau eff": "the fraction of v kept per step that dv gives (compare the trained tau)",
    "|a| max": "largest |synaptic input| one step can bring, in integer weight units (before the << 6 shift)",
    "never": "neurons that provably cannot fire within the T steps of a sample, whatever the input",
    "always": "neurons that fire on every step, whatever the input",
    "syn KiB": "synaptic memory at the deployed weight width, each conv kernel stored once per core",
    "cores": "cores the population needs (neurons and synaptic memory per core; shared-weight convs)",
    "unrl": "cores if every conv were unrolled into per-neuron synapses (Lava's conv_mapping='dense')",
}

# Each flag: (what it measures, what it means on a chip, what it means in Lava 0.10.0's CPU simulator).
FLAG_LEGEND = {
    "act>16bit": (
        "|a| max exceeds the signed range of the hw config's activation_bits (16: 15 bits + sign)",
        "the chip's synaptic input path is that wide: a larger one-step sum does not fit, and what the chip "
        "then does is not modelled here, so a chip run may differ from the emulator",
        "no effect: Dense sends int32 and the LIF's int16 a_in type is a label (PyInPortVectorDense.recv adds "
        "the int32 sum to int16 zeros, which numpy widens), so Lava matches the emulator"),
    "u-may-wrap": (
        "|a| max << 6 can reach the 24-bit current's limit 2^23",
        "the current wraps modulo 2^24 (a large positive input turns negative)",
        "the same wrap (PyLifModelBitAcc), reproduced bit-exactly by the emulator; the trained network differs"),
    "v-may-saturate": (
        "input plus bias can reach the 24-bit potential's clip +-(2^23 - 1)",
        "v is clipped there", "the same clip, reproduced by the emulator; the trained network differs"),
    "current-based du=N": (
        "the population's current decays (trained tau_current > 0) with integer decay du",
        "a current-based LIF, as trained", "the same"),
    "non-spiking": (
        "read through its potential: the largest vth, provably never reached within T steps",
        "a LIF that never fires; its v is the readout", "the same"),
    "never-fires N": (
        "N neurons cannot fire within T steps even when every excitatory input spikes",
        "dead compartments: they occupy the core but never send a spike", "the same (pruning candidates)"),
    "always-fires N": (
        "N neurons fire on every step even when every inhibitory input spikes",
        "they send a spike every step and carry no information", "the same"),
}


@dataclass(frozen=True)
class ResourceTotals:
    """The whole network's resources (estimates, export.quantize.cores_needed) and whether they
    fit one chip of the hardware config. A fit check warns, never refuses: the emulator and
    Lava's CPU simulator have no core limit, and a chip's mapper may pack cores differently."""

    neurons: int
    weight_entries: int  # weights stored: dense matrices and conv kernels (once)
    nonzero_weights: int  # of those, nonzero after quantization
    connections: int  # (input, neuron) pairs linked: convs unrolled
    synaptic_memory_bytes: int  # at the deployed weight width, conv kernels once per core
    weight_bits: int
    cores: int
    cores_unrolled: int
    chip: str
    cores_per_chip: int
    neurons_per_chip: int
    synaptic_memory_bytes_per_chip: int

    def overflows(self) -> list[str]:
        """One phrase per resource the network needs more of than one chip has."""
        needs = (("cores", self.cores, self.cores_per_chip), ("neurons", self.neurons, self.neurons_per_chip),
                 ("synaptic memory bytes", self.synaptic_memory_bytes, self.synaptic_memory_bytes_per_chip))
        return [f"{what} {need} > {have}" for what, need, have in needs if need > have]

    @property
    def chips_needed(self) -> int:
        return max(1, -(-self.cores // self.cores_per_chip))

    def fit_line(self) -> str:
        where = (f"one {self.chip} chip ({self.cores_per_chip} cores, {self.neurons_per_chip} neurons, "
                 f"{self.synaptic_memory_bytes_per_chip / 1024:.0f} KiB synaptic memory)")
        over = self.overflows()
        if not over:
            return f"chip fit: fits {where}, using {self.cores} of its {self.cores_per_chip} cores"
        return (f"chip fit: does NOT fit {where}: {', '.join(over)}; about {self.chips_needed} chips "
                "(a warning: the emulator and Lava's CPU simulator still run it)")


def resource_totals(populations, graph, hw) -> ResourceTotals:
    """Totals over `populations` (PopulationReport), nonzero weights counted in the deployed
    `graph`, the chip from `hw` (export.hw_config.HardwareConfig)."""
    synapses = [s for p in populations for s in p.synapses]
    deployed = [node for node in graph.nodes if isinstance(node, Synapse)]
    return ResourceTotals(
        neurons=sum(p.neurons for p in populations),
        weight_entries=sum(s.stored_weights for s in synapses),
        nonzero_weights=sum(int(np.count_nonzero(node.quantized.weight)) for node in deployed),
        connections=sum(s.connections for s in synapses),
        synaptic_memory_bytes=-(-sum(p.synaptic_memory_bits for p in populations) // 8),
        weight_bits=hw.num_weight_bits_max,
        cores=sum(p.cores_needed for p in populations),
        cores_unrolled=sum(p.cores_needed_unrolled for p in populations),
        chip=hw.name, cores_per_chip=hw.cores_per_chip,
        neurons_per_chip=hw.cores_per_chip * hw.neurons_per_core,
        synaptic_memory_bytes_per_chip=hw.cores_per_chip * hw.synaptic_memory_bits_per_core // 8)


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
    # Totals and the chip fit check (export.report.resource_totals), filled in by the export pipeline.
    resources: ResourceTotals | None = None

    def population(self, name: str) -> PopulationReport:
        return next(p for p in self.populations if p.name == name)

    @property
    def total_cores(self) -> int:
        return sum(p.cores_needed for p in self.populations)

    @property
    def total_neurons(self) -> int:
        return sum(p.neurons for p in self.populations)

    def to_dict(self) -> dict[str, Any]:
        legend = {"columns": COLUMN_LEGEND,
                  "flags": {flag: {"measures": measures, "on_chip": chip, "in_lava_simulator": lava}
                            for flag, (measures, chip, lava) in FLAG_LEGEND.items()}}
        resources = None if self.resources is None else {**dataclasses.asdict(self.resources),
                                                         "fits_one_chip": not self.resources.overflows(),
                                                         "chips_needed": self.resources.chips_needed,
                                                         "fit": self.resources.fit_line()}
        return {**dataclasses.asdict(self), "resources": resources, "legend": legend}

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
            flags += [f"{name} {count}" for name, count in (("never-fires", r.never_fire),
                                                            ("always-fires", r.always_fire)) if count]
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
        lines += self._total_lines()
        lines += self._legend_lines()
        lines += self._measured_lines()
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def _total_lines(self) -> list[str]:
        t = self.resources
        if t is None:  # a report straight from export.quantize.quantize_graph: no chip fit
            return [f"total: {len(self.populations)} populations, {self.total_neurons} neurons, "
                    f"{sum(p.synaptic_memory_bits for p in self.populations) / 8192:.1f} KiB of synaptic memory, "
                    f"about {self.total_cores} cores"]
        return [f"total: {len(self.populations)} populations, {t.neurons} neurons; synapses: {t.weight_entries} "
                f"weights stored ({t.nonzero_weights} nonzero), {t.connections} connections unrolled; synaptic "
                f"memory {t.synaptic_memory_bytes} bytes ({t.synaptic_memory_bytes / 1024:.1f} KiB at "
                f"{t.weight_bits}-bit weights); about {t.cores} cores ({t.cores_unrolled} unrolled)",
                t.fit_line()]

    @staticmethod
    def _legend_lines() -> list[str]:
        lines = ["legend (all errors in the trained network's potential units):"]
        lines += [f"  {column}: {meaning}" for column, meaning in COLUMN_LEGEND.items()]
        lines.append("flags: what it measures | on a chip | in Lava 0.10.0's CPU simulator")
        lines += [f"  {flag}: {measures} | {chip} | {lava}" for flag, (measures, chip, lava) in FLAG_LEGEND.items()]
        return lines

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
