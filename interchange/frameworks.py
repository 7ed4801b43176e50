"""Runs a NIR graph in the frameworks that import NIR (snnTorch 1.0.0 `import_from_nir`,
norse 1.1.0 `from_nir`) on given input spikes and records every spiking population, so that
their spikes can be compared with this toolchain's, population by population.

The frameworks are imported inside the functions: they are optional (the dev extra), heavy,
and only needed to prove an interchange, never to deploy.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings

import nir
import numpy as np

from interchange.nir_neurons import NIR_NEURONS
from netgraph.errors import InterchangeError


class FrameworkError(InterchangeError):
    """A framework could not import or run the NIR graph (its own limitation, named)."""


def neuron_names(graph: nir.NIRGraph) -> list[str]:
    return [name for name, node in graph.nodes.items() if isinstance(node, NIR_NEURONS)]


def _batch_flattens(module) -> None:
    """NIR states shapes without a batch dimension, so a full flatten is Flatten(start_dim=0);
    both frameworks turn it into torch.nn.Flatten(0, -1), which would also flatten the batch.
    Run batched, it must start at dimension 1 (the same computation per sample)."""
    import torch  # torch: only needed when a framework runs

    for child in module.modules():
        if isinstance(child, torch.nn.Flatten) and child.start_dim == 0:
            child.start_dim = 1


def _record_hooks(module, names: list[str], leaf_types: tuple, store: dict) -> list:
    """Forward hooks storing each named neuron module's spikes (the first output) per call."""
    import torch  # torch: only needed when a framework runs

    handles = []
    for path, child in module.named_modules():
        name = path.rsplit(".", 1)[-1]
        if name in names and isinstance(child, leaf_types):
            def hook(_module, _inputs, output, name=name):
                spikes = output[0] if isinstance(output, tuple) else output
                store.setdefault(name, []).append(spikes.detach().to(torch.uint8).cpu().numpy())
            handles.append(child.register_forward_hook(hook))
    return handles


def _run(framework: str, module, graph: nir.NIRGraph, spikes: np.ndarray, leaves: tuple, step,
         batch_size: int) -> dict[str, np.ndarray]:
    """Runs an imported module over spikes (samples, T, *input_shape) in batches, recording the
    modules named like the NIR graph's neuron nodes: uint8 (samples, T, neurons) per node.
    step(module, x_t, state) -> state, with state None at the start of each batch (every
    sample starts from rest). A node the framework did not run once per step is an error."""
    import torch  # torch: only needed when a framework runs

    names = neuron_names(graph)
    chunks = []
    _batch_flattens(module)
    with torch.no_grad():
        for start in range(0, len(spikes), batch_size):
            batch = torch.from_numpy(np.asarray(spikes[start:start + batch_size], np.float32))
            store: dict[str, list] = {}
            handles = _record_hooks(module, names, leaves, store)
            state = None
            try:
                for t in range(batch.shape[1]):
                    state = step(module, batch[:, t], state)
            except Exception as exc:  # the frameworks fail with plain RuntimeErrors, asserts, ...
                raise FrameworkError(f"{framework} could not run the graph: {type(exc).__name__}: {exc}") from exc
            finally:
                for handle in handles:
                    handle.remove()
            missing = [name for name in names if len(store.get(name, ())) != batch.shape[1]]
            if missing:
                raise FrameworkError(f"{framework} did not run neuron node(s) {', '.join(missing)} once per time step")
            chunks.append({name: np.stack(store[name], axis=1).reshape(len(batch), batch.shape[1], -1)
                           for name in names})
    return {name: np.concatenate([c[name] for c in chunks]) for name in names} if chunks else {}


def run_snntorch(graph: nir.NIRGraph, spikes: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """snnTorch's import of `graph` run on spikes (samples, T, *input_shape): its spikes per
    neuron node, uint8 (samples, T, neurons). snnTorch fixes dt = 1e-4 s on import."""
    import snntorch  # snnTorch: optional, only to prove an interchange
    from snntorch.import_nir import import_from_nir  # (same)
    from snntorch.utils import reset  # (same)

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints progress notes
            module = import_from_nir(graph)
    except Exception as exc:  # its failures are plain asserts and attribute errors
        raise FrameworkError(f"snnTorch import_from_nir failed: {type(exc).__name__}: {exc}") from exc

    def step(net, x, state):
        if state is None:
            reset(net)  # zero every neuron's hidden state (init_hidden=True keeps it in the modules)
        net(x)
        return True
    leaves = (snntorch.Leaky, snntorch.Synaptic, snntorch.RLeaky, snntorch.RSynaptic)
    return _run("snnTorch", module, graph, spikes, leaves, step, batch_size)


def run_norse(graph: nir.NIRGraph, spikes: np.ndarray, dt: float, batch_size: int = 256) -> dict[str, np.ndarray]:
    """norse's import of `graph` at time step dt (s) run on spikes (samples, T, *input_shape):
    its spikes per neuron node, uint8 (samples, T, neurons)."""
    from norse.torch import from_nir  # norse: optional, only to prove an interchange
    from norse.torch.module.iaf import IAFCell  # (same)
    from norse.torch.module.lif_box import LIFBoxCell  # (same)
    from norse.torch.utils.import_nir import CubaLIF  # (same)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # norse logs a warning per node it maps approximately (e.g. r ignored)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = from_nir(graph, dt=dt)
    except Exception as exc:  # e.g. KeyError for a node type it has no mapping for
        raise FrameworkError(f"norse from_nir failed: {type(exc).__name__}: {exc}") from exc
    finally:
        root.setLevel(level)

    def step(net, x, state):
        return net(x, state)[1]
    return _run("norse", module, graph, spikes, (LIFBoxCell, IAFCell, CubaLIF), step, batch_size)
