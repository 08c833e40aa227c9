"""Rebuilding a model, its data pipeline and its loss from a spec, without trusting the proof.

A spec names its model either by a built-in architecture name or by a `module:callable` factory.
A proof can never make the verifier import arbitrary code: a factory's module must be in the set the
verifier trusts (`--trust-module`), and its source digest recorded by the prover is compared with
the installed one.

Where a trusted module is found: on `sys.path` as usual (an installed package, PYTHONPATH), else in
the current directory, for the module the user named with `--trust-module` only (the console script
does not put the current directory on `sys.path`, and pol does not either: a file in the directory
that shadows any other module name stays ignored).

A model factory must live in a module of its own, importable without side effects: a factory in the
running script (`__main__`, or the module whose file is the script) is refused, because importing
the script again would run its training again (and a verifier importing it would run a training
that may overwrite the proof being verified). A factory module whose top level calls pol's training
entry points (`Recorder`, `fit`, `train_task`, ...) outside an `if __name__ == "__main__":` block is
refused too, and, whatever the source looks like, a `Recorder` started while a factory module is
being imported refuses to start (`importing_factory_module`).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
from typing import Iterable, Iterator

import torch
from torch import nn

from pol.errors import ConfigError, PolError, ProofFormatError, UntrustedFactoryError
from pol.spec import ModelSpec

_FACTORY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def _trusted(module: str, trusted: Iterable[str]) -> bool:
    return any(module == t or module.startswith(t + ".") for t in trusted)


# pol's entry points that train and write a proof: a factory module calling one at its top level
# would train (and write) whenever it is imported, by the prover's model check and by a verifier
_TRAINING_CALLS = frozenset({"Recorder", "fit", "train_task", "train_spec", "run_loop",
                             "ProofWriter", "resume_task"})
_importing: list[str] = []  # factory modules being imported by build_factory_model, innermost last


def importing_factory_module() -> str | None:
    """The model factory module that pol is importing right now, if any (the Recorder refuses to
    start while one is: an import must not train, nor write a proof)."""
    return _importing[-1] if _importing else None


@contextlib.contextmanager
def _importing_module(name: str) -> Iterator[None]:
    _importing.append(name)
    try:
        yield
    finally:
        _importing.pop()


def _find_spec(module_name: str):
    """The import spec of a (trusted) factory module: from `sys.path` as usual, else, for a
    top-level name not found there, from the current directory (only that name: the directory is
    never put on `sys.path`). None when it is nowhere."""
    if module_name in sys.modules:
        return getattr(sys.modules[module_name], "__spec__", None)
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    if spec is None and "." not in module_name:
        spec = importlib.machinery.PathFinder.find_spec(module_name, [os.getcwd()])
    return spec


def _import_module(module_name: str):
    """Import a factory module found by `_find_spec` (the current-directory fallback included: the
    module is registered under its name, so its own submodules import normally)."""
    top = module_name.split(".")[0]
    if top not in sys.modules:
        try:
            found = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            found = None
        if found is None:
            spec = importlib.machinery.PathFinder.find_spec(top, [os.getcwd()])
            if spec is not None and spec.loader is not None:
                module = importlib.util.module_from_spec(spec)
                sys.modules[top] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(top, None)
                    raise
    return importlib.import_module(module_name)


def module_source_digest(module_name: str) -> str:
    spec = _find_spec(module_name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return ""
    with open(spec.origin, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _main_script_names() -> tuple[set[str], set[str]]:
    """(module names, resolved file paths) under which the running script could be imported."""
    names = {"__main__"}
    files: set[str] = set()
    main = sys.modules.get("__main__")
    main_spec = getattr(main, "__spec__", None)
    if main_spec is not None and main_spec.name:  # python -m pkg.train
        names.add(main_spec.name)
    for f in (getattr(main, "__file__", None), sys.argv[0] if sys.argv else None):
        if f and os.path.isfile(f):
            files.add(os.path.realpath(f))
    return names, files


def _is_main_guard(node: ast.stmt) -> bool:
    t = node.test if isinstance(node, ast.If) else None
    return (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name)
            and t.left.id == "__name__" and len(t.comparators) == 1
            and isinstance(t.comparators[0], ast.Constant)
            and t.comparators[0].value == "__main__")


def _top_level_training_calls(source: str) -> list[tuple[int, str]]:
    """(line, name) of each call to one of pol's training entry points that runs when the module
    is imported: anywhere in its top-level statements except function and class bodies (which do
    not run at import) and an `if __name__ == "__main__":` block."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []  # the import reports it
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for d in getattr(node, "decorator_list", []):  # decorators do run
                visit(d)
            return
        if isinstance(node, ast.ClassDef):
            for d in node.decorator_list + node.bases + [k.value for k in node.keywords]:
                visit(d)
            return
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) \
                else None
            if name in _TRAINING_CALLS:
                found.append((node.lineno, name))
        for child in ast.iter_child_nodes(node):
            visit(child)

    for stmt in tree.body:
        if _is_main_guard(stmt):
            for s in stmt.orelse:
                visit(s)
            continue
        visit(stmt)
    return found


