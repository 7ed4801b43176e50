"""The fidelity report as one self-contained HTML file (CSS inline, plots as base64 PNG, no
external resources), written beside the JSON: the verdict first (bit-exactness, accuracy
deltas, gates with their thresholds), then the per-population match rates with what they
mean, the changed predictions, and the plots of one sample chosen for a stated reason.
matplotlib is imported only when figures are drawn (optional, slow to import).
"""
from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass

import numpy as np

from lava_backend.fidelity import (BackendRun, FidelityReport, PairComparison, check_gates, deployed_backend, json_safe,
                                   divergence_summary, pair_meaning, potential_summary)
from lava_backend.report_plots import (choose_sample, population_figure, potential_figure,
                                       summary_figure)
from netgraph.provenance import atomic_files, atomic_write

STYLE = """
body{font-family:sans-serif;max-width:1240px;margin:16px auto;color:#222;font-size:14px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;margin-top:28px} .sub{color:#555}
table{border-collapse:collapse;margin:8px 0} th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2} td.l,th.l{text-align:left}
.verdict{border:3px solid;padding:10px 16px;border-radius:6px}
.pass{border-color:#2a8a2a;background:#eef8ee} .fail{border-color:#c0392b;background:#fdeeee}
.ok{color:#2a8a2a;font-weight:bold} .bad{color:#c0392b;font-weight:bold} .na{color:#777}
td.diff{background:#ffe3c2;font-weight:bold} img{max-width:100%} figcaption{color:#444;font-size:13px}
"""


@dataclass
class ReportFigures:
    """The figures of one sample: `panels` is a list of (caption, PNG bytes), each figure drawn
    and rendered once for both the HTML report and the stacked PNG."""

    sample: int
    reason: str
    reference: str
    deployed: str
    panels: list


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported here: slow to import)."""
    import matplotlib  # slow to import: only when a report is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (same)

    return plt


def report_figures(report: FidelityReport, runs: dict[str, BackendRun], sample: int | None = None) -> ReportFigures | None:
    """Rasters of every population of one sample (trained vs the deployed backend) and the
    accuracy/rate summary; None when no deployed backend ran."""
    deployed = deployed_backend(runs)
    if deployed is None or "trained" not in runs:
        return None
    plt = pyplot()
    if sample is None:
        labels = {c.sample: c.label for c in report.changed_predictions}
        chosen, reason = choose_sample(runs, "trained", deployed, labels)
    else:
        chosen, reason = sample, f"sample {sample} was asked for"
    shapes = report.metadata.get("population_shapes", {})
    ref, dep = runs["trained"], runs[deployed]
    panels = []
    for name in ref.population_spikes:
        if name == ref.output and ref.output_potential is not None and dep.output_potential is not None:
            figure = potential_figure(plt, name, ref.output_potential[chosen], dep.output_potential[chosen],
                                      ("trained", deployed), chosen)
        else:
            shape = tuple(shapes[name]) if name in shapes else None
            figure = population_figure(plt, name, shape, ref.population_spikes[name][chosen],
                                       dep.population_spikes[name][chosen], ("trained", deployed),
                                       name == ref.output, chosen)
        panels.append((f"population {name}", _png(plt, figure)))
    panels.append(("accuracy and spike rates on all samples",
                   _png(plt, summary_figure(plt, report.accuracy, runs, list(ref.population_spikes)))))
    return ReportFigures(chosen, reason, "trained", deployed, panels)


def _png(plt, figure) -> bytes:
    """The figure as PNG bytes (90 dpi); the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def gate_rows(report: FidelityReport, max_accuracy_drop: float | None, require_bit_exact: bool) -> list[tuple]:
    """(gate, threshold, measured, passed: True/False/None for not requested) per gate."""
    pair = report.pair("emulator", "lava_fixed")
    if pair is None:
        exact_measured = "emulator or Lava fixed_pt did not run"
    else:
        spikes = sum(p.mismatched_spikes for p in pair.populations)
        exact_measured = "identical on every population and sample" if pair.identical else f"{spikes} spikes differ"
    exact_passed = (pair is not None and pair.identical) if require_bit_exact else None
    rows = [("emulator == Lava fixed_pt (bit-exact)", "required" if require_bit_exact else "not requested",
             exact_measured, exact_passed)]
    deployed = deployed_backend(report.accuracy)
    if deployed is None or "trained" not in report.accuracy:
        drop_measured, drop = "no deployed backend ran", None
    else:
        drop = 100.0 * (report.accuracy["trained"] - report.accuracy[deployed])
        drop_measured = f"{drop:+.2f} pp drop (trained -> {deployed})"
    threshold = "not requested" if max_accuracy_drop is None else f"drop &le; {max_accuracy_drop:g} pp"
    passed = None if max_accuracy_drop is None else (drop is not None and drop <= max_accuracy_drop)
    rows.append(("accuracy drop", threshold, drop_measured, passed))
    return rows


