"""The fidelity report's outputs (issue 16, item 1): the changed predictions and truncation
markers in the JSON, the self-contained HTML report (parsed, and rendered in headless
Chromium where it is installed), and the raster plots that tell extra from missing spikes.
Built from hand-made spike arrays, so what changes is known independently of the code."""
import json
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from conftest import REPO_ROOT
from lava_backend.fidelity import BackendRun, build_report
from lava_backend.report_html import render_html, write_fidelity_files
from lava_backend.report_plots import EXTRA_STYLE, MISSING_STYLE, choose_sample, population_figure, summary_figure

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))  # benchmarks/ is not a package
import screenshot_report  # noqa: E402

# 3 samples, T = 2; hidden population h (2 neurons), output o (3 classes, most spikes wins).
HIDDEN = [[[1, 0], [0, 1]], [[1, 1], [0, 0]], [[0, 0], [1, 0]]]
TRAINED_OUT = [[[1, 0, 0], [1, 0, 0]], [[0, 1, 0], [0, 1, 0]], [[0, 0, 1], [0, 0, 1]]]  # predicts 0, 1, 2
DEPLOYED_OUT = [[[1, 0, 0], [1, 0, 0]], [[0, 0, 1], [0, 0, 1]], [[0, 0, 1], [0, 0, 1]]]  # predicts 0, 2, 2
LABELS = np.array([0, 1, 2])


def _run(name, hidden, output):
    spikes = {"h": np.asarray(hidden, dtype=np.uint8), "o": np.asarray(output, dtype=np.uint8)}
    return BackendRun(name, spikes, "o", 10.0)


def _runs():
    return {"trained": _run("trained", HIDDEN, TRAINED_OUT), "emulator": _run("emulator", HIDDEN, DEPLOYED_OUT),
            "lava_fixed": _run("lava_fixed", HIDDEN, DEPLOYED_OUT)}


def _report(metadata=None):
    return build_report(_runs(), LABELS, 2, metadata or {"checkpoint": "ck.safetensors", "artifact": "net.onnx"})


class _Page(HTMLParser):
    """Collects the page's sections' text, table rows by table id, image sources and any URL."""

    def __init__(self):
        super().__init__()
        self.tags, self.rows, self.images, self.urls = [], {}, [], []
        self.text, self._table, self._row = [], None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs.get("id"), attrs.get("class")))
        self.urls += [v for k, v in attrs.items() if k in ("src", "href") and v and not v.startswith("data:")]
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "table":
            self._table = attrs.get("id")
        if tag == "tr":
            self._row = []

    def handle_endtag(self, tag):
        if tag == "tr":
            if self._table:
                self.rows.setdefault(self._table, []).append(self._row)
            self._row = None
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text.append(data)
        if self._row is not None and data.strip():
            self._row.append(data.strip())


def _parse(page):
    parser = _Page()
    parser.feed(page)
    return parser


def test_report_lists_the_changed_predictions_and_marks_truncated_lists():
    report = _report()
    assert [(c.sample, c.label, c.predictions) for c in report.changed_predictions] == [
        (1, 1, {"trained": 1, "emulator": 2, "lava_fixed": 2})]
    data = report.to_dict(max_divergences=0)
    assert data["changed_predictions"] == [{"sample": 1, "label": 1,
                                            "predictions": {"trained": 1, "emulator": 2, "lava_fixed": 2}}]
    trained_vs_emulator = data["pairs"][0]
    assert (trained_vs_emulator["reference"], trained_vs_emulator["candidate"]) == ("trained", "emulator")
    assert trained_vs_emulator["first_divergence"] == []
    assert trained_vs_emulator["first_divergence_count"] == 1 and trained_vs_emulator["first_divergence_truncated"]
    kept = report.to_dict()["pairs"][0]
    assert kept["first_divergence_count"] == 1 and not kept["first_divergence_truncated"]
    assert "quantization" in kept["meaning"]
    table = report.format_table()
    assert "changed predictions (1 samples): sample 1 label 1: trained 1, emulator 2, lava_fixed 2" in table
    assert "first divergence at none" not in table and "no sample differs in any spike" in table


def test_html_report_puts_the_verdict_first_with_thresholds_and_lists_changed_predictions():
    page, sample = render_html(_report(), _runs(), max_accuracy_drop=10.0, require_bit_exact=True)
    parsed = _parse(page)
    sections = [(tag, ident, cls) for tag, ident, cls in parsed.tags if tag in ("section", "h2", "table", "img")]
    assert sections[0] == ("section", "verdict", "verdict fail")  # the first block is the verdict
    text = " ".join(parsed.text)
    # accuracy 100% -> 66.67%: a 33.33 pp drop breaks the 10 pp gate; emulator == lava_fixed holds.
    assert "FAIL: deployed accuracy dropped 33.33 pp" in text
    assert "drop ≤ 10 pp" in text and "+33.33 pp drop (trained -> lava_fixed)" in text
    assert "identical on every population and sample" in text and "required" in text
    assert parsed.rows["changed-table"] == [["sample", "label", "trained", "emulator", "lava_fixed"],
                                            ["1", "1", "1", "2", "2"]]
    assert sample == 1 and "sample 1 is the first whose prediction changed (label 1, trained predicts 1, " \
                              "lava_fixed predicts 2)" in text
    assert len(parsed.images) == 3  # h, o, the accuracy/rate summary
    assert all(src.startswith("data:image/png;base64,iVBOR") for src in parsed.images)
    assert parsed.urls == [] and "http://" not in page and "https://" not in page


