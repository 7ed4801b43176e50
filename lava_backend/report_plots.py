"""Figures of a fidelity report: spike rasters of one sample that tell extra spikes from
missing ones, and labelled accuracy and rate bars. Used by `report_html` (the HTML report's
embedded images and the stacked PNG), which draws each figure once. matplotlib is imported by
the caller only (slow to import); this module takes a ready pyplot.
"""
from __future__ import annotations

import math

import numpy as np

# Markers of the deployed panel: what both backends fired, what only the deployed one fired
# (extra) and what only the reference fired (missing from the deployed one).
SAME_STYLE = {"marker": "|", "color": "black", "s": 10}
EXTRA_STYLE = {"marker": "^", "color": "tab:orange", "s": 22, "edgecolors": "none"}
MISSING_STYLE = {"marker": "s", "facecolors": "none", "edgecolors": "tab:red", "s": 22, "linewidths": 0.9}
MAX_LABELLED_ROWS = 32  # above this many classes/channels, only some y ticks are labelled


def choose_sample(runs, reference: str, deployed: str, labels=None) -> tuple[int, str]:
    """The sample to draw and why: the first whose prediction changed from `reference` to
    `deployed`, else the first whose spikes differ anywhere, else sample 0."""
    ref, dep = runs[reference], runs[deployed]
    changed = np.flatnonzero(ref.predictions != dep.predictions)
    if len(changed):
        s = int(changed[0])
        label = "" if labels is None else f"label {int(labels[s])}, "
        return s, (f"sample {s} is the first whose prediction changed ({label}{reference} predicts "
                   f"{int(ref.predictions[s])}, {deployed} predicts {int(dep.predictions[s])})")
    differs = np.zeros(len(ref.predictions), dtype=bool)
    for name, spikes in ref.population_spikes.items():
        differs |= (spikes != dep.population_spikes[name]).reshape(len(spikes), -1).any(axis=1)
    if differs.any():
        s = int(np.flatnonzero(differs)[0])
        return s, (f"no prediction changed; sample {s} is the first whose spikes differ between "
                   f"{reference} and {deployed} (both predict {int(ref.predictions[s])})")
    return 0, f"{reference} and {deployed} agree on every spike of every sample; sample 0 is shown"


def population_figure(plt, name: str, shape: tuple[int, ...] | None, reference_spikes: np.ndarray,
                      deployed_spikes: np.ndarray, backends: tuple[str, str], is_output: bool, sample: int):
    """Two rasters of one population for one sample: the reference backend's spikes, and the
    deployed backend's with extra and missing spikes marked. spikes: (T, neurons) 0/1; shape:
    the population's shape, (channels, *positions) draws channel blocks. Returns the figure."""
    ref = reference_spikes.reshape(len(reference_spikes), -1)
    dep = deployed_spikes.reshape(len(deployed_spikes), -1)
    neurons = ref.shape[1]
    rows_in = 0.18 * min(neurons, MAX_LABELLED_ROWS) if is_output else neurons / 90  # height of the neuron axis
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.6 + min(3.6, max(1.0, rows_in))), sharey=True, squeeze=False)
    left, right = axes[0]
    t, n = np.nonzero(ref)
    left.scatter(t, n, **SAME_STYLE)
    left.set_title(f"{backends[0]}: {name}, sample {sample}", fontsize=9)
    both = (ref == 1) & (dep == 1)
    extra = (dep == 1) & (ref == 0)
    missing = (ref == 1) & (dep == 0)
    for mask, style, label in ((both, SAME_STYLE, "in both"), (extra, EXTRA_STYLE, f"extra (only {backends[1]})"),
                               (missing, MISSING_STYLE, f"missing (only {backends[0]})")):
        t, n = np.nonzero(mask)
        right.scatter(t, n, label=f"{label}: {len(t)}", **style)
    right.set_title(f"{backends[1]}: {name}, sample {sample}", fontsize=9)
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    for ax in (left, right):
        _step_axis(plt, ax, ref.shape[0])
    _neuron_axis(left, name, shape, neurons, is_output)
    fig.tight_layout()
    return fig


