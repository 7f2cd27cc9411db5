"""The rule check on networks written the way students write them.

tests/gallery/ holds three galleries (students_a_*.py, students_b_*.py, students_c.py), each written by
someone who had not read the check: course-style
networks (convblocks, transitions, `view(-1, 10)` + `log_softmax`, the reference network) and functional or
modern ones (F.conv2d on parameters, MobileNet stages, squeeze-excitation, ModuleDicts), both from the rules'
meaning (docs/rules.md), and a hold-out set written from the issue's words alone and run against the check
as a black box. Each network's failing rules and receptive field are written down by hand in its file's
EXPECTED.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from conftest import cli
from torch import nn

from cifar_cli.graph import Op, trace_graph
from cifar_cli.positions import global_pooling
from cifar_cli.receptive_field import empirical_receptive_field, total_receptive_field
from cifar_cli.rulebook import RULES
from cifar_cli.rules import check_rules

GALLERY = Path(__file__).parent / "gallery"


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"gallery_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # as `--model FILE.py:NAME` does: a file may import its neighbours
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


FILES = {path: _load(path) for path in sorted(GALLERY.glob("students_*.py"))}


def _gallery(letter: str) -> SimpleNamespace:
    """One author's gallery, kept in one or more files (students_a_*.py): all its hand verdicts together."""
    return SimpleNamespace(EXPECTED={name: e for path, module in FILES.items() if path.stem.split("_")[1] == letter
                                     for name, e in module.EXPECTED.items()})


MODULES = {letter: _gallery(letter) for letter in sorted({path.stem.split("_")[1] for path in FILES})}
NETWORKS = [pytest.param(path, name, expected, id=name)
            for path, module in FILES.items() for name, expected in module.EXPECTED.items()]


def test_the_galleries_are_the_size_the_issue_asks_for() -> None:
    assert len(MODULES) == 3 and all(len(m.EXPECTED) >= 14 for m in MODULES.values())
    named = {rule.name for rule in RULES}
    for module in MODULES.values():  # a misspelt rule name would make an expectation that cannot fail
        assert all(set(e["fails"]) <= named for e in module.EXPECTED.values())
    every_failure = {rule for m in MODULES.values() for e in m.EXPECTED.values() for rule in e["fails"]}
    assert every_failure == named, "each rule fails somewhere in the galleries"


@pytest.mark.parametrize(("path", "name", "expected"), NETWORKS)
def test_verdicts_and_receptive_field_are_the_hand_written_ones(path: Path, name: str, expected: dict) -> None:
    model = getattr(FILES[path], name)()
    rules = check_rules(model)
    assert sorted(r.name for r in rules if not r.passed) == sorted(expected["fails"]), rules
    assert all(r.fix and "\n" not in r.fix for r in rules if not r.passed), "every failure says how to fix it"
    assert all(not r.fix for r in rules if r.passed)
    assert total_receptive_field(model) == expected["receptive_field"]


def _gradient_measures_the_walk(model: nn.Module) -> bool:
    """The gradient of one unit reaches exactly its receptive field unless an op routes it to one position
    (max-pooling) or lets every unit see every position (a squeeze-excitation gate, GroupNorm's statistics)."""
    graph = trace_graph(model)
    def has_positions(op: Op) -> bool:
        return op.is_map() and op.out_shape[-2] * op.out_shape[-1] > 1
    gates = [op for op in graph.ops if global_pooling(graph, op)
             and any(has_positions(later) and op.index in graph.ancestors(later.index)
                     for later in graph.ops[op.index + 1:])]
    return not gates and not any("max_pool" in op.name or op.name in ("group_norm", "layer_norm", "instance_norm")
                                 for op in graph.ops)


@pytest.mark.parametrize(("path", "name", "expected"), NETWORKS)
def test_the_gradient_reaches_exactly_the_receptive_field(path: Path, name: str, expected: dict) -> None:
    model = getattr(FILES[path], name)()
    if not _gradient_measures_the_walk(model):
        pytest.skip("max-pooling, a squeeze-excitation gate or GroupNorm: the gradient measures something else")
    assert empirical_receptive_field(model) == expected["receptive_field"]


@pytest.mark.parametrize(("path", "name", "expected"), NETWORKS)
def test_summary_gives_the_same_verdicts_and_a_fix_line_per_failure(path: Path, name: str, expected: dict) -> None:
    spec = f"{path}:{name}"
    result = cli("summary", "--model", spec, "--json")
    assert result.exit_code == (1 if expected["fails"] else 0), (result.stderr, result.exception)
    assert result.exception is None and "Traceback" not in result.stderr
    rules = json.loads(result.stdout)["rules"]
    assert sorted(r["name"] for r in rules if not r["passed"]) == sorted(expected["fails"])
    if expected["fails"]:
        shown = cli("summary", "--model", spec).stdout
        for rule in rules:
            if not rule["passed"]:
                assert f"fix {rule['name']}: {rule['fix'][:40]}" in " ".join(shown.split())
