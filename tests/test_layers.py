"""The layers contract of docs/ARCHITECTURE.md, checked on the source.

Every module of src/pol is parsed with `ast` (not imported): every `import` / `from … import`
statement counts, function-level and `TYPE_CHECKING` ones included, and so do
`importlib.import_module("pol.…")` calls and string constants that name a module of pol exactly
(the CLI's table of lazily loaded commands). Each module sits on the floor of the longest entry of
the ARCHITECTURE.md table that is a prefix of its name (`pol.verifier.core` → `pol.verifier`,
floor 6). An import may go down a floor or stay inside its own entry; going up a floor, sideways to
a peer on the same floor (the `|` of the table), or forming a cycle between modules inside a
package (`pol.verifier.core → pol.verifier.parallel → pol.verifier.core`) is a violation, and so is
a module on no floor.

Today's violations (the code is being moved toward the table) are listed in KNOWN_VIOLATIONS. The
list can only shrink: a new violation fails, and so does an entry that no longer occurs (delete
it). `python tests/test_layers.py` prints the current list.
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"

# "a -> b": an import of b by a that breaks the contract; "a: no floor": a module the table does
# not place. Remove an entry when the code no longer has it; never add one for new code.
KNOWN_VIOLATIONS: set[str] = set()  # none left: keep it that way


@lru_cache(maxsize=1)
def floors() -> dict[str, int]:
    """{table entry: floor} from the Floors table of ARCHITECTURE.md."""
    out: dict[str, int] = {}
    for line in ARCHITECTURE.read_text().splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|(.*?[^\\])\|", line)
        if m:
            for name in re.findall(r"`(pol(?:\.\w+)*)`", m.group(2)):
                out[name] = int(m.group(1))
    return out


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted((SRC / "pol").rglob("*.py")):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def unit(module: str) -> str | None:
    """The table entry a module belongs to (longest prefix; `pol` itself only as `pol`)."""
    table = floors()
    if module == "pol":
        return "pol" if "pol" in table else None
    parts = module.split(".")
    for i in range(len(parts), 1, -1):
        if ".".join(parts[:i]) in table:
            return ".".join(parts[:i])
    return None


def _resolve(name: str, known: dict[str, Path]) -> str:
    """The longest known module that `name` starts with."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in known:
            return ".".join(parts[:i])
    return name


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of pol that `module` imports (resolved to files that exist)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            for a in node.names:  # `from pkg import submodule` imports the submodule
                full = f"{src}.{a.name}"
                names.add(full if full in known else src)
        elif isinstance(node, ast.Call):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if (fname in ("import_module", "__import__") and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                names.add(node.args[0].value)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value \
                and node.value in known:
            names.add(node.value)
    return {_resolve(n, known) for n in names
            if n == "pol" or n.startswith("pol.")} - {module}


@lru_cache(maxsize=1)
def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports_of(m, p, known) for m, p in known.items()}


def _cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(comp)
    return out


def violations() -> dict[str, str]:
    """{entry: why} for every import that breaks the contract today."""
    table = floors()
    g = graph()
    out: dict[str, str] = {}
    for a, targets in g.items():
        ua = unit(a)
        if ua is None:
            out[f"{a}: no floor"] = "the ARCHITECTURE.md table places no entry that is a prefix"
            continue
        for b in targets:
            ub = unit(b)
            if ub is None or ub == ua:
                continue
            fa, fb = table[ua], table[ub]
            if fb > fa:
                out[f"{a} -> {b}"] = f"goes up from floor {fa} ({ua}) to floor {fb} ({ub})"
            elif fb == fa:
                out[f"{a} -> {b}"] = f"goes sideways between peers {ua} and {ub} (floor {fa})"
    inside = {a: {b for b in bs if unit(b) is not None and unit(b) == unit(a)}
              for a, bs in g.items()}
    for comp in _cycles(inside):
        for a in sorted(comp):
            for b in sorted(inside[a] & comp):
                out.setdefault(f"{a} -> {b}", "import cycle: " + " ↔ ".join(sorted(comp)))
    return out


def test_the_table_has_every_floor():
    table = floors()
    assert set(table.values()) == set(range(max(table.values()) + 1)), table
    assert {"pol", "pol.errors", "pol.step", "pol.proof", "pol.verifier", "pol.cli"} <= set(table)


def test_the_checker_sees_function_level_relative_and_dynamic_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import importlib\nfrom . import b\n\ndef f():\n    from pol.c import d\n"
                   "    import pol.e\n    importlib.import_module('pol.g')\n    x = 'pol.h'\n")
    known = {k: src for k in ("pol.a.m", "pol.a.b", "pol.c", "pol.e", "pol.g", "pol.h")}
    assert imports_of("pol.a.m", src, known) == {"pol.a.b", "pol.c", "pol.e", "pol.g", "pol.h"}
    assert {frozenset(c) for c in _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})} \
        == {frozenset("abc")}


def test_no_new_layer_violation():
    now = violations()
    new = sorted(set(now) - KNOWN_VIOLATIONS)
    assert not new, "imports that break docs/ARCHITECTURE.md's floors:\n" + "\n".join(
        f"  {v}   ({now[v]})" for v in new)


def test_known_violations_only_shrink():
    gone = sorted(KNOWN_VIOLATIONS - set(violations()))
    assert not gone, ("fixed, delete from KNOWN_VIOLATIONS in tests/test_layers.py:\n"
                      + "\n".join(f'  "{v}",' for v in gone))


if __name__ == "__main__":
    for v, why in sorted(violations().items()):
        print(f'    "{v}",  # {why}')