def potential_figure(plt, name: str, reference_potential: np.ndarray, deployed_potential: np.ndarray,
                     backends: tuple[str, str], sample: int):
    """The output potential (T, classes) of both backends, trained units: a non-spiking output."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 2.8), sharey=True, squeeze=False)
    for ax, backend, potential in zip(axes[0], backends, (reference_potential, deployed_potential)):
        for k in range(potential.shape[1]):
            ax.plot(np.arange(potential.shape[0]), potential[:, k], linewidth=0.9, label=str(k))
        ax.set_title(f"{backend}: {name} potential, sample {sample} (highest at the last step wins)", fontsize=9)
        _step_axis(plt, ax, potential.shape[0])
    axes[0, 0].set_ylabel("potential (trained units)")
    axes[0, 1].legend(fontsize=6, ncol=2, title="class", title_fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def summary_figure(plt, accuracy: dict[str, float], runs, names: list[str]):
    """Accuracy per backend (labelled bars, 0-100%) and mean spike rate per population."""
    fig, (acc_ax, rate_ax) = plt.subplots(1, 2, figsize=(12, 3.2))
    backends = list(accuracy)
    bars = acc_ax.bar(backends, [100 * accuracy[b] for b in backends], color="tab:gray")
    acc_ax.bar_label(bars, labels=[f"{100 * accuracy[b]:.2f}%" for b in backends], fontsize=8)
    acc_ax.set_ylim(0, 110)
    acc_ax.set_yticks(range(0, 101, 20))
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_title("test accuracy per backend", fontsize=9)
    width = 0.8 / max(1, len(runs))
    for k, (backend, run) in enumerate(runs.items()):
        rates = [float(run.population_spikes[n].mean()) if n in run.population_spikes else math.nan for n in names]
        bars = rate_ax.bar(np.arange(len(names)) + k * width, rates, width, label=backend)
        # upright labels overlap once the bars get narrow (many populations x backends)
        rate_ax.bar_label(bars, labels=[f"{r:.3f}" if math.isfinite(r) else "" for r in rates], fontsize=6,
                          rotation=90 if len(names) * len(runs) > 12 else 0, padding=2)
    rate_ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, fontsize=8,
                       rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    rate_ax.set_ylabel("mean spikes / neuron / step")
    rate_ax.set_title("spike rate per population", fontsize=9)
    rate_ax.margins(y=0.15)
    rate_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


def _step_axis(plt, ax, steps: int) -> None:
    ax.set_xlim(-0.5, steps - 0.5)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_xlabel("time step")


def _neuron_axis(ax, name: str, shape: tuple[int, ...] | None, neurons: int, is_output: bool) -> None:
    """The full neuron range; output classes each labelled; channels as blocks of positions."""
    ax.set_ylim(-0.5, neurons - 0.5)
    if is_output:
        step = max(1, math.ceil(neurons / MAX_LABELLED_ROWS))
        ax.set_yticks(range(0, neurons, step))
        ax.set_ylabel(f"{name}\nclass")
        return
    if shape is not None and len(shape) >= 2 and shape[0] > 1:
        channels, positions = shape[0], int(np.prod(shape[1:]))
        for c in range(1, channels):
            ax.axhline(c * positions - 0.5, color="lightgray", linewidth=0.6)
        step = max(1, math.ceil(channels / MAX_LABELLED_ROWS))
        ax.set_yticks([c * positions + (positions - 1) / 2 for c in range(0, channels, step)],
                      [f"ch {c}" for c in range(0, channels, step)], fontsize=6)
        ax.set_ylabel(f"{name}\nchannel (rows: {'x'.join(map(str, shape[1:]))} positions)", fontsize=8)
        return
    ax.set_ylabel(f"{name}\nneuron")
