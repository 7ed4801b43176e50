"""One Lava process that plays the input spikes and records the spikes of chosen layers.

Why one process, and why bit-packed:
- On Lava's CPU simulator every process is an OS process that exchanges several messages
  with the runtime service at every time step; with a network of a few layers that
  synchronisation, not the arithmetic, dominates the run time (about 0.13 ms per process
  per step on a 2-core machine). Source and recorders in a single process save one to
  `layers` processes per graph.
- Lava's own `io.source.RingBuffer` keeps its data as float64 (8 bytes per input per step:
  1.5 GB for 10,000 MNIST samples at T = 25), and `Var.get()` sends a recorded array back
  one element per message. Here spikes are kept bit-packed (1 bit per neuron per step) and
  the recording leaves through one .npy file per layer, written when the last step has
  been recorded.

The data travels in `proc_params`: Lava 0.10.0 starts its workers with `fork`
(lava/magma/runtime/message_infrastructure/multiprocessing.py), so nothing is pickled.
The model is untagged, so `fixed_pt` and `floating_pt` runs both select it; the runner also
binds it explicitly (`exception_proc_model_map`, keyed by process instance). Port counts differ per network, so the
process and model classes are made per number of recorded layers (`spike_io_classes`).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from lava.magma.core.decorator import implements, requires
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort, PyRefPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort, RefPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class SpikeIOBase(AbstractProcess):
    """Sends row t-1 of `packed` at Lava time step t (zeros after its last row) on `s_out`,
    and records what arrives on `a_in0`, `a_in1`, ... at every step.

    packed: (rows, ceil(input_neurons / 8)) uint8, `np.packbits(spikes, axis=1)`.
    record_sizes: neurons of each recorded input port.
    steps: the run's length; at step `steps` the recording of port i is written to
        `output_paths[i]` as (steps, ceil(neurons / 8)) uint8.
    potential_size, potential_path: with a size, the process also reads a population's
        potential `v` through the RefPort `v_ref` (connect it with `v_ref.connect_var(lif.v)`)
        after every step, in the post-management phase (after the population's update), and
        writes them as float64 (steps, potential_size) to potential_path at the end: a
        non-spiking output read through its potential (netgraph.decision).
    """

    def __init__(self, *, packed: np.ndarray, input_neurons: int, record_sizes: list[int], steps: int,
                 output_paths: list[str], potential_size: int = 0, potential_path: str = "",
                 name: str | None = None) -> None:
        super().__init__(packed=packed, input_neurons=input_neurons, record_sizes=list(record_sizes),
                         steps=steps, output_paths=list(output_paths), potential_size=potential_size,
                         potential_path=potential_path, name=name)
        self.s_out = OutPort(shape=(input_neurons,))
        for i, neurons in enumerate(record_sizes):
            setattr(self, f"a_in{i}", InPort(shape=(neurons,)))
        if potential_size:
            self.v_ref = RefPort(shape=(potential_size,))


class PySpikeIOModelBase(PyLoihiProcessModel):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=1)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self._packed = proc_params["packed"]
        self._input_neurons = proc_params["input_neurons"]
        self._steps = proc_params["steps"]
        self._paths = [Path(p) for p in proc_params["output_paths"]]
        self._ports = [f"a_in{i}" for i in range(len(self._paths))]
        self._buffers = [np.zeros((self._steps, (n + 7) // 8), dtype=np.uint8) for n in proc_params["record_sizes"]]
        self._zeros = np.zeros(self._input_neurons, dtype=np.int32)
        self._potential_path = Path(proc_params["potential_path"]) if proc_params["potential_size"] else None
        self._potentials = np.zeros((self._steps, proc_params["potential_size"]), dtype=np.float64)

    def post_guard(self) -> bool:
        return self._potential_path is not None

    def run_post_mgmt(self) -> None:
        row = self.time_step - 1
        if row < self._steps:
            self._potentials[row] = self.v_ref.read()
        if row == self._steps - 1:
            _save_atomically(self._potential_path, self._potentials)

    def run_spk(self) -> None:
        row = self.time_step - 1
        if row < len(self._packed):
            self.s_out.send(np.unpackbits(self._packed[row], count=self._input_neurons).astype(np.int32))
        else:
            self.s_out.send(self._zeros)
        for port, buffer in zip(self._ports, self._buffers):
            spikes = getattr(self, port).recv()
            if row < self._steps:
                buffer[row] = np.packbits(spikes != 0)
        if row == self._steps - 1:
            for path, buffer in zip(self._paths, self._buffers):
                _save_atomically(path, buffer)


def _save_atomically(path: Path, array: np.ndarray) -> None:
    partial = path.with_suffix(".partial.npy")
    np.save(partial, array)
    os.replace(partial, path)


@functools.lru_cache(maxsize=None)
def spike_io_classes(num_recorded: int, reads_potential: bool = False) -> tuple[type, type]:
    """(Process class, its ProcessModel class) with `num_recorded` input ports, and the
    RefPort `v_ref` when it `reads_potential`."""
    suffix = f"{num_recorded}{'V' if reads_potential else ''}"
    process = type(f"SpikeIO{suffix}", (SpikeIOBase,), {"__module__": __name__})
    ports = {f"a_in{i}": LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=1) for i in range(num_recorded)}
    if reads_potential:
        ports["v_ref"] = LavaPyType(PyRefPort.VEC_DENSE, np.float64)
    model = type(f"PySpikeIO{suffix}Model", (PySpikeIOModelBase,), {"__module__": __name__, **ports})
    model = implements(proc=process, protocol=LoihiProtocol)(requires(CPU)(model))
    return process, model
