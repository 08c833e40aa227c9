"""Host time of a replayed step outside `update()`, against a training step's loop overhead
(issue 13: a GPU replay is bound by its host thread, so every µs the replay spends around the
shared step is a µs the step is slower than training's).

A tiny model (an MLP on CIFAR-shaped synthetic data, batch 128: the input bytes of ResNet-20's
batch, almost none of its compute) is trained once through pol's own path (`train_spec`, what
`pol train` runs) and verified with `verify(all_segments=True)` (`pol verify --all`), `--repeats`
times per mode. Per step, in µs of wall time on this thread:

  training   run_loop's time per step, split into update(), the checkpoints (Recorder._checkpoint)
             and the rest: the loop overhead (the gather, record_batch, step)
  replay     _replay_steps' time per step, split into update() and the rest: what the replay does
             around the step (the batch's indices, its Merkle check against the recorded batch
             hash, the gather, torch.from_numpy, on a GPU the pinning; the lrs; the progress)

Modes (`pol.verifier.parallel.PREFETCH`): `inline` prepares each batch on the replay's thread,
`prefetch` on a background thread a few batches ahead; the default runs both (alternating rounds)
and prints medians (min–max). `--no-prefetch` / `--prefetch`: one mode only. `--policy hardened`
adds the data-dependence probe of each segment's first step (its extra work counts as outside).
A last pair of lines times the batches' preparation alone (update() replaced by a no-op): wall
and the replay thread's CPU time per step.

    python benchmarks/bench_replay_host.py                      # CPU, both modes
    python benchmarks/bench_replay_host.py --no-prefetch --repeats 5
    python benchmarks/bench_replay_host.py --device cuda --n-train 16384 --k 64
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--no-prefetch", action="store_true", help="inline batches only")
    mode.add_argument("--prefetch", action="store_true", help="prefetched batches only")
    p.add_argument("--n-train", type=int, default=8192, help="samples (batch 128)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--k", type=int, default=64, help="steps per segment")
    p.add_argument("--hidden", type=int, default=8, help="the MLP's hidden width")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="verifications per mode")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: as is)")
    p.add_argument("--policy", default="paper", choices=("paper", "hardened"))
    p.add_argument("--work", default=None, help="directory for the proof (default: a temp dir)")
    return p.parse_args()


class _Timer:
    """Wall seconds spent inside a function while installed as `owner.name`."""

    def __init__(self, owner, name: str):
        self.owner, self.name, self.orig = owner, name, getattr(owner, name)
        self.seconds, self.calls = 0.0, 0

    def __enter__(self):
        orig = self.orig

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1
        setattr(self.owner, self.name, timed)
        return self

    def __exit__(self, *exc):
        setattr(self.owner, self.name, self.orig)


def train(a, out: Path) -> dict:
    import torch

    import pol.prover.trainer as trainer
    import pol.step
    from pol.prover.recorder import Recorder
    from pol.spec import ModelSpec
    from pol.tasks import build_spec
    dev = torch.device(a.device).type
    spec, tr, te = build_spec("synthetic-resnet20", epochs=a.epochs, k=a.k,
                              batch_size=a.batch_size, device=dev,
                              deterministic=trainer.default_deterministic(None, dev),
                              dataset_params={"n_train": a.n_train, "n_test": 16})
    spec = dataclasses.replace(spec, model=ModelSpec(
        "mlp", {"in_features": 3 * 32 * 32, "num_classes": 10, "hidden": [a.hidden]},
        init="torch-default"))
    if a.threads:
        spec = dataclasses.replace(spec, cpu_threads=a.threads)
    with _Timer(trainer, "run_loop") as loop, _Timer(pol.step, "update") as upd, \
            _Timer(Recorder, "_checkpoint") as ckpt:
        r = trainer.train_spec(spec, tr, te, out, device=torch.device(a.device), overwrite=True)
    n = r.total_steps
    return {"steps": n, "total": loop.seconds / n, "update": upd.seconds / n,
            "checkpoints": ckpt.seconds / n,
            "outside": (loop.seconds - upd.seconds - ckpt.seconds) / n}


def replay(a, out: Path, prefetch: bool) -> dict:
    import pol.verifier.parallel as par
    from pol.verifier import verify
    steps, seconds = [0], [0.0]
    orig = par._replay_steps

    def timed(ctx, proof, data, leaves, s0, s1, *rest):
        t0 = time.perf_counter()
        try:
            return orig(ctx, proof, data, leaves, s0, s1, *rest)
        finally:
            seconds[0] += time.perf_counter() - t0
            steps[0] += s1 - s0
    par.PREFETCH, par._replay_steps = prefetch, timed
    try:
        with _Timer(par, "update") as upd:
            rep = verify(out, all_segments=True, policy=a.policy, device=a.device)
    finally:
        par.PREFETCH, par._replay_steps = None, orig
    if not rep.valid:
        raise SystemExit(f"the replay rejected the honest proof: {rep}")
    n = steps[0]
    return {"steps": n, "total": seconds[0] / n, "update": upd.seconds / n,
            "outside": (seconds[0] - upd.seconds) / n}


def prep_only(a, out: Path, prefetch: bool) -> dict:
    """_replay_steps over every segment with update() a no-op: the batches' preparation alone
    (wall, and CPU time of this thread), with warm caches (no step in between)."""
    import torch

    import pol.verifier.parallel as par
    from pol.proof.hashing import sample_leaves
    from pol.proof.reader import open_proof
    from pol.verifier.session import load_verifier_data
    proof = open_proof(out)
    data = load_verifier_data(proof.manifest.spec, None)
    leaves = sample_leaves(data.x, data.y)
    ctx = type("Ctx", (), {"device": torch.device(a.device)})()
    ck = proof.manifest.checkpoints
    loss = torch.zeros((), device=a.device)
    orig, par.update, par.PREFETCH = par.update, (lambda *args: loss), prefetch
    try:
        w0, c0 = time.perf_counter(), time.thread_time()
        for s0, s1 in zip(ck, ck[1:]):
            par._replay_steps(ctx, proof, data, leaves, s0, s1, {}, None, None)
        wall, cpu = time.perf_counter() - w0, time.thread_time() - c0
    finally:
        par.update, par.PREFETCH = orig, None
    n = ck[-1] - ck[0]
    return {"wall": wall / n, "cpu": cpu / n}


def _us(values: list[float]) -> str:
    v = [1e6 * x for x in values]
    return f"{statistics.median(v):8.1f} ({min(v):.1f}–{max(v):.1f})"


def main() -> None:
    a = _args()
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    modes = [False] if a.no_prefetch else [True] if a.prefetch else [False, True]
    with tempfile.TemporaryDirectory(dir=a.work) as tmp:
        out = Path(tmp) / "proof"
        tr = train(a, out)
        replay(a, out, modes[0])  # warm-up: imports, allocator, first kernels
        runs: dict[bool, list[dict]] = {m: [] for m in modes}
        preps: dict[bool, list[dict]] = {m: [] for m in modes}
        for _ in range(a.repeats):
            for m in modes:
                runs[m].append(replay(a, out, m))
                preps[m].append(prep_only(a, out, m))
    print(f"device {a.device}, torch threads {torch.get_num_threads()}, batch {a.batch_size}, "
          f"MLP hidden {a.hidden}, {tr['steps']} steps, k = {a.k}, policy {a.policy}")
    print("µs per step (median (min–max) over the repeats for the replay)")
    print(f"training  total {1e6 * tr['total']:8.1f}  update() {1e6 * tr['update']:8.1f}  "
          f"checkpoints {1e6 * tr['checkpoints']:8.1f}  loop overhead "
          f"{1e6 * tr['outside']:8.1f}")
    for m in modes:
        r = runs[m]
        print(f"replay {'prefetch' if m else 'inline  '}  total {_us([x['total'] for x in r])}  "
              f"update() {_us([x['update'] for x in r])}  outside update() "
              f"{_us([x['outside'] for x in r])}")
    for m in modes:
        r = preps[m]
        print(f"prep only, update() a no-op, {'prefetch' if m else 'inline  '}: wall "
              f"{_us([x['wall'] for x in r])}  this thread's CPU {_us([x['cpu'] for x in r])}")


if __name__ == "__main__":
    main()
