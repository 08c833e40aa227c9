"""The shape of `pol.cli` (issue 11): `pol --help` stays light, every command's help works, and the
command modules only parse, call the library and render.

The "no logic" rule, made objective: in a command module (pol/cli/*.py other than the package's
own plumbing: __init__, __main__, exits, options, render), no function has a loop (for, while, a
comprehension) or a try statement, none calls click.echo or print, and none is longer than 40
lines. Parsing lives in click's decorators and options.py, output in render.py, errors in the one
handler (exits.py), and anything that iterates, computes or recovers belongs to the library. The
40-line bound is generous for a call plus a few option checks (`pol verify`, the longest, is
about 30) and small enough that a new branch of behaviour does not fit.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import pol.cli
from pol.cli import COMMANDS, load_command, main

CLI_DIR = Path(pol.cli.__file__).parent
PLUMBING = {"__init__.py", "__main__.py", "exits.py", "options.py", "render.py"}
COMMAND_MODULES = sorted(p for p in CLI_DIR.glob("*.py") if p.name not in PLUMBING)
MAX_LINES = 40


def _imports_after(args: list[str]) -> set[str]:
    code = ("import sys\nfrom pol.cli import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'numpy', 'cryptography') or m.startswith('pol.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return set(ast.literal_eval(r.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["-h"]])
def test_help_and_version_import_no_torch_nor_crypto(args):
    mods = _imports_after(args)
    assert not {m for m in mods if m.split(".")[0] in ("torch", "numpy", "cryptography")}, mods
    assert not {m for m in mods if m.startswith(("pol.crypto", "pol.verifier", "pol.prover"))}


def test_the_light_commands_do_not_import_torch(tmp_path):
    for args in (["ledger", "--help"], ["keygen", "--out", str(tmp_path / "keys")]):
        assert not {m for m in _imports_after(args) if m.startswith("torch")}, args
    assert (tmp_path / "keys" / "signing.key").exists()


def _all_commands():
    for name in sorted(COMMANDS):
        cmd = load_command(name)
        yield [name], cmd
        if isinstance(cmd, click.Group):
            for sub in sorted(cmd.commands):
                yield [name, sub], cmd.commands[sub]


@pytest.mark.parametrize("path", [p for p, _ in _all_commands()], ids=" ".join)
def test_every_command_help_works(path):
    r = CliRunner().invoke(main, [*path, "--help"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"Usage: main {' '.join(path)}") or "Usage:" in r.output


def test_the_listed_short_help_is_each_commands_own():
    for name, (_, _, short) in COMMANDS.items():
        cmd = load_command(name)
        assert cmd.name == name
        stub = click.Command(name, help=short)
        assert stub.get_short_help_str(1000) == cmd.get_short_help_str(1000), name


def test_pol_help_lists_every_command():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    listed = {line.split()[0] for line in r.output.split("Commands:")[1].splitlines() if line}
    assert listed == set(COMMANDS)


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _body_lines(fn: ast.FunctionDef) -> int:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return 0 if not body else body[-1].end_lineno - body[0].lineno + 1


LOOPS = (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp,
         ast.GeneratorExp, ast.Try)


@pytest.mark.parametrize("path", COMMAND_MODULES, ids=lambda p: p.name)
def test_command_modules_only_parse_call_and_render(path):
    tree = ast.parse(path.read_text(), str(path))
    problems = []
    for fn in _functions(tree):
        where = f"{path.name}:{fn.lineno} {fn.name}"
        if _body_lines(fn) > MAX_LINES:
            problems.append(f"{where}: {_body_lines(fn)} lines (> {MAX_LINES})")
        for node in ast.walk(fn):
            if isinstance(node, LOOPS):
                problems.append(f"{where}: {type(node).__name__} at line {node.lineno}")
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name in ("echo", "print", "secho"):
                    problems.append(f"{where}: prints at line {node.lineno} (render.py prints)")
    assert not problems, "\n".join(problems)


def test_the_command_modules_are_the_commands_modules():
    used = {module for module, _, _ in COMMANDS.values()}
    assert used == {f"pol.cli.{p.stem}" for p in COMMAND_MODULES}


def test_python_m_pol_cli_runs_pol():
    r = subprocess.run([sys.executable, "-m", "pol.cli", "--version"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("pol, version"), r.stdout + r.stderr


def test_commands_live_in_the_cli_package_only():
    import importlib.util
    assert importlib.util.find_spec("pol.attacks.cli") is None
    assert importlib.util.find_spec("pol.crypto.cli") is None
