"""The code's layout: imports between osr's subpackages only go one way (no cycles)."""

import ast
from collections import defaultdict
from pathlib import Path

OSR = Path(__file__).resolve().parents[1] / "osr"


def package_imports() -> dict[str, set[str]]:
    """Subpackage -> the other subpackages its modules import (``from osr.<pkg>...``)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in OSR.rglob("*.py"):
        parts = path.relative_to(OSR).parts
        if len(parts) < 2:
            continue  # the entry points sit on top of everything
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("osr."):
                target = node.module.split(".")[1]
                if target != parts[0] and (OSR / target).is_dir():
                    edges[parts[0]].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found = []

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                found.append(path[path.index(nxt) :] + [nxt])
            else:
                walk(nxt, [*path, nxt])

    for start in sorted(edges):
        walk(start, [start])
    return found


def test_imports_between_subpackages_only_go_down():
    edges = package_imports()
    assert cycles(edges) == []
    assert "reporting" not in edges["scoring"]  # reporting reads results; scoring makes them
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"], ["b", "a", "b"]]
