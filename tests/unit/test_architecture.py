"""The package's shape: tiers, the TensorFlow-free boundary, no import cycles, one contract.

The boundary is written once, in pyproject.toml's import-linter contract; these
tests read it from there, so the gateway image, this check and `make lint`
cannot drift apart.
"""

from __future__ import annotations

import ast
import re
import tomllib

import pytest
from support.paths import REPO

CONTRACTS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"][
    "contracts"
]
TF_FREE = next(c for c in CONTRACTS if c["type"] == "forbidden")["source_modules"]


def _imports(file):
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _files(module: str):
    path = REPO / module.replace(".", "/")
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


def test_tf_free_tiers_import_neither_tensorflow_nor_keras():
    offenders = []
    for file in [f for module in TF_FREE for f in _files(module)] + [REPO / "gateway.py"]:
        for name in _imports(file):
            top = name.split(".")
            # TF *proto* modules are fine: tensorflow-protobuf ships them without TF
            if top[0] == "keras" or (top[0] == "tensorflow" and top[1:2] != ["core"]):
                offenders.append(f"{file.relative_to(REPO)}: {name}")
    assert offenders == []


def test_the_gateway_image_copies_exactly_the_tf_free_tiers():
    text = (REPO / "image-gateway.dockerfile").read_text()
    copied = set(re.findall(r"^COPY (kitchenware/\S+) ", text, re.M))
    expected = {"kitchenware/__init__.py"} | {m.replace(".", "/") for m in TF_FREE}
    assert copied == expected


def test_the_package_import_graph_has_no_cycle():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("kitchenware")
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(module, path):
        state[module] = 1
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == 1:
                cycles.append(path[path.index(imported) :] + [imported])
            elif imported not in state:
                visit(imported, path + [imported])
        state[module] = 2

    for module in sorted(graph.modules):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_every_tier_is_named_by_the_layers_contract():
    layers = next(c for c in CONTRACTS if c["type"] == "layers")["layers"]
    named = {m.strip() for layer in layers for m in layer.split("|")}
    tiers = {
        f"kitchenware.{p.stem}"
        for p in (REPO / "kitchenware").iterdir()
        if (p / "__init__.py").is_file() or (p.suffix == ".py" and p.stem != "__init__")
    }
    assert tiers == named


@pytest.mark.parametrize(
    "literal",
    ['"serving_default"', "64 * 2**20", "64 * 1024 * 1024", "default=299", '"localhost:8500"'],
)
def test_contract_values_are_written_only_in_the_contract(literal):
    found = [
        str(file.relative_to(REPO))
        for file in sorted((REPO / "kitchenware").rglob("*.py"))
        if literal in file.read_text() and file.name != "contract.py"
    ]
    assert found == []