def check_factory_module(module_name: str, arch: str) -> None:
    """Refuse a factory module that importing would run a training from: the running script
    itself, or a module whose top level calls pol's training entry points (ConfigError, naming the
    fix)."""
    fix = ("define the model class in a module of its own (e.g. mynet.py beside the script, "
           "without training code at its top level) and name it as ModelSpec('mynet:MyNet', ...)")
    names, files = _main_script_names()
    if module_name in names:
        raise ConfigError(f"model factory {arch!r} is defined in the running script: the "
                          f"verifier (and the prover's own model check) would have to import the "
                          f"script, which runs its training again; {fix}")
    parts = module_name.split(".")
    for i in range(1, len(parts) + 1):
        with _importing_module(module_name):  # finding pkg.sub imports pkg: guarded as well
            spec = _find_spec(".".join(parts[:i]))
        origin = getattr(spec, "origin", None) if spec is not None else None
        if not origin or not origin.endswith(".py") or not os.path.isfile(origin):
            continue
        if os.path.realpath(origin) in files:
            raise ConfigError(f"model factory {arch!r} is in {origin}, the running script: "
                              f"importing it would run the script's training again; {fix}")
        try:
            with open(origin, encoding="utf-8") as f:
                source = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        calls = _top_level_training_calls(source)
        if calls:
            line, name = calls[0]
            raise ConfigError(f"model factory module {'.'.join(parts[:i])} ({origin}) calls "
                              f"{name}() at its top level (line {line}): importing it would "
                              f"train and write a proof; {fix}, or put the training under "
                              "`if __name__ == \"__main__\":`")


def build_factory_model(ms: ModelSpec, trusted_modules: Iterable[str] = ()) -> nn.Module:
    """Instantiate a `module:callable` factory's model, importing its module only when trusted
    (no init applied beyond the constructor's own). Built-in names: `pol.step.build_model`."""
    if not _FACTORY_RE.match(ms.arch):
        raise ProofFormatError(f"model factory {ms.arch!r} is not of the form module:callable")
    module_name, attr = ms.arch.split(":")
    if not _trusted(module_name, trusted_modules):
        raise UntrustedFactoryError(
            f"the proof's model comes from {ms.arch!r}; pol imports user code only when told to: "
            f"pass --trust-module {module_name.split('.')[0]} if you trust it")
    try:
        check_factory_module(module_name, ms.arch)
        with _importing_module(module_name):
            fn = getattr(_import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ProofFormatError(f"cannot import model factory {ms.arch}: {e} (pol looks on "
                               f"sys.path, then for {module_name.split('.')[0]} in the current "
                               f"directory {os.getcwd()})") from None
    except PolError:
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001 - user code at import: never a crash
        raise ProofFormatError(f"importing model factory module {module_name} failed: "
                               f"{type(e).__name__}: {e}") from None
    try:
        model = fn(**ms.kwargs)
    except TypeError as e:
        raise ProofFormatError(f"model factory {ms.arch} rejected its arguments: {e}") from None
    if not isinstance(model, nn.Module):
        raise ProofFormatError(f"model factory {ms.arch} did not return a torch.nn.Module")
    return model


def model_spec_for(arch: str, kwargs: dict | None = None, init: str = "torch-default") -> ModelSpec:
    """A ModelSpec for a built-in arch or a factory, with the factory's source digest recorded."""
    source = ""
    if ":" in arch:
        if not _FACTORY_RE.match(arch):
            raise ConfigError(f"model factory {arch!r} is not of the form module:callable")
        check_factory_module(arch.split(":")[0], arch)
        source = module_source_digest(arch.split(":")[0])
    return ModelSpec(arch=arch, kwargs=dict(kwargs or {}), init=init, source_sha256=source)


def same_architecture(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype
                                        for k in sa)


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA GPU is available")
    return dev
