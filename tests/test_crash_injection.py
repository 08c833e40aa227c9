"""Robustness: `pol train` killed with SIGKILL at random moments, then resumed.

One uninterrupted run (`pol train --task digits-mlp --epochs 2 --k 3`: T = 90 steps, 31
checkpoints) is timed and kept as the reference. Then the same command is killed at seeded random
moments spread over process start -> finish, plus at moments picked by polling progress.json for a
checkpoint number (the training itself is a small window at the end of the process's life). After
each kill the directory must be one of:

* absent, empty, or without a first checkpoint: `pol verify` exits 2, and `pol train --resume`
  exits 2 with one clear `error: ...` line;
* an incomplete proof: `pol verify` exits 2 with "incomplete proof"; `pol train --resume` finishes;
  the result verifies with `--all` (exit 0) and every file digest equals the reference's;
* a finished proof (the kill came after the manifest): it verifies with `--all`, same digests.

Never a proof that verifies as complete yet lacks steps. The trials run two at a time (the kills
in subprocesses, the checks in-process with the CLI runner); counts are printed (pytest -s).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import pytest

from pol.proof import format as fmt

from conftest import run_cli

pytestmark = pytest.mark.slow

TRAIN_ARGS = ["train", "--task", "digits-mlp", "--epochs", "2", "--k", "3"]
T_STEPS, N_CKPTS = 90, 31
N_TIMED, N_POLLED = 10, 10
SEED = 20240917

# the child computes with one thread, like this process (conftest), so a resume here continues
# the child's run bit for bit
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "POL_DEBUG"}
CHILD_ENV.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _spawn(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pol.cli", *TRAIN_ARGS, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=CHILD_ENV)


def _last_checkpoint(out: Path) -> int | None:
    try:
        return json.loads((out / fmt.PROGRESS).read_text())["last_checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class Reference:
    proof: Path
    seconds: float  # process start -> exit
    first_progress: float  # process start -> progress.json seen
    manifest: float  # process start -> manifest.json seen
    files: dict


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    out = tmp_path_factory.mktemp("crash-ref") / "proof"
    t0 = time.perf_counter()
    p = _spawn(out)
    first = man = None
    while p.poll() is None:
        now = time.perf_counter() - t0
        if first is None and (out / fmt.PROGRESS).exists():
            first = now
        if man is None and (out / fmt.MANIFEST).exists():
            man = now
        time.sleep(0.002)
    seconds = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr.read().decode()
    info = json.loads(run_cli("inspect", "--json", out).stdout)
    assert info["total_steps"] == T_STEPS and info["num_checkpoints"] == N_CKPTS
    return Reference(out, seconds, first or seconds, man or seconds, info["files"])


@dataclass
class Trial:
    n: int
    how: str  # "timed" or "polled"
    target: float | int  # delay in seconds, or checkpoint number
    extra: float = 0.0  # polled: a further delay after the checkpoint was seen
    out: Path | None = None
    killed_at: float = 0.0
    returncode: int | None = None
    seen_checkpoint: int | None = None


def _run_trial(trial: Trial) -> Trial:
    t0 = time.perf_counter()
    p = _spawn(trial.out)
    try:
        if trial.how == "timed":
            try:
                p.wait(timeout=trial.target)
            except subprocess.TimeoutExpired:
                pass
        else:
            progress = trial.out / fmt.PROGRESS
            while p.poll() is None:
                if not progress.exists():  # imports and data loading: seconds; poll lazily
                    time.sleep(0.01)
                    continue
                c = _last_checkpoint(trial.out)
                if c is not None and c >= trial.target:
                    trial.seen_checkpoint = c
                    if trial.extra:
                        time.sleep(trial.extra)
                    break
                time.sleep(0.0003)
        trial.killed_at = time.perf_counter() - t0
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    finally:
        p.wait(timeout=60)
        p.stderr.close()
    trial.returncode = p.returncode
    return trial


def _one_error_line(r, *fragments) -> str:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "for a traceback" not in lines[0], lines[0]  # not pol's catch-all
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def _assert_complete_and_equal(out: Path, ref: Reference, what: str) -> dict:
    r = run_cli("verify", "--all", out)
    assert r.exit_code == 0, (what, r.stdout, r.stderr)
    info = json.loads(run_cli("inspect", "--json", out).stdout)
    # never a proof that verifies yet lacks steps
    assert info["total_steps"] == T_STEPS and info["num_checkpoints"] == N_CKPTS, (what, info)
    assert info["files"] == ref.files, f"{what}: file digests differ from the uninterrupted run"
    return info


def _check(trial: Trial, ref: Reference) -> str:
    """Classify what the kill left behind and drive it to a finished proof where possible;
    returns the outcome kind."""
    out = trial.out
    what = f"trial {trial.n} ({trial.how} {trial.target}, killed at {trial.killed_at:.3f}s)"
    if trial.returncode == 0:
        _assert_complete_and_equal(out, ref, what)
        return "finished before the kill"
    assert trial.returncode == -signal.SIGKILL, (what, trial.returncode)
    v = run_cli("verify", "--all", out)
    if (out / fmt.MANIFEST).exists():
        info = _assert_complete_and_equal(out, ref, what)
        return "killed after the manifest" + (" (leftovers)" if info["extra_files"] else "")
    # not finished: must never verify
    assert v.exit_code == 2, (what, v.exit_code, v.stdout, v.stderr)
    exists, has_progress = out.exists(), (out / fmt.PROGRESS).exists()
    last = _last_checkpoint(out)
    res = run_cli("train", "--resume", out)
    if not exists:
        _one_error_line(v, "no proof at")
        _one_error_line(res)
        return "no directory yet"
    if not has_progress:
        _one_error_line(v)
        _one_error_line(res, "progress.json")
        return "directory without progress"
    _one_error_line(v, "incomplete proof")
    if last == -1:
        # only a run killed before its first checkpoint may refuse to resume
        _one_error_line(res, "before its first checkpoint")
        return "killed before the first checkpoint"
    assert res.exit_code == 0, (what, last, res.stdout, res.stderr)
    info = _assert_complete_and_equal(out, ref, what)
    # a kill inside atomic_write leaves `.NAME.tmpPID` in the root: the resume must remove it
    # (deterministic version: test_resume_after_a_kill_inside_atomic_write_leaves_no_leftovers)
    assert not info["extra_files"], f"{what}: resumed proof carries {info['extra_files']}"
    return "resumed to an identical proof"


def test_sigkill_at_random_moments_then_resume(reference, tmp_path):
    rng = random.Random(SEED)
    ref = reference
    trials: list[Trial] = []
    # timed: spread over the whole life of the process (start -> finish), one uniform draw per
    # equal slice so that late moments are always among them
    span = ref.seconds * 1.02
    for i in range(N_TIMED):
        delay = rng.uniform(i * span / N_TIMED, (i + 1) * span / N_TIMED)
        trials.append(Trial(len(trials), "timed", round(delay, 4)))
    # polled: at (or just after) a given checkpoint, -1 = progress.json written, none on disk yet
    choices = [-1, 0] + fmt.checkpoint_steps(T_STEPS, 3)[1:]
    for i in range(N_POLLED):
        trials.append(Trial(len(trials), "polled", rng.choice(choices),
                            extra=rng.choice([0.0, 0.0, rng.uniform(0, 0.004)])))
    for t in trials:
        t.out = tmp_path / f"run{t.n}"

    outcomes: Counter = Counter()
    by_trial = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(_run_trial, t) for t in trials]
        for f in as_completed(futures):
            trial = f.result()
            kind = _check(trial, ref)
            outcomes[kind] += 1
            by_trial.append((trial.n, trial.how, trial.target, round(trial.killed_at, 3),
                             trial.seen_checkpoint, kind))
            shutil.rmtree(trial.out, ignore_errors=True)
    elapsed = time.perf_counter() - t0

    print(f"\ncrash injection: reference run {ref.seconds:.2f}s (progress.json at "
          f"{ref.first_progress:.2f}s, manifest at {ref.manifest:.2f}s); {len(trials)} SIGKILL "
          f"trials in {elapsed:.1f}s")
    for row in sorted(by_trial):
        print("  trial %2d %-6s target %-8s killed at %6.3fs (checkpoint seen %s): %s" % row)
    for kind, n in outcomes.most_common():
        print(f"  {n:3d} x {kind}")
    assert len(trials) >= 20 and sum(outcomes.values()) == len(trials)
    # the polled kills land inside training: most of them must have needed (and got) a resume
    assert sum(n for k, n in outcomes.items() if k.startswith("resumed")) >= 3, outcomes


class _Interrupt(BaseException):
    pass


def test_resume_after_a_kill_inside_atomic_write_leaves_no_leftovers(reference, tmp_path,
                                                                      monkeypatch):
    """A SIGKILL inside `atomic_write` (after `.NAME.tmpPID` is written, before the rename) leaves
    that temporary file in the proof's root. Reproduced deterministically: training is interrupted
    in-process after 50 steps, then such leftovers are planted before `pol train --resume`."""
    from pol.prover import recorder
    from pol.prover.trainer import train_task

    out = tmp_path / "run"
    real_step = recorder.Recorder.step

    def step(self, loss=None):
        real_step(self, loss)
        if self.t == 50:
            raise _Interrupt()
    monkeypatch.setattr(recorder.Recorder, "step", step)
    with pytest.raises(_Interrupt):
        train_task("digits-mlp", out, epochs=2, k=3)
    monkeypatch.undo()
    assert _last_checkpoint(out) == 48 and not (out / fmt.MANIFEST).exists()
    for name in (fmt.PROGRESS, fmt.INDICES, fmt.MANIFEST):
        (out / f".{name}.tmp4242").write_bytes(b"partial")
    r = run_cli("train", "--resume", out)
    assert r.exit_code == 0, r.stderr
    info = _assert_complete_and_equal(out, reference, "resume with leftovers")
    assert not info["extra_files"], f"the resumed proof carries leftovers {info['extra_files']}"
