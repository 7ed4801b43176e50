"""The command line's small items (issue 16, item 5): --version, progress bars only on a
terminal, help texts, swapped or mismatched files named in one line, --resume without
--config, and `stbp plot-history`."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def stbp(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "stbp_cli", *args], capture_output=True, text=True, cwd=cwd)

MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"


def _config(tmp_path, epochs=1):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"name": "digits", "train_limit": 60, "test_limit": 30},
        "encoding": {"time_steps": 4},
        "model": {"layers": [{"type": "dense", "units": 10}]},
        "training": {"epochs": epochs, "device": "cpu"},
    }))
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny digits run (trained without --no-progress, its output piped) and its artifact."""
    tmp = tmp_path_factory.mktemp("polish")
    out = stbp("train", "--config", str(_config(tmp)), "--output-dir", str(tmp / "run"))
    assert out.returncode == 0, out.stderr
    checkpoint = tmp / "run" / "checkpoint.safetensors"
    export = stbp("export", str(checkpoint), "-o", str(tmp / "net.onnx"), "--measure", "0")
    assert export.returncode == 0, export.stderr
    return {"dir": tmp, "train": out, "checkpoint": checkpoint, "artifact": tmp / "net.onnx"}


def test_version_names_the_package_and_the_versions_that_shape_results():
    out = stbp("--version")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("stbp ") and "(stbp-loihi)" in lines[0]
    assert all(name in lines[1] for name in ("python", "torch", "numpy", "lava-nc"))


def test_no_progress_bars_when_stderr_is_not_a_terminal(trained):
    stderr = trained["train"].stderr  # (text mode turns a bar's carriage returns into newlines)
    assert "batch/s" not in stderr and "evaluating" not in stderr


def test_progress_forces_the_bars_including_the_evaluation(tmp_path):
    out = stbp("train", "--config", str(_config(tmp_path)), "--output-dir", str(tmp_path / "run"), "--progress")
    assert out.returncode == 0, out.stderr
    assert "epoch 1/1" in out.stderr and "batch/s" in out.stderr and "evaluating" in out.stderr
    both = stbp("train", "--config", str(_config(tmp_path)), "--progress", "--no-progress")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_help_texts_name_defaults_data_sets_and_progress():
    run_help = stbp("run", "--help").stdout
    assert "digits, mnist, nmnist" in " ".join(run_help.split())
    assert "--no-progress" in run_help and "not a terminal" in run_help
    assert "(default: loihi2)" in " ".join(stbp("export", "--help").stdout.split())
    demo_help = " ".join(stbp("demo", "--help").stdout.split())
    assert "YAML run config to train and deploy" in demo_help
    assert "percentage points below trained (default: 1.0)" in demo_help


def test_swapped_compare_arguments_are_named_in_one_line(trained):
    checkpoint, artifact = str(trained["checkpoint"]), str(trained["artifact"])
    out = stbp("compare", artifact, checkpoint)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "arguments are swapped" in out.stderr
    assert "give the checkpoint (.safetensors) first and the artifact (.onnx) second" in out.stderr
    twice = stbp("compare", checkpoint, checkpoint)
    assert twice.returncode == 2 and f"{checkpoint} looks like a checkpoint (safetensors)" in twice.stderr
    run = stbp("run", checkpoint)
    assert run.returncode == 2 and "looks like a checkpoint (safetensors)" in run.stderr
    export = stbp("export", artifact, "-o", str(trained["dir"] / "again.onnx"))
    assert export.returncode == 2 and "looks like an artifact (ONNX)" in export.stderr
    assert "Wire format" not in out.stderr + twice.stderr + run.stderr + export.stderr


@pytest.mark.skipif(not (MNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason="no local MNIST files")
def test_a_digits_artifact_on_mnist_names_both_shapes(trained):
    out = stbp("run", str(trained["artifact"]), "--data", "mnist", "--data-path", str(MNIST), "--limit", "3",
               "--backend", "emulator")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "expects 1x8x8 inputs, but mnist gives 1x28x28 (it was trained on digits; pass --data digits)" in out.stderr


def test_resume_without_config_takes_the_checkpoints_config(trained, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    checkpoint = run_dir / "checkpoint.safetensors"
    checkpoint.write_bytes(trained["checkpoint"].read_bytes())
    out = stbp("train", "--resume", str(checkpoint), "--epochs", "2")
    assert out.returncode == 0, out.stderr
    assert "after epoch 1" in out.stdout and "after 2 epochs" in out.stdout
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    conflicting = tmp_path / "other.yaml"
    conflicting.write_text(_config(tmp_path).read_text().replace("time_steps: 4", "time_steps: 5"))
    refused = stbp("train", "--config", str(conflicting), "--resume", str(checkpoint), "--epochs", "3",
                   "--output-dir", str(tmp_path / "x"))
    assert refused.returncode == 2 and "cannot resume, the config differs" in refused.stderr
    neither = stbp("train")
    assert neither.returncode == 2 and "give --config" in neither.stderr


def test_plot_history_writes_a_png_and_refuses_a_malformed_history(trained, tmp_path):
    output = tmp_path / "curves.png"
    out = stbp("plot-history", str(trained["checkpoint"].parent), "--output", str(output))
    assert out.returncode == 0, out.stderr
    data = output.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
    bad = tmp_path / "history.json"
    for text, words in (("{not json", "not JSON"), ("[]", "non-empty list"),
                        ('[{"epoch": 1, "loss": 0.1, "train_accuracy": 0.5}]', "'test_accuracy' must be a finite"),
                        ('[{"epoch": 1, "loss": 1' + "0" * 400 + ', "train_accuracy": 0.5, "test_accuracy": 0.5}]',
                         "'loss' must be a finite")):
        bad.write_text(text)
        refused = stbp("plot-history", str(bad))
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and words in refused.stderr, refused.stderr
    assert not (tmp_path / "history.png").exists()


def test_report_paths_and_gate_thresholds_a_run_cannot_honour_are_refused_first(trained, tmp_path):
    """A non-finite threshold makes a gate that never fails; report files that coincide would
    overwrite each other. Both are refused in one line before any backend runs."""
    common = ["compare", str(trained["checkpoint"]), str(trained["artifact"]), "--backends", "trained,emulator"]
    for value in ("nan", "inf"):
        refused = stbp(*common, "--max-accuracy-drop", value)
        assert refused.returncode == 2 and "must be a finite number of percentage points" in refused.stderr
    refused = stbp(*common, "--json", str(tmp_path / "r.html"))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "must be three different files" in refused.stderr and "r.html" in refused.stderr
    assert list(tmp_path.iterdir()) == [] and "fidelity on" not in refused.stdout  # nothing ran, nothing written
