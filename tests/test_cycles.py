"""No import cycle inside the packages (ARCHITECTURE.md, "Who imports whom").

The graph is grimp's (it comes with import-linter) and counts every import: at the top,
inside functions and under ``TYPE_CHECKING``, so a late import cannot hide a cycle. A cycle
is broken by moving the shared piece into the lower module, or into a small module of its
own, never by importing late.
"""

from __future__ import annotations

from itertools import pairwise

import grimp
import pytest

PACKAGES = ("loadgen", "launcher", "analysis", "orchestrator")

# Cycles still standing, each with why; the test below fails once one is gone, so the list
# only shrinks.
KNOWN: dict[frozenset[str], str] = {}


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """One shortest cycle per set of modules that import each other, as the path
    ``[a, b, ..., a]``; sorted by length, then name."""
    found: dict[frozenset[str], list[str]] = {}
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if imported == importer:
                continue
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is None:
                continue
            path = [importer, *back]
            key = frozenset(path)
            if key not in found or len(path) < len(found[key]):
                found[key] = path
    return sorted(found.values(), key=lambda p: (len(p), p))


def _describe(path: list[str], graph: grimp.ImportGraph) -> str:
    """``a:12 -> b:30 -> a``: each module with the line of its import of the next."""
    steps = []
    for a, b in pairwise(path):
        lines = sorted({d["line_number"] for d in graph.get_import_details(importer=a, imported=b)})
        steps.append(f"{a}:{','.join(map(str, lines))}")
    return " -> ".join([*steps, path[-1]])


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, include_external_packages=False, cache_dir=None)


def test_no_import_cycle_inside_the_packages(graph):
    standing = [p for p in cycles(graph) if not any(set(p) <= known for known in KNOWN)]
    listed = "\n  ".join(_describe(p, graph) for p in standing)
    assert not standing, f"import cycles (module:line of each import; move the shared piece down):\n  {listed}"


def test_every_known_cycle_still_stands(graph):
    # A known cycle that is gone comes off the list, so that it cannot come back unnoticed.
    found = [frozenset(p) for p in cycles(graph)]
    for known, why in KNOWN.items():
        assert any(f <= known for f in found), f"{sorted(known)} no longer import each other: drop it from KNOWN ({why})"


def test_a_cycle_is_found_with_its_path():
    g = grimp.ImportGraph()
    for importer, imported in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d"), ("p.x", "p.y")):
        g.add_import(importer=importer, imported=imported, line_number=1, line_contents="import")
    assert cycles(g) == [["p.a", "p.b", "p.c", "p.a"]]
    assert _describe(cycles(g)[0], g) == "p.a:1 -> p.b:1 -> p.c:1 -> p.a"
