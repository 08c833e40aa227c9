"""Shared fixtures for the core (prover / proof format / verifier / CLI) tests.

Every honest proof is trained once per session into a session temp directory; a test that changes a
proof works on a copy (`proof_copy`). Runs are kept tiny (2 epochs) so the whole suite stays fast
on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from pol.proof import format as fmt
from pol.proof.writer import rehash_manifest
from pol.step.optimizers import MODEL_PREFIX

EPOCHS = 2

# The models here are tiny: one intra-op thread is fastest, and avoids the OpenMP spin-waiting
# that makes a 2-core machine several times slower when anything else runs beside the tests.
# Proofs are trained and verified in this same process, so replays stay bitwise exact.
torch.set_num_threads(int(os.environ.get("POL_TEST_THREADS", "1")))

# Property-based tests are deterministic: the same examples on every run and in CI, so a failure
# never appears at random (derandomize draws the examples from each test's own source, not from a
# fresh seed). POL_FUZZ_RANDOM=1 explores new examples instead (a fuzzing campaign; with
# POL_FUZZ_SCALE=N for N times as many); a failure then prints the example to reproduce it.
try:
    from hypothesis import settings as _hyp_settings
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    _hyp_settings = None
if _hyp_settings is not None:
    _hyp_settings.register_profile("pol-deterministic", derandomize=True, database=None,
                                   print_blob=True)
    _hyp_settings.register_profile("pol-random", derandomize=False, print_blob=True)
    _hyp_settings.load_profile("pol-random" if os.environ.get("POL_FUZZ_RANDOM") == "1"
                               else "pol-deterministic")


# ------------------------------------------------------------------------------- proof helpers

def load_manifest(proof: Path) -> dict:
    return json.loads((Path(proof) / fmt.MANIFEST).read_text())


def write_manifest(proof: Path, body: dict, *, rehash_root: bool) -> None:
    """Write a (modified) manifest; with `rehash_root`, recompute the root digest as a forger
    would (the file digests are left as they are)."""
    body = dict(body)
    if rehash_root:
        body["root_digest"] = fmt.root_digest(body)
    (Path(proof) / fmt.MANIFEST).write_text(json.dumps(body, indent=1, sort_keys=True))


def checkpoint_path(proof: Path, t: int) -> Path:
    return Path(proof) / fmt.checkpoint_name(t)


def bump_weight(state: dict, suffix: str = "weight") -> None:
    """Move the first element of the first model tensor whose name ends in `suffix` by 1e-3."""
    key = next(k for k in state if k.startswith(MODEL_PREFIX) and k.endswith(suffix))
    state[key] = state[key].clone()
    state[key].view(-1)[0] += 1e-3


def tampered_copy(proof: Path, dst: Path, t: int, change=bump_weight) -> Path:
    """A copy of `proof` at `dst` (replacing what is there) with checkpoint t changed by
    `change(tensors)` and the manifest's digests recomputed, as a forger would."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(proof, dst)
    name = fmt.checkpoint_name(t)
    state = load_file(str(dst / name))
    change(state)
    save_file(state, str(dst / name))
    rehash_manifest(dst)
    return dst


