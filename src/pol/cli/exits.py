"""Exit codes and the one handler that turns pol's exceptions into them.

Exit codes: 0 valid / success, 1 invalid (a check failed: a proof, a signature, a ledger),
2 unusable input (missing or corrupt file, unknown format version, wrong key, bad option, --data
that is not the proof's dataset), 3 pending (`pol verify --request-data`), 4 inconclusive (a
float32 proof replayed on other hardware than the prover's failed only where rounding drift can
make an honest proof fail: verify on the prover's kind of hardware), 130 interrupted
(Ctrl-C). An error is one `error: ...` line on stderr, never a traceback (POL_DEBUG=1 shows one).

An exception says its own exit code through an `exit_code` class attribute (pol.errors.PolError
subclasses, pol.crypto errors); the fallback below is the mapping used before that attribute
existed, so both old and new exception classes map the same way.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from typing import Any, Callable, NoReturn, TypeVar

import click

from pol.errors import EXIT_INVALID, EXIT_UNUSABLE  # the error tree's two branches

EXIT_VALID, EXIT_PENDING, EXIT_INCONCLUSIVE, EXIT_INTERRUPTED = 0, 3, 4, 130

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> NoReturn:
    """Print `error: MESSAGE` (one line) on stderr and exit with `code`."""
    click.echo("error: " + (" ".join(str(message).split())), err=True)
    sys.exit(code)


def exit_code_of(e: BaseException) -> int:
    """The exit code for an exception a command raised (not a click or system exit)."""
    code = getattr(e, "exit_code", None)
    if isinstance(code, int):
        return code
    from pol.errors import IntegrityError  # (before exit_code existed: still right for it)
    return EXIT_INVALID if isinstance(e, IntegrityError) else EXIT_UNUSABLE


def message_of(e: BaseException) -> str:
    """The one-line message for an exception a command raised."""
    from pol.errors import PolError
    if isinstance(e, PolError) or isinstance(getattr(e, "exit_code", None), int):
        return str(e) or type(e).__name__
    if isinstance(e, OSError):
        return f"{e.filename or ''}: {e.strerror or e}"
    import sqlite3
    if isinstance(e, sqlite3.Error):  # a damaged ledger file (the Ledger checks what it can)
        return f"the ledger database is not usable: {e}"
    return f"unexpected {type(e).__name__}: {e} (set POL_DEBUG=1 for a traceback)"


# -------------------------------------------------------------------------------- Ctrl-C

def _interrupted_at_startup(signum, frame):  # noqa: ARG001
    """Ctrl-C while pol starts (imports torch, parses options): leave at once, one line, no
    traceback, and no half-imported C++ extension unwinding (os._exit skips its destructors).
    Once a command runs, Ctrl-C raises KeyboardInterrupt again, so that its cleanup runs."""
    try:
        os.write(2, b"error: interrupted\n")
    finally:
        os._exit(EXIT_INTERRUPTED)


_startup_handler = [False]  # installed (and not yet handed over to the command)?


def install_startup_interrupt() -> None:
    """Called before the heavy imports when pol runs as a program (console script, -m)."""
    try:
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # the caller ignores Ctrl-C
            return
        signal.signal(signal.SIGINT, _interrupted_at_startup)
        _startup_handler[0] = True
    except ValueError:  # not the main thread: leave it
        pass


def _start_command(imports_torch: bool) -> None:
    """Import torch while Ctrl-C still leaves at once (see _interrupted_at_startup), then let
    Ctrl-C raise KeyboardInterrupt for the command itself (handled: "interrupted", exit 130)."""
    if imports_torch and _startup_handler[0]:
        try:
            import torch  # noqa: F401
        except ImportError:  # pragma: no cover
            pass
    try:
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        _startup_handler[0] = False
    except ValueError:  # pragma: no cover - not the main thread
        pass


def handle_errors(fn: F | None = None, *, imports_torch: bool = True) -> Any:
    """Decorate a command: map pol's exceptions to exit codes and one-line messages.
    `imports_torch=False` for the commands that never need torch (keys, seal, open, ledger)."""

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _start_command(imports_torch)
            try:
                return f(*args, **kwargs)
            except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
                raise
            except KeyboardInterrupt:
                fail("interrupted", EXIT_INTERRUPTED)
            except Exception as e:  # noqa: BLE001 - every error is one line
                if os.environ.get("POL_DEBUG"):
                    raise
                fail(message_of(e), exit_code_of(e))

        return wrapper  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate
