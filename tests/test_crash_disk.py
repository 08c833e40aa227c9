"""Robustness: the proof cannot be written (unwritable output, full disk).

* An output directory that cannot be created or written: `pol train` exits 2 with one clear
  `error: ...` line (as root, chmod does not stop writes, so a path under a regular file stands in).
* A disk that fills up after N checkpoints, simulated in-process by making the writer's file writes
  fail with ENOSPC: training raises `ProofWriteError` (it never goes on unrecorded), and the
  directory is left as an incomplete proof (`verify` -> IncompleteProofError, CLI exit 2), which
  `pol train --resume` finishes, once there is space again, into the proof an uninterrupted run
  writes.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from pol import util
from pol.errors import IncompleteProofError, ProofFormatError, ProofWriteError
from pol.proof import format as fmt
from pol.proof import writer as writer_mod
from pol.verifier import verify

from conftest import run_cli

TASK, EPOCHS, K = "iris-logreg", 2, 5  # T = 16, checkpoints 0, 5, 10, 15, 16


def _one_error_line(r, *fragments) -> str:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "for a traceback" not in lines[0], lines[0]  # not pol's catch-all
    for f in fragments:
        assert f.lower() in lines[0].lower(), (f, lines[0])
    return lines[0]


def _train(out: Path):
    from pol.prover.trainer import train_task
    return train_task(TASK, out, epochs=EPOCHS, k=K)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("disk-ref") / "proof"
    _train(out)
    return json.loads(run_cli("inspect", "--json", out).stdout)["files"]


# ---------------------------------------------------------------------------- unwritable output

def test_output_under_a_regular_file_exits_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for out in (blocker / "sub", blocker / "a" / "b"):
        r = run_cli("train", "--task", TASK, "--epochs", "1", "--out", out)
        msg = _one_error_line(r, "cannot write the proof")
        assert str(out) in msg
    assert blocker.read_text() == "not a directory"


def test_output_that_is_a_regular_file_exits_2(tmp_path):
    f = tmp_path / "proof"
    f.write_text("x")
    r = run_cli("train", "--task", TASK, "--epochs", "1", "--out", f)
    # refused by click's option check (a usage error: exit 2, no traceback)
    assert r.exit_code == 2 and "Traceback" not in r.stdout + r.stderr
    assert "is a file" in r.stderr
    assert f.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_output_in_a_read_only_directory_exits_2(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        r = run_cli("train", "--task", TASK, "--epochs", "1", "--out", parent / "proof")
        _one_error_line(r, "cannot write the proof")
    finally:
        parent.chmod(stat.S_IRWXU)
    assert not (parent / "proof").exists()


def test_resume_of_a_directory_that_is_not_a_run_exits_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_error_line(run_cli("train", "--resume", blocker / "sub"))
    _one_error_line(run_cli("train", "--resume", tmp_path / "nothing-here"))


# ---------------------------------------------------------------------------- full disk

class DiskFull:
    """Counts what the proof writer writes; once `budget` bytes are used, every further write
    fails with ENOSPC (as a full disk would: a partial write, then the error)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.failures = 0
        self.lock = threading.Lock()

    def take(self, n: int) -> int:
        with self.lock:
            room = max(0, self.budget - self.used)
            self.used += min(n, room)
            if n > room:
                self.failures += 1
            return min(n, room)


class _FullFile:
    def __init__(self, f, disk: DiskFull) -> None:
        self._f, self._disk = f, disk

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        n = self._disk.take(len(data))
        if n:
            self._f.write(data[:n])
        if n < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


class _UtilOs:
    """`os` as `pol.util` sees it (its atomic writes: the proof's checkpoints, arrays, progress
    and manifest), with every file it opens for writing passed through `wrap(path, file)`."""

    def __init__(self, wrap) -> None:
        self._wrap = wrap
        self._paths: dict[int, str] = {}

    def open(self, path, flags, mode=0o777, *args, **kw):
        fd = os.open(path, flags, mode, *args, **kw)
        self._paths[fd] = os.fspath(path)
        return fd

    def fdopen(self, fd, mode="r", *args, **kw):
        f = os.fdopen(fd, mode, *args, **kw)
        path = self._paths.pop(fd, None)
        return self._wrap(path, f) if path is not None and any(c in mode for c in "wax+") else f

    def __getattr__(self, name):
        return getattr(os, name)


def _wrap_writes(monkeypatch, wrap) -> None:
    """Pass every file the proof writer writes through `wrap(path, file)`: its journals (opened by
    the writer module itself) and its atomic writes (`pol.util`). Module globals shadow builtins,
    so only the proof writer's files and pol.util's are affected."""
    real_open = builtins.open

    def fake_open(file, mode="r", *args, **kw):
        f = real_open(file, mode, *args, **kw)
        return wrap(os.fspath(file), f) if any(c in mode for c in "wax+") else f
    monkeypatch.setattr(writer_mod, "open", fake_open, raising=False)
    monkeypatch.setattr(util, "os", _UtilOs(wrap))