def write_tree(root: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    """Write `files` (path relative to root, with / -> bytes) below `root`; returns `files`."""
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    """Every file below `root`: its path relative to root (with /) -> its bytes."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def failed_checks(report) -> set[str]:
    return {c.name for c in report.checks if c.failed}


def check(report, name: str):
    found = [c for c in report.checks if c.name == name]
    assert found, f"no check named {name!r} in {[c.name for c in report.checks]}"
    return found[0]


# ------------------------------------------------------------------------------- CLI helpers

@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str) -> CliResult:
    """Run `pol ARGS` in-process with click's CliRunner (stdout and stderr kept apart). An
    exception that escapes the command (a crash) is re-raised, so a test never mistakes a crash
    for an exit code."""
    from click.testing import CliRunner

    from pol.cli import main

    runner = CliRunner(env={"POL_DEBUG": None})
    r = runner.invoke(main, [str(a) for a in args], catch_exceptions=True)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"pol {' '.join(map(str, args))} crashed with "
                             f"{type(r.exception).__name__}: {r.exception}\n{r.output}"
                             ) from r.exception
    return CliResult(r.exit_code, r.stdout, r.stderr, r.exception)


def assert_unusable(r: CliResult, *fragments: str) -> str:
    """Exit 2, one `error: ...` line on stderr, no traceback; returns the message."""
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: "), r.stderr
    for f in fragments:
        assert f.lower() in lines[0].lower(), (f, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------- proofs

@pytest.fixture(scope="session")
def proofs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("proofs")


def _train(proofs_dir: Path, name: str, task: str, **kw):
    from pol.prover.trainer import train_task
    return train_task(task, proofs_dir / name, epochs=EPOCHS, **kw)


@pytest.fixture(scope="session")
def mlp_run(proofs_dir):
    """digits-mlp, fp32, 2 epochs: T = 90, k = 10, 10 checkpoints."""
    return _train(proofs_dir, "mlp-fp32", "digits-mlp")


@pytest.fixture(scope="session")
def mlp_proof(mlp_run) -> Path:
    return mlp_run.proof


@pytest.fixture(scope="session")
def mlp16_proof(proofs_dir) -> Path:
    return _train(proofs_dir, "mlp-fp16", "digits-mlp", precision="fp16").proof


@pytest.fixture(scope="session")
def iris_proof(proofs_dir) -> Path:
    return _train(proofs_dir, "iris", "iris-logreg").proof


@pytest.fixture(scope="session")
def cnn_proof(proofs_dir) -> Path:
    return _train(proofs_dir, "cnn", "digits-cnn").proof


@pytest.fixture(scope="session")
def mlp_report_all(mlp_proof):
    """The honest digits-mlp proof verified with every segment replayed (shared, read-only)."""
    from pol.verifier import verify
    return verify(mlp_proof, all_segments=True)


@pytest.fixture
def proof_copy(tmp_path):
    """proof_copy(src) -> a fresh copy of the proof `src` that the test may change."""
    n = [0]

    def make(src: Path) -> Path:
        n[0] += 1
        dst = tmp_path / f"proof{n[0]}"
        shutil.copytree(src, dst)
        return dst

    return make


# ------------------------------------------------------------------------------- user data

def make_user_data(n: int = 200, d: int = 12, classes: int = 3, seed: int = 0):
    """A small learnable classification set: float32 features, int64 labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal((d, classes)).astype(np.float32)
    y = (x @ w).argmax(1).astype(np.int64)
    return x, y


USER_MODEL_KWARGS = {"in_features": 12, "num_classes": 3, "hidden": [32], "dropout": 0.3}


def user_model(seed: int = 0) -> nn.Module:
    """A hand-built nn.Sequential equal in structure to pol's `mlp` with USER_MODEL_KWARGS."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(1), nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(32, 3))


def train_attached(model, opt, loader, epochs: int, loss_fn=F.cross_entropy,
                   after_step=None) -> None:
    """A user's plain loop around an optimizer from `pol.attach`: zero_grad, forward, backward,
    step(loss=...), then `after_step()` if given (an lr scheduler's step)."""
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step(loss=loss)
            if after_step is not None:
                after_step()


def save_npz(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    np.savez(path, x=x, y=y)
    return path


@dataclass
class UserProof:
    proof: Path
    npz: Path
    x: np.ndarray
    y: np.ndarray
    digest: str


@pytest.fixture(scope="session")
def user_proof(proofs_dir) -> UserProof:
    """A proof recorded around a hand-written training loop (Recorder.record_batch + step) of an
    MLP with dropout p=0.3 on user data, with a user-chosen batch order."""
    import torch.nn.functional as F

    from pol.prover.recorder import Recorder
    from pol.spec import ModelSpec

    x, y = make_user_data()
    model = user_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    out = proofs_dir / "user-loop"
    rec = Recorder(out, model=model, optimizer=opt, data=(x, y),
                   model_spec=ModelSpec("mlp", dict(USER_MODEL_KWARGS)), batch_size=32,
                   epochs=EPOCHS, k=3, seed=7, init="from-seed")
    order_rng = np.random.default_rng(123)  # the user's own shuffling, not pol's
    for _epoch in range(rec.epochs):
        order = order_rng.permutation(len(x))
        for s in range(rec.steps_per_epoch):
            idx = order[s * 32:(s + 1) * 32]
            xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
            rec.record_batch(idx, xb, yb)
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            rec.step(loss)
    digest = rec.close()
    npz = save_npz(proofs_dir / "user-data.npz", x, y)
    return UserProof(out, npz, x, y, digest)


def record_until(rec, model: nn.Module, opt, x: np.ndarray, y: np.ndarray,
                 stop_after: int | None = None, scheduler=None):
    """A user's own training loop around a Recorder, resumable: steps already in the proof are
    skipped; with `stop_after`, the writer is aborted at that step (what a crash leaves: no
    manifest) and None is returned; else the proof's root digest."""
    for epoch in range(rec.epochs):
        for s, idx in enumerate(rec.epoch_batches(epoch)):
            if epoch * rec.steps_per_epoch + s < rec.t:
                continue  # already in the proof
            if stop_after is not None and rec.t == stop_after:
                rec.writer.abort()
                return None
            xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
            rec.record_batch(idx, xb, yb)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            rec.step(loss)
            if scheduler is not None:  # the user's lr scheduler, stepped after each step
                scheduler.step()
    return rec.close()
