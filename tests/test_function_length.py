"""No function in src/pol is longer than MAX_LINES unless it says why.

A function's length is counted from its `def` line to its last line (decorators excluded; a nested
function counts for itself and inside its parent). A longer function needs a comment line starting
with `# long:` (saying why) within its first 3 lines: the signature, or the 3 lines that follow it.

Today's offenders are listed in KNOWN_LONG ("module:qualified.name"). The list can only shrink: a
new long function fails, and so does an entry that is no longer long (delete it).
`python tests/test_function_length.py` prints the current list.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
MAX_LINES = 80

# today's offenders; delete an entry when its function is split (never add one)
KNOWN_LONG: set[str] = set()  # none left: keep it that way


def _functions(tree: ast.AST, prefix: str = ""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}{node.name}", node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def long_functions(src: Path = SRC) -> dict[str, int]:
    """{"module:qualname": lines} of every function over MAX_LINES without a `# long:` note."""
    out = {}
    for p in sorted((src / "pol").rglob("*.py")):
        parts = list(p.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        lines = p.read_text().splitlines()
        for name, node in _functions(ast.parse("\n".join(lines), filename=str(p))):
            n = node.end_lineno - node.lineno + 1
            if n <= MAX_LINES:
                continue
            head = lines[node.lineno - 1:node.body[0].lineno + 2]
            if not any(line.strip().startswith("# long:") for line in head):
                out[f"{'.'.join(parts)}:{name}"] = n
    return out


def test_the_checker_counts_nested_functions_and_reads_the_note(tmp_path):
    def body(indent: int) -> str:
        return "\n".join(" " * indent + f"x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "m.py").write_text(
        f"class C:\n    def f(self):\n{body(8)}\n\n"
        f"def g():\n    # long: one table, read top to bottom\n{body(4)}\n\n"
        f"def h():\n    def inner():\n{body(8)}\n")
    assert long_functions(tmp_path) == {"pol.m:C.f": MAX_LINES + 1,
                                        "pol.m:h": MAX_LINES + 2, "pol.m:h.inner": MAX_LINES + 1}


@lru_cache(maxsize=1)
def current() -> dict[str, int]:
    return long_functions()


def test_no_new_long_function():
    new = {k: n for k, n in current().items() if k not in KNOWN_LONG}
    assert not new, (f"functions over {MAX_LINES} lines: split them, or say why in a comment "
                     "starting with `# long:` within their first 3 lines:\n"
                     + "\n".join(f"  {k} ({n} lines)" for k, n in sorted(new.items())))


def test_known_long_only_shrink():
    gone = sorted(KNOWN_LONG - set(current()))
    assert not gone, ("no longer long, delete from KNOWN_LONG in tests/test_function_length.py:\n"
                      + "\n".join(f'  "{k}",' for k in gone))


if __name__ == "__main__":
    for k, n in sorted(long_functions().items()):
        print(f'    "{k}",  # {n} lines')