def render_html(report: FidelityReport, runs: dict[str, BackendRun], max_accuracy_drop: float | None,
                require_bit_exact: bool, figures: ReportFigures | None = None) -> tuple[str, int | None]:
    """The whole page and the sample its plots show (None when no deployed backend ran);
    `figures`: report_figures' result when the caller already drew them."""
    figures = figures or report_figures(report, runs)
    parts = [_header(report), _verdict(report, max_accuracy_drop, require_bit_exact), _populations(report),
             _changed(report), _plots(figures)]
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(_title(report))}</title>"
            f"<style>{STYLE}</style></head><body>" + "".join(parts) + "</body></html>")
    return page, None if figures is None else figures.sample


def write_fidelity_files(report: FidelityReport, runs: dict[str, BackendRun], json_path, html_path,
                         max_accuracy_drop: float | None, require_bit_exact: bool, plot_path=None) -> int | None:
    """Writes the JSON report and the HTML report as one unit (both or neither), then, with
    `plot_path`, the same figures stacked in one PNG (nothing when no deployed backend ran);
    returns the sample the plots show, or None."""
    figures = report_figures(report, runs)
    page, sample = render_html(report, runs, max_accuracy_drop, require_bit_exact, figures)
    failure = check_gates(report, max_accuracy_drop, require_bit_exact)
    gates = {"require_bit_exact": require_bit_exact, "max_accuracy_drop_pp": max_accuracy_drop,
             "passed": failure is None, "failure": failure}
    with atomic_files([json_path, html_path], "w") as (json_file, html_file):
        json.dump({**report.to_dict(), "gates": json_safe(gates)}, json_file, indent=2, allow_nan=False)
        html_file.write(page)
    if plot_path is not None and figures is not None:
        _write_stacked_png(report, figures, plot_path)
    return sample


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _title(report: FidelityReport) -> str:
    exact = {True: "bit-exact", False: "NOT bit-exact", None: "bit-exactness not checked"}[report.bit_exact]
    return f"Fidelity report: {report.samples} samples, T = {report.time_steps}, {exact}"


def _header(report: FidelityReport) -> str:
    meta = report.metadata
    known = [("checkpoint", "checkpoint <code>{}</code>"), ("artifact", "artifact <code>{}</code>"),
             ("dataset", "data set {}"), ("hw_config", "hardware {}")]
    facts = [form.format(_e(meta[key])) for key, form in known if meta.get(key) is not None]
    facts[2:2] = [f"{report.samples} test samples", f"{report.time_steps} time steps"]
    return f"<h1>{_e(_title(report))}</h1><p class='sub'>" + " &middot; ".join(facts) + "</p>"


def _verdict(report: FidelityReport, max_accuracy_drop, require_bit_exact) -> str:
    reason = check_gates(report, max_accuracy_drop, require_bit_exact)
    state = "pass" if reason is None else "fail"
    heading = "PASS: every requested gate holds" if reason is None else f"FAIL: {reason}"
    exact = report.bit_exact
    exact_text = {True: "<span class='ok'>yes</span>, emulator and Lava fixed_pt agree on every spike",
                  False: "<span class='bad'>NO</span>, emulator and Lava fixed_pt differ: a defect",
                  None: "<span class='na'>not checked</span> (emulator or Lava fixed_pt did not run)"}[exact]
    rows = "".join(f"<tr><td class='l'>{_e(name)}</td><td>{100 * acc:.2f}%</td>"
                   f"<td>{_delta(report, name)}</td></tr>" for name, acc in report.accuracy.items())
    gates = "".join(f"<tr><td class='l'>{_e(g)}</td><td class='l'>{t}</td><td class='l'>{_e(m)}</td>"
                    f"<td>{_status(p)}</td></tr>" for g, t, m, p in gate_rows(report, max_accuracy_drop, require_bit_exact))
    one = 100.0 / max(1, report.samples)
    return (f"<section class='verdict {state}' id='verdict'><h2>Verdict: {_e(heading)}</h2>"
            f"<p>Bit-exact: {exact_text}.</p>"
            f"<table><tr><th class='l'>backend</th><th>accuracy</th><th>change vs trained</th></tr>{rows}</table>"
            f"<p class='sub'>One prediction is {one:.2f} pp of accuracy on {report.samples} samples.</p>"
            f"<table><tr><th class='l'>gate</th><th class='l'>threshold</th><th class='l'>measured</th>"
            f"<th>result</th></tr>{gates}</table></section>")


def _delta(report: FidelityReport, name: str) -> str:
    if name == "trained" or "trained" not in report.accuracy:
        return "&ndash;"
    return f"{100 * (report.accuracy[name] - report.accuracy['trained']):+.2f} pp"


