"""The packages import each other one way only, with no cycles, and import heavy optional
dependencies inside functions only where a comment says why.

Layers (each may import only the ones listed, and itself):
    netgraph      -                                  the graph, decision rule, provenance
    spikedata     netgraph                           data sets from local files
    interchange   netgraph                           NIR out and in
    trainer       netgraph, spikedata                torch: neuron, network, training
    export        netgraph                           quantization, artifact, emulator
    lava_backend  netgraph, export                   Lava runs, fidelity comparison
    stbp_cli      all of the above                   the command line; nothing imports it
The deployment side (export, lava_backend) and the shared base (netgraph, spikedata) never
import torch at module level.
"""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT

ALLOWED = {
    "netgraph": set(),
    "spikedata": {"netgraph"},
    "interchange": {"netgraph"},
    "trainer": {"netgraph", "spikedata"},
    "export": {"netgraph"},
    "lava_backend": {"netgraph", "export"},
    "stbp_cli": {"netgraph", "spikedata", "interchange", "trainer", "export", "lava_backend"},
}
TORCH_FREE = {"netgraph", "spikedata", "interchange", "export", "lava_backend"}
# What a function may import lazily: heavy optional dependencies, and the project modules
# that load them at import time.
LAZY_ALLOWED = ("torch", "tonic", "lava", "matplotlib", "lava_backend.spike_io", "snntorch", "norse", "numba",
                "trainer.lif_cpu")
LAVA_MODULES = "lava_backend.spike_io"  # the only modules that import lava at module level


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, known: set[str]) -> list[tuple[str, int, bool, str]]:
    """(imported module, line, inside a function, the comment on that line or the one above)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    found = []

    def comment(line: int) -> str:
        here = lines[line - 1].split("#", 1)[1] if "#" in lines[line - 1] else ""
        above = lines[line - 2].strip() if line >= 2 else ""
        return here or (above[1:] if above.startswith("#") else "")

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append((alias.name, child.lineno, in_function, comment(child.lineno)))
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, child.lineno, in_function, comment(child.lineno)))
                for alias in child.names:  # `from package import module`
                    if f"{child.module}.{alias.name}" in known:
                        found.append((f"{child.module}.{alias.name}", child.lineno, in_function, comment(child.lineno)))
            visit(child, nested)

    visit(tree, False)
    return found


def project_modules(root: Path) -> dict[str, str]:
    sources = {}
    for package in ALLOWED:
        for path in sorted((root / package).rglob("*.py")):
            sources[module_name(path, root)] = path.read_text()
    return sources


def violations(sources: dict[str, str]) -> list[str]:
    """Every broken rule, one line each: forbidden directions, cycles, unexplained lazy imports."""
    known = set(sources)
    problems, edges = [], {name: set() for name in sources}
    for name, source in sources.items():
        package = name.split(".")[0]
        for imported, line, lazy, note in imports_of(source, known):
            top = imported.split(".")[0]
            where = f"{name}:{line} imports {imported}"
            if top in ALLOWED and top != package and top not in ALLOWED[package]:
                problems.append(f"{where}: {package} may not import {top}")
            if imported in known and imported != name:
                edges[name].add(imported)
            if lazy and top in ALLOWED and top == package and not imported.startswith(LAZY_ALLOWED):
                problems.append(f"{where} inside a function: only heavy optional dependencies may be imported there")
            if lazy and top not in ALLOWED and not imported.startswith(LAZY_ALLOWED):
                problems.append(f"{where} inside a function: only {', '.join(LAZY_ALLOWED[:4])} may be imported there")
            if lazy and not note.strip():
                problems.append(f"{where} inside a function without a comment saying why")
            if not lazy and package in TORCH_FREE and top in ("torch", "tonic"):
                problems.append(f"{where} at module level: {package} must stay torch-free")
            if not lazy and top == "lava" and not name.startswith(LAVA_MODULES):
                problems.append(f"{where} at module level: only {LAVA_MODULES} may load lava on import")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(edges)]
    return problems


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def walk(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = "done"

    for start in sorted(edges):
        if start not in state:
            walk(start, [start])
    return cycles


def test_the_packages_import_one_way_without_cycles():
    assert violations(project_modules(REPO_ROOT)) == []


def test_the_checker_finds_each_kind_of_violation():
    sources = {
        "export.a": "from trainer.network import SpikingNetwork\nimport torch\n",
        "lava_backend.b": "import lava.magma\n",
        "trainer.c": "import trainer.d\n",
        "trainer.d": "def f():\n    import trainer.c\n\n\ndef g():\n    import yaml\n",
        "stbp_cli.e": "def f():\n    import torch  # optional here\n",
    }
    found = "\n".join(violations(sources))
    assert "export.a:1 imports trainer.network: export may not import trainer" in found
    assert "export.a:2 imports torch at module level: export must stay torch-free" in found
    assert "lava_backend.b:1 imports lava.magma at module level" in found
    assert "import cycle: trainer.c -> trainer.d -> trainer.c" in found
    assert "trainer.d:6 imports yaml inside a function: only torch" in found
    assert "trainer.d:6 imports yaml inside a function without a comment" in found
    assert "stbp_cli.e" not in found  # a commented lazy torch import is fine


def test_nothing_imports_the_command_line():
    for name, source in project_modules(REPO_ROOT).items():
        if not name.startswith("stbp_cli"):
            assert not any(m.startswith("stbp_cli") for m, *_ in imports_of(source, set())), name
