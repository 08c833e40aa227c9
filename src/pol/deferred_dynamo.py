"""`torch._dynamo` imported only when something needs it, in pol's own command-line processes.

Every torch optimizer imports the compiler stack (`torch._dynamo`, ~1–1.3 s, more than torch
itself on a small model's verification) in its constructor and at every step, only to mark its
methods "not to be compiled" (`torch._dynamo.disable`) and to place graph breaks
(`torch._dynamo.graph_break`), which do nothing outside `torch.compile`. After `install()`, an
`import torch._dynamo` gets a stand-in module (from a finder on `sys.meta_path`) that gives those
two for free while nothing has loaded the real module; any other use of it (an attribute, a
submodule import, `torch.compile`) loads the real `torch._dynamo` in its place, and from then on
the stand-in's wrappers call the real `disable` too, so behaviour is torch's own in every case.

Only `pol`'s command line installs it (its processes run pol's steps, never a compiled function
of pol's), and only before anything has imported `torch._dynamo`; a library user's process is
never touched (pol's replay workers, its own processes, install it too). Torch-free: it imports
torch only when the real module is needed.
"""

from __future__ import annotations

import functools
import importlib
import sys
import threading
import types
from typing import Any, Callable

NAME = "torch._dynamo"
_lock = threading.RLock()
_real: types.ModuleType | None = None
_loading = False
_creating = False


def _load_real() -> types.ModuleType:
    """The real `torch._dynamo`, imported in the stand-in's place (once)."""
    global _real, _loading
    with _lock:
        if _real is None:
            _loading = True
            try:
                if sys.modules.get(NAME) is _STUB:
                    del sys.modules[NAME]
                torch = sys.modules.get("torch")
                if torch is not None and torch.__dict__.get("_dynamo") is _STUB:
                    del torch.__dict__["_dynamo"]
                _real = importlib.import_module(NAME)
            finally:
                _loading = False
        return _real


class _Standin(types.ModuleType):
    """`disable` and `graph_break` as they behave outside `torch.compile`; anything else, the
    real module's."""

    def disable(self, fn: Callable | None = None, recursive: bool = True, **kw: Any):
        if fn is None:  # the decorator form, disable(recursive=False)(fn)
            return functools.partial(self.disable, recursive=recursive, **kw)
        real_disabled: list[Callable] = []

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if _real is None:  # nothing compiles: disabling compilation is the call itself
                return fn(*args, **kwargs)
            if not real_disabled:
                real_disabled.append(_real.disable(fn, recursive, **kw))
            return real_disabled[0](*args, **kwargs)
        return call

    def graph_break(self, *args: Any, **kwargs: Any) -> None:
        if _real is not None:
            _real.graph_break(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # a dunder loads nothing (a scan of sys.modules for __file__, the import system setting
        # the stand-in up), except __path__ afterwards: a submodule's import needs the real one
        if name.startswith("__") and (name != "__path__" or _creating):
            raise AttributeError(name)
        return getattr(_load_real(), name)


_STUB = _Standin(NAME, __doc__)


class _Finder:
    """Gives the stand-in for `import torch._dynamo` until the real module is needed (nothing
    appears in sys.modules before something imports it)."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None):
        if name != NAME or _real is not None or _loading:
            return None
        import importlib.util
        return importlib.util.spec_from_loader(NAME, _Loader())


class _Loader:
    @staticmethod
    def create_module(spec: Any) -> types.ModuleType:
        global _creating
        _creating = True  # until exec_module: the import system reads the module's attributes
        return _STUB

    @staticmethod
    def exec_module(module: types.ModuleType) -> None:
        global _creating
        _creating = False


_FINDER = _Finder()


def install() -> bool:
    """Serve `import torch._dynamo` with the stand-in from now on, unless it is loaded already;
    whether it did."""
    with _lock:
        if NAME in sys.modules or _real is not None:
            return False
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)
        return True


def active() -> bool:
    """Whether the stand-in serves `torch._dynamo` (the real module not loaded)."""
    return _real is None and (sys.modules.get(NAME) is _STUB
                              or (NAME not in sys.modules and _FINDER in sys.meta_path))
