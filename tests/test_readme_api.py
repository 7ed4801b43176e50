"""The README's "Python API" example runs as written, on an artifact trained from
configs/npz_example.yaml on a generated .npz (so the example and the npz format stay true)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml

from stbp_cli.main import main

ROOT = Path(__file__).resolve().parent.parent


def readme_block(section: str) -> str:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", body, flags=re.S)
    assert blocks, f"no python block in README section {section!r}"
    return blocks[-1]


def test_the_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()

    def halves(n):
        labels = np.arange(n) % 2
        x = rng.uniform(0, 0.1, (n, 8, 8)).astype(np.float32)
        for i, label in enumerate(labels):
            x[i, :, 4 * label:4 * label + 4] += 0.85
        return x, labels

    (x_train, y_train), (x_test, y_test) = halves(40), halves(20)
    np.savez("data/mine.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    config = yaml.safe_load((ROOT / "configs" / "npz_example.yaml").read_text())
    assert config["data"] == {"name": "npz", "path": "data/mine.npz"}
    config["model"]["layers"][0]["units"] = 16
    config["training"].update(epochs=2, batch_size=8, learning_rate=0.01, device="cpu")
    config["encoding"]["time_steps"] = 6
    Path("mine.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", "mine.yaml", "--no-progress"]) == 0
    assert main(["export", "runs/mine/checkpoint.safetensors", "-o", "runs/mine/net.onnx"]) == 0
    capsys.readouterr()
    exec(compile(readme_block("Python API"), "README.md (Python API)", "exec"), {})
    out = capsys.readouterr().out
    assert "bit-exact: True - changed predictions: 0" in out
    accuracy = float(re.search(r"Lava accuracy ([0-9.]+)", out).group(1))
    assert accuracy > 0.5