def _install_full_disk(monkeypatch, disk: DiskFull) -> None:
    _wrap_writes(monkeypatch, lambda path, f: _FullFile(f, disk))


def _assert_incomplete(out: Path) -> None:
    assert not (out / fmt.MANIFEST).exists()
    with pytest.raises(IncompleteProofError):
        verify(out)
    r = run_cli("verify", out)
    _one_error_line(r, "incomplete proof")


def _resume_and_compare(out: Path, reference: dict) -> None:
    last = json.loads((out / fmt.PROGRESS).read_text())["last_checkpoint"]
    r = run_cli("train", "--resume", out)
    if last < 0:
        _one_error_line(r, "before its first checkpoint")
        return
    assert r.exit_code == 0, r.stderr
    assert run_cli("verify", "--all", out).exit_code == 0
    info = json.loads(run_cli("inspect", "--json", out).stdout)
    assert info["files"] == reference
    assert not info["extra_files"], info["extra_files"]


# bytes the writer may use before the disk is full: the first progress.json is ~1.3 kB, each
# checkpoint 260 B + journal rows + a progress rewrite
BUDGETS = [1500, 2000, 3000, 4500, 6000, 7500, 9000, 10500, 12500]


@pytest.mark.parametrize("budget", BUDGETS)
def test_disk_full_after_some_checkpoints(tmp_path, monkeypatch, reference, budget):
    out = tmp_path / "proof"
    disk = DiskFull(budget)
    _install_full_disk(monkeypatch, disk)
    with pytest.raises(ProofWriteError) as e:
        _train(out)
    assert "No space left" in str(e.value) or "ENOSPC" in str(e.value) or disk.failures
    assert disk.failures >= 1
    monkeypatch.undo()  # space again
    _assert_incomplete(out)
    _resume_and_compare(out, reference)


def test_disk_full_before_anything_is_written(tmp_path, monkeypatch):
    """No room even for progress.json: a clear error, and the directory is no proof at all."""
    out = tmp_path / "proof"
    _install_full_disk(monkeypatch, DiskFull(0))
    r = run_cli("train", "--task", TASK, "--epochs", "1", "--out", out)
    _one_error_line(r, "cannot write the proof", "No space left")
    monkeypatch.undo()
    with pytest.raises(ProofFormatError):
        verify(out)


@pytest.mark.parametrize("fail_at", [1, 2, 3, 5, 6, 7, 8, 9])
def test_atomic_write_failing_after_n_calls(tmp_path, monkeypatch, reference, fail_at):
    """`atomic_write` (progress.json after every checkpoint, the arrays and the manifest at the
    end) fails with ENOSPC from its `fail_at`-th call on: `ProofWriteError`, an incomplete proof,
    which resumes."""
    out = tmp_path / "proof"
    real = writer_mod.atomic_write
    calls = [0]

    def failing(path, data, durable=True):
        calls[0] += 1
        if calls[0] >= fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data, durable)
    monkeypatch.setattr(writer_mod, "atomic_write", failing)
    with pytest.raises(ProofWriteError):
        _train(out)
    monkeypatch.undo()
    if fail_at == 1:  # the very first progress.json: not even an incomplete proof
        with pytest.raises(ProofFormatError):
            verify(out)
        return
    _assert_incomplete(out)
    _resume_and_compare(out, reference)


def test_disk_full_through_the_cli_is_one_error_line(tmp_path, monkeypatch):
    out = tmp_path / "proof"
    _install_full_disk(monkeypatch, DiskFull(3000))
    r = run_cli("train", "--task", TASK, "--epochs", "2", "--k", "5", "--out", out)
    _one_error_line(r, "No space left")
    monkeypatch.undo()
    _assert_incomplete(out)


@pytest.mark.parametrize("target", [fmt.PROGRESS, fmt.INDICES, fmt.MANIFEST])
def test_failed_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch, target):
    out = tmp_path / "proof"
    seen = [0]

    def wrap(path, f):
        if Path(path).name.startswith(f".{target}.tmp"):
            seen[0] += 1
            if seen[0] >= 3 or target != fmt.PROGRESS:  # progress: after two checkpoints
                return _FullFile(f, DiskFull(10))
        return f
    _wrap_writes(monkeypatch, wrap)
    with pytest.raises(ProofWriteError):
        _train(out)
    monkeypatch.undo()
    _assert_incomplete(out)
    left = sorted(p.name for p in out.iterdir() if ".tmp" in p.name)
    assert not left, f"temporary files left in the proof: {left}"
