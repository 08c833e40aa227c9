"""Executors: who replays the chosen segments. One interface, three implementations, the same
outcomes in the same order (the verdict is computed from them by `pol.verifier.checks.replay`):

- `InProcess`: this process; replays a segment as soon as the checkpoint pass has its two
  checkpoints in memory (`early`), the rest when asked;
- `Pool`: worker processes on this machine (`--workers N`, `pol.verifier.parallel.ReplayPool`),
  started before the checkpoint pass so that their start overlaps with it;
- `Torchrun`: the ranks of a torch.distributed group (`pol verify` under torchrun,
  `pol.verifier.distributed.replay_shared`); every rank gets every outcome.

`early(i, a, b, start, end)` is only an optimization: `results(segments)` returns the outcomes of
exactly the segments asked for, in that order, and raises the first failure in that order, as an
in-process loop would.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from pol.verifier import parallel
from pol.verifier.parallel import SegmentOutcome

Segment = tuple[int, int]  # (start step, end step)


class InProcess:
    def __init__(self, session, metrics: Sequence[str], probe: bool, early_ok: bool = True):
        self.s, self.metrics, self.probe, self.early_ok = session, tuple(metrics), probe, early_ok
        self._early: dict[Segment, Any] = {}  # outcome, or the exception it raised

    def _replay(self, a: int, b: int, load: Callable, step_done=None) -> SegmentOutcome:
        s = self.s
        return parallel.replay_segment(s.ctx, s.proof, s.data, s.leaves, s.store.names, a, b,
                              self.metrics, self.probe, load, step_done)

    def submit_all(self, segments: Sequence[Segment]) -> None:
        pass  # replayed as the pass reads them (early)

    def expect(self, segments: Sequence[Segment], replace: bool = False) -> None:
        """The segments replayed here next, in order: an exact-mode proof's rounding log of
        each is decoded ahead, on a thread, while the one before it replays. `replace`: these
        instead of those announced before (only where segments replay early, as announced)."""
        log = getattr(self.s.proof, "log", None)
        if (segments or replace) and hasattr(log, "expect"):
            log.expect(segments, replace=replace and self.early_ok)

    def guess(self, segment: Segment) -> None:
        """The segment likely to replay next (top-Q: the epoch's first pick were it to end now):
        its rounding log decoded ahead while the pass reads on, where work beside the replay
        runs on threads (a GPU); a wrong guess costs a decode on an idle core, let go when
        the picks are announced (`expect(..., replace=True)`)."""
        if self.early_ok and getattr(self.s, "overlap", False):
            self.expect([segment], replace=True)

    def early(self, a: int, b: int, start: dict, end: dict) -> None:
        if not self.early_ok or any(isinstance(v, BaseException) for v in self._early.values()):
            return  # results() stops at the first failure: nothing after it is needed
        src = {a: start, b: end}
        try:
            self._early[(a, b)] = self._replay(a, b, lambda t: src[t] if t in src
                                               else self.s.store.load(t))
        except Exception as e:  # noqa: BLE001 - raised by results(), in order
            self._early[(a, b)] = e

    def results(self, segments: Sequence[Segment], bar) -> list[SegmentOutcome]:
        outs = []
        later = [seg for seg in segments if seg not in self._early]
        after = dict(zip(later, later[1:]))  # the next segment replayed here, not early
        self.expect(later)
        for a, b in segments:
            out = self._early.get((a, b))
            if out is None:
                if getattr(self.s, "overlap", False) and (a, b) in after:
                    self.s.store.prefetch(after[(a, b)])  # its reads, while this one replays
                out = self._replay(a, b, self.s.store.load, lambda: bar.update(1))
            else:
                if isinstance(out, BaseException):
                    raise out
                bar.update(b - a)
            outs.append(out)
        return outs

    def close(self) -> None:
        pass


class Pool:
    def __init__(self, session, path: str, options, metrics: Sequence[str], probe: bool,
                 workers: int):
        from pol.proof.hashing import content_digest
        from pol.verifier.parallel import ReplayJob, ReplayPool, start_method, torch_settings
        s = session
        method = start_method(s.device)
        job = ReplayJob(proof=str(path), root_digest=s.manifest.root_digest,
                        limits=options.limits, data=options.data,
                        data_digest="" if method == "fork" else
                        (s.data_digest or content_digest(s.data.x, s.data.y)),
                        leaves=s.leaves, device=options.device,
                        trusted_modules=tuple(options.trusted_modules), metrics=tuple(metrics),
                        hardened=probe, torch_settings=torch_settings())
        self.pool = ReplayPool(job, workers, method,
                               {"job": job, "proof": s.proof, "data": s.data, "ctx": s.ctx,
                                "leaves": s.leaves, "names": s.store.names,
                                "load": s.store.load})

    def submit_all(self, segments: Sequence[Segment]) -> None:
        self.pool.submit(list(segments), background=True)

    def expect(self, segments: Sequence[Segment], replace: bool = False) -> None:
        pass  # each worker reads its own segments' log

    def guess(self, segment: Segment) -> None:
        pass

    def early(self, a: int, b: int, start: dict, end: dict) -> None:
        self.pool.submit([(a, b)], background=True)

    def results(self, segments: Sequence[Segment], bar) -> list[SegmentOutcome]:
        return self.pool.results(lambda out: bar.update(out.end - out.start), list(segments))

    def close(self) -> None:
        self.pool.close()


class Torchrun:
    def __init__(self, session, metrics: Sequence[str], probe: bool):
        self.inner = InProcess(session, metrics, probe, early_ok=False)
        self.metrics = tuple(metrics)

    def submit_all(self, segments: Sequence[Segment]) -> None:
        pass

    def expect(self, segments: Sequence[Segment], replace: bool = False) -> None:
        pass  # which rank replays which segment is decided in results()

    def guess(self, segment: Segment) -> None:
        pass

    def early(self, a: int, b: int, start: dict, end: dict) -> None:
        pass  # every rank reads the same pass; the split happens in results()

    def results(self, segments: Sequence[Segment], bar) -> list[SegmentOutcome]:
        from pol.verifier.distributed import replay_shared

        def one(a: int, b: int) -> SegmentOutcome:
            out = self.inner._replay(a, b, self.inner.s.store.load)
            bar.update(b - a)
            return out
        return replay_shared(list(segments), one, self.metrics)

    def close(self) -> None:
        pass


def make_executor(session, path: str, options, policy, n_planned: int):
    """The executor the options ask for: torchrun ranks, a worker pool (more than one worker and
    more than one segment), else this process. Lazy verification replays here."""
    probe = policy.hardened
    lazy = bool(options.reveal or options.request_data)
    if options.distributed:
        return Torchrun(session, options.metrics, probe)
    n_workers = min(options.workers, n_planned)
    if n_workers > 1 and not lazy:
        return Pool(session, path, options, options.metrics, probe, n_workers)
    return InProcess(session, options.metrics, probe, early_ok=not lazy)