def test_html_report_escapes_text_and_passes_when_the_gates_hold(tmp_path):
    report = _report({"checkpoint": "<script>alert(1)</script>", "artifact": "a&b.onnx"})
    page, _ = render_html(report, _runs(), max_accuracy_drop=50.0, require_bit_exact=False)
    assert "<script>" not in page and "&lt;script&gt;" in page and "a&amp;b.onnx" in page
    assert ("section", "verdict", "verdict pass") in _parse(page).tags
    json_path, html_path = tmp_path / "f.json", tmp_path / "f.html"
    assert write_fidelity_files(report, _runs(), json_path, html_path, None, False) == 1
    assert json.loads(json_path.read_text())["changed_predictions"][0]["sample"] == 1
    assert json.loads(json_path.read_text())["gates"] == {"require_bit_exact": False, "max_accuracy_drop_pp": None,
                                                          "passed": True, "failure": None}
    write_fidelity_files(report, _runs(), json_path, html_path, 0.0, False)  # any drop fails a 0 pp gate
    gates = json.loads(json_path.read_text())["gates"]
    assert gates["max_accuracy_drop_pp"] == 0.0 and not gates["passed"] and "dropped" in gates["failure"]
    assert html_path.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.html", "f.json"]  # no temporaries left


def test_sample_choice_states_its_reason():
    runs = _runs()
    assert choose_sample(runs, "trained", "emulator", LABELS)[0] == 1
    same = {"trained": runs["trained"], "emulator": _run("emulator", HIDDEN, TRAINED_OUT)}
    assert choose_sample(same, "trained", "emulator") == (
        0, "trained and emulator agree on every spike of every sample; sample 0 is shown")
    hidden = np.array(HIDDEN)
    hidden[2, 0, 1] = 1  # sample 2 differs in one hidden spike, no prediction changes
    differs = {"trained": runs["trained"], "emulator": _run("emulator", hidden, TRAINED_OUT)}
    sample, reason = choose_sample(differs, "trained", "emulator")
    assert sample == 2 and reason.startswith("no prediction changed; sample 2 is the first whose spikes differ")


def test_raster_marks_extra_and_missing_spikes_apart_and_shows_every_class():
    from lava_backend.report_html import pyplot

    plt = pyplot()
    reference = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=np.uint8)  # (T = 3, 4 classes)
    deployed = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]], dtype=np.uint8)
    figure = population_figure(plt, "o", (4,), reference, deployed, ("trained", "lava_fixed"), True, 0)
    left, right = figure.axes[:2]
    by_label = {c.get_label().split(":")[0]: c.get_offsets().tolist() for c in right.collections}
    assert by_label == {"in both": [[0, 0]], "extra (only lava_fixed)": [[2, 2]], "missing (only trained)": [[1, 1]]}
    extra, missing = right.collections[1], right.collections[2]
    assert EXTRA_STYLE["marker"] != MISSING_STYLE["marker"]
    assert not np.allclose(extra.get_facecolor()[0], missing.get_edgecolor()[0])
    assert left.get_ylim() == (-0.5, 3.5)  # every class, also the never-firing class 3
    assert [t.get_text() for t in left.get_yticklabels()] == ["0", "1", "2", "3"]
    assert all(float(t).is_integer() for t in left.get_xticks())  # whole time steps
    assert [t.get_text() for t in right.get_legend().get_texts()] == [
        "in both: 1", "extra (only lava_fixed): 1", "missing (only trained): 1"]
    plt.close(figure)


def test_conv_population_is_drawn_as_channel_blocks_and_accuracy_bars_are_labelled():
    from lava_backend.report_html import pyplot

    plt = pyplot()
    spikes = np.zeros((4, 2 * 3 * 3), dtype=np.uint8)  # (T, channels 2 x 3 x 3 positions)
    figure = population_figure(plt, "conv1", (2, 3, 3), spikes, spikes, ("trained", "emulator"), False, 0)
    left = figure.axes[0]
    assert [t.get_text() for t in left.get_yticklabels()] == ["ch 0", "ch 1"]
    assert [line.get_ydata()[0] for line in left.get_lines()] == [8.5]  # the border between the channels
    assert "3x3 positions" in left.get_ylabel()
    plt.close(figure)
    summary = summary_figure(plt, {"trained": 0.9, "emulator": 0.875}, _runs(), ["h", "o"])
    accuracy_axes = summary.axes[0]
    assert accuracy_axes.get_ylim()[0] == 0 and accuracy_axes.get_ylim()[1] >= 100
    assert [t.get_text() for t in accuracy_axes.texts] == ["90.00%", "87.50%"]
    plt.close(summary)


@pytest.mark.skipif(screenshot_report.find_chromium() is None,
                    reason="headless Chromium is not installed (Debian package `chromium`); CI has none")
def test_the_report_renders_in_headless_chromium(tmp_path):
    page, _ = render_html(_report(), _runs(), max_accuracy_drop=1.0, require_bit_exact=True)
    html_path = tmp_path / "fidelity.html"
    html_path.write_text(page)
    png = screenshot_report.screenshot(html_path, tmp_path / "shot.png", width=1000, height=900)
    from lava_backend.report_html import pyplot

    image = pyplot().imread(png)  # (rows, columns, channels) floats in [0, 1]
    assert image.shape[:2] == (900, 1000)
    # The verdict box's border is the first coloured thing: red (FAIL) somewhere near the top.
    top = image[:300, :, :3]
    assert ((top[..., 0] > 0.6) & (top[..., 1] < 0.35) & (top[..., 2] < 0.35)).any()
