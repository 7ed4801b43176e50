"""Seeded fuzzing of the artifact loader (issue 14, part 7): mutants of five base artifacts
(benchmarks/artifact_fuzz.py) must each be refused with a one-line StbpError naming the file,
or load as exactly the network the file describes and run on the emulator. Nothing else:
no other exception, no hang, no silently different network.

A failure lists each offending mutant with the command that reproduces it with its full
traceback; `benchmarks/bench_fuzz.py` runs many more cases in worker processes (and also
tells crashes and memory bombs apart).
"""
from __future__ import annotations

import sys
import time

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))  # benchmarks/ is not a package
import artifact_fuzz as fuzz  # noqa: E402

from netgraph.errors import ArtifactError  # noqa: E402

SEED = 0
# About 1 ms a case on this machine: 2,000 cases take seconds, and draw each operator ~60 times.
CASES = 2000
TIMEOUT_S = 10.0
# A hang costs TIMEOUT_S; after this many the run stops (they are enough to act on).
MAX_HANGS = 3
SHOWN = 30


@pytest.fixture(scope="module")
def bases():
    return fuzz.base_models()


def _report(findings: list) -> str:
    lines = [f"{len(findings)} mutant(s) the loader does not handle (class (phase): detail):"]
    for result in findings[:SHOWN]:
        lines.append(f"  base={result.base} seed={result.seed} index={result.index} [{result.operator}] "
                     f"{result.description}\n    {result.kind} ({result.phase}): {result.detail}\n"
                     f"    reproduce: ./run python benchmarks/bench_fuzz.py --seed {result.seed} "
                     f"--reproduce {result.index}")
    if len(findings) > SHOWN:
        lines.append(f"  ... and {len(findings) - SHOWN} more")
    return "\n".join(lines)


def test_loader_handles_seeded_mutations(bases, tmp_path):
    findings, hangs, operators, started = [], 0, set(), time.monotonic()
    for index in range(CASES):
        result = fuzz.run_case(bases, SEED, index, tmp_path, TIMEOUT_S)
        operators.add(result.operator)
        if result.kind in ("traceback", "hang", "different"):
            findings.append(result)
        hangs += result.kind == "hang"
        if hangs >= MAX_HANGS:
            break
    assert not findings, _report(findings)
    assert operators == set(fuzz.OPERATORS), f"operators never drawn: {sorted(set(fuzz.OPERATORS) - operators)}"
    assert time.monotonic() - started < 60


def test_every_base_loads_faithfully(bases, tmp_path):
    for name, model in bases.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(model.SerializeToString())
        assert fuzz.classify_file(path, TIMEOUT_S)[::2] == ("loaded", ""), name


def test_a_mutant_is_reproducible_from_base_seed_and_index(bases):
    for index in range(40):
        base = fuzz.base_for_index(index)
        assert fuzz.make_mutant(base, bases[base], SEED, index) == fuzz.make_mutant(base, bases[base], SEED, index)
    assert fuzz.make_mutant("dense", bases["dense"], SEED, 0) != fuzz.make_mutant("dense", bases["dense"], SEED + 1, 0)


def _classified_with_loader(monkeypatch, tmp_path, bases, loader) -> tuple[str, str, str]:
    path = tmp_path / "dense.onnx"
    path.write_bytes(bases["dense"].SerializeToString())
    monkeypatch.setattr(fuzz, "load_artifact", loader)
    return fuzz.classify_file(path, 0.5)


def _sleep_past_the_timeout(path):
    time.sleep(5)


@pytest.mark.parametrize("loader, expected", [
    (lambda path: {}["missing"], "traceback"),
    (lambda path: (_ for _ in ()).throw(ArtifactError("bad node, but which file?")), "traceback"),
    (lambda path: (_ for _ in ()).throw(ArtifactError(f"{path}: first line\nsecond line")), "traceback"),
    (lambda path: (_ for _ in ()).throw(ArtifactError(f"{path}: node d0: bad")), "clean"),
    (lambda path: fuzz.base_network("conv"), "different"),
    (lambda path: fuzz.base_network("dense"), "loaded"),
    (_sleep_past_the_timeout, "hang"),
])
def test_the_classifier_tells_each_class(monkeypatch, tmp_path, bases, loader, expected):
    assert _classified_with_loader(monkeypatch, tmp_path, bases, loader)[0] == expected