def _status(passed) -> str:
    return {True: "<span class='ok'>pass</span>", False: "<span class='bad'>FAIL</span>",
            None: "<span class='na'>&ndash;</span>"}[passed]


def _populations(report: FidelityReport) -> str:
    parts = ["<h2>Per-population match rates</h2><p>For each pair of backends and each population: the share "
             "of (sample, neuron) spike trains identical over all steps, the correlation of spike counts, the "
             "mean spike rates (spikes per neuron per step), how many spikes and samples differ, and how many "
             "samples first differ in that population.</p>"]
    for pair in report.pairs:
        parts.append(_pair_table(pair))
    return "".join(parts)


def _pair_table(pair: PairComparison) -> str:
    rows = []
    for p in pair.populations:
        match = "never fires (potential readout)" if p.population in pair.non_spiking else f"{100 * p.spike_train_match:.2f}%"
        rows.append(f"<tr><td class='l'>{_e(p.population)}</td><td>{match}</td><td>{p.spike_count_correlation:.4f}</td>"
                    f"<td>{p.reference_rate:.4f}</td><td>{p.candidate_rate:.4f}</td><td>{p.mismatched_spikes}</td>"
                    f"<td>{p.samples_diverging}</td><td>{pair.divergence_by_population.get(p.population, 0)}</td></tr>")
    potential = ""
    if pair.output_potential is not None:
        potential = f"<p>Output potential: {_e(potential_summary(pair.output_potential))}.</p>"
    head = (f"<tr><th class='l'>population</th><th>trains equal</th><th>count r</th><th>rate {_e(pair.reference)}</th>"
            f"<th>rate {_e(pair.candidate)}</th><th>spikes differing</th><th>samples differing</th>"
            f"<th>samples first differing here</th></tr>")
    return (f"<h3>{_e(pair.reference)} vs {_e(pair.candidate)}</h3><p>{_e(pair_meaning(pair))}</p>"
            f"<table>{head}{''.join(rows)}</table>{potential}"
            f"<p class='sub'>Predictions changed: {pair.prediction_changes}; {_e(divergence_summary(pair))}.</p>")


def _changed(report: FidelityReport) -> str:
    changed = report.changed_predictions
    if not changed:
        return "<h2 id='changed'>Changed predictions</h2><p>None: every backend predicts the same class on every sample.</p>"
    backends = list(changed[0].predictions)
    head = "<tr><th>sample</th><th>label</th>" + "".join(f"<th>{_e(b)}</th>" for b in backends) + "</tr>"
    rows = []
    for c in changed:
        reference = c.predictions.get("trained", c.predictions[backends[0]])
        cells = "".join(f"<td{' class=diff' if p != reference else ''}>{p}</td>" for p in c.predictions.values())
        rows.append(f"<tr><td>{c.sample}</td><td>{c.label}</td>{cells}</tr>")
    return (f"<h2 id='changed'>Changed predictions ({len(changed)} samples)</h2><p>Samples on which the backends "
            f"do not all predict the same class; highlighted: a prediction different from the trained model's.</p>"
            f"<table id='changed-table'>{head}{''.join(rows)}</table>")


def _plots(figures: ReportFigures | None) -> str:
    if figures is None:
        return "<h2>Plots</h2><p>None: no deployed backend (emulator, lava_fixed or lava_float) ran.</p>"
    parts = [f"<h2>Plots of sample {figures.sample}</h2><p>Why this sample: {_e(figures.reason)}.</p>"
             f"<p>Left: the {_e(figures.reference)} network's spikes. Right: the {_e(figures.deployed)} network's: "
             f"black ticks fired in both, orange triangles are extra spikes (only {_e(figures.deployed)}), red "
             f"squares are missing spikes (only {_e(figures.reference)}).</p>"]
    for caption, png in figures.panels:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{_e(caption)}</figcaption></figure>")
    return "".join(parts)


def _write_stacked_png(report: FidelityReport, figures: ReportFigures, path) -> None:
    """One PNG (atomically): a title line naming checkpoint, artifact, sample count, bit-exactness
    and why this sample, above the report's panels."""
    plt = pyplot()
    title = plt.figure(figsize=(12, 0.7))
    title.text(0.01, 0.65, f"Fidelity: {report.metadata.get('checkpoint', '?')} -> {report.metadata.get('artifact', '?')}"
               f", {report.samples} samples, T = {report.time_steps}, bit-exact: {report.bit_exact}", fontsize=10)
    title.text(0.01, 0.2, figures.reason, fontsize=9)
    images = [plt.imread(io.BytesIO(png)) for png in [_png(plt, title)] + [png for _, png in figures.panels]]
    width = max(image.shape[1] for image in images)
    padded = [np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0)), constant_values=1.0) for im in images]
    with atomic_write(path) as handle:
        plt.imsave(handle, np.concatenate(padded), format="png")
