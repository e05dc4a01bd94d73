"""The package's layering, checked on the source: data flows one way, no private name crosses a
package line, and no engine setting is a module-level switch (docs/architecture.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mlipspace"
#: Layer of each top-level package or module: a package may import only from lower or equal layers.
RANK = {"errors": 0, "_device": 0, "intervals": 0, "records": 1, "data": 2, "envs": 2, "models": 3, "store": 4,
        "metrics": 4, "aggregate": 5, "experiments": 6, "report": 7, "commands": 8, "cli": 9, "__init__": 10}


def _imports():
    for path in sorted(SRC.rglob("*.py")):
        here = path.relative_to(SRC).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlipspace."):
                parts = node.module.split(".")
                yield path, node, here, parts


def test_every_package_has_a_layer():
    assert {p.relative_to(SRC).parts[0].removesuffix(".py") for p in SRC.iterdir()
            if p.suffix == ".py" or (p / "__init__.py").exists()} <= set(RANK)


def test_data_flows_one_way():
    upward = [f"{p.relative_to(SRC)}:{n.lineno} imports {'.'.join(parts)}" for p, n, here, parts in _imports()
              if RANK[parts[1]] > RANK[here]]
    assert not upward, upward


def test_no_private_name_crosses_a_package_line():
    allowed: set = set()
    private = []
    for p, n, here, parts in _imports():
        there = parts[1]
        if there == here or (here, ".".join(parts[1:])) in allowed or there in ("_device",):
            continue
        if any(q.startswith("_") for q in parts[2:]) or any(a.name.startswith("_") for a in n.names):
            private.append(f"{p.relative_to(SRC)}:{n.lineno}: from {n.module} import {', '.join(a.name for a in n.names)}")
    assert not private, private


def test_no_module_level_engine_switch():
    pattern = re.compile(r"^(CPU_ENGINE|FAST_ENGINE|KNN_FLOAT32|GLOBAL_ENGINE|TORCH_SVD_DRIVER)\s*[:=]", re.M)
    hits = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if pattern.search(p.read_text())]
    assert not hits, hits


def test_no_function_over_80_lines_without_a_reason():
    long = []
    for path in SRC.rglob("*.py"):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                if "long-function:" not in lines[node.lineno - 1] + (lines[node.lineno - 2] if node.lineno > 1 else ""):
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")
    assert not long, long
