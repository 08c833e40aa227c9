"""Algorithm 2: verify a proof-of-learning, as a pipeline.

1. the session (`pol.verifier.session`): the proof opened and validated (digests), the verifier's
   data checked against the dataset commitment on a thread while this one builds the step context
   the spec describes (the first checkpoint read meanwhile, on another);
2. checks of the claims (`checks.inputs`): learning rates, hyperparameters, epoch structure;
3. one checkpoint pass: every checkpoint read once (digest, shapes, dtypes, finite weights) and
   digested as it is read (`CheckpointDigester`: the claimed update of every segment, the
   plausibility of the optimizer state); replays start during the pass while a segment's two
   checkpoints are in memory (`executors`); on a GPU the next checkpoint is read and digested on
   a thread meanwhile (`CheckpointStore.read_pass`), so this one only replays;
4. checks of the start (`checks.init`): KS on W_0, init regeneration, the parent for a warm start;
5. δ (exact mode where the prover's kind of hardware allows it) and the selection
   (`selection.choose`: top-Q per epoch + random, or all);
6. the replays (an executor: this process, a worker pool or torchrun ranks), each segment judged
   and the checks over all of them (`checks.replay`).

Which defences run and with which bounds is the policy's (`pol.verifier.policy`, frozen data).
Deviations from the published pseudo-code, on purpose: a segment belongs to the epoch it starts in,
and the last epoch is verified too (the pseudo-code's loop ends before verifying it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pol.errors import ConfigError, IntegrityError
from pol.proof import format as fmt
from pol.proof.reader import open_proof
from pol.util import short_gil_slices
from pol.verifier import selection
from pol.verifier.budget import check_verify_budget
from pol.verifier.checks import CheckName, CheckResult, inputs
from pol.verifier.checks import init as init_checks
from pol.verifier.checks import replay as replay_checks
from pol.verifier.checks.replay import DELTA_RULE, auto_deltas  # noqa: F401 - public names
from pol.verifier.distances import METRICS
from pol.verifier.parallel import distances, flat64
from pol.verifier.policy import Defence, Policy, resolve
from pol.verifier.report import Report, SegmentResult
from pol.verifier.session import (Background, CheckpointStore, build_step_context,
                                  dataset_leaves, load_verifier_data, model_source_matches,
                                  param_names)
from pol.verifier.soundness import state_problem

_param_names = param_names  # older name, kept for callers outside the package
__all__ = ["DELTA_RULE", "VerifyOptions", "auto_deltas", "load_verifier_data", "verify"]


@dataclass
class VerifyOptions:
    """Everything one verification takes, flat (the CLI's options). Grouped by concern:
    selection (q, all_segments), tolerance (delta, metrics, d1, rho, fp16_floor_factor), the
    policy (policy: a preset name or a `Policy`; the fields below it override its bounds), the
    runtime (device, workers, distributed, progress, limits, trusted_modules), the protocol inputs
    (parents … nonce) and the chain recursion's state (visited)."""

    q: int = 1
    all_segments: bool = False
    delta: dict[str, float] | str = "auto"  # "auto" or {metric: value}
    metrics: tuple[str, ...] = METRICS
    d1: str = "l2"
    alpha: float = 0.01
    data: str | None = None
    device: str = "cpu"
    trusted_modules: tuple[str, ...] = ()
    progress: bool = False
    workers: int = 1  # replay segments in this many processes (pol.verifier.parallel)
    # split the replays over the ranks of an initialized torch.distributed process group
    # (pol.verifier.distributed; `pol verify` under torchrun sets it)
    distributed: bool = False
    limits: fmt.Limits = field(default_factory=fmt.Limits)
    rho: float = 1.0
    fp16_floor_factor: float = 8.0
    policy: str | Policy = "hardened"  # "paper": Algorithm 2 exactly as published
    # overrides of the policy's bounds (None: the policy's own)
    random_per_epoch: int | None = None
    relative_error_max: float | None = None
    update_size_min: float | None = None
    require_exact: bool | None = None
    entropy: bytes | None = None  # verifier randomness for random segments (default os.urandom)
    # protocol (pol.protocol): chain of trust, ledger commitment, lazy verification
    parents: tuple[str, ...] = ()  # directories that may hold parent proofs (matched by digest)
    registry: str | None = None  # ledger DB of "verdict" entries of previously verified proofs
    max_chain_depth: int = 32
    visited: tuple[str, ...] = ()  # root digests of the children being verified (cycle check)
    ledger: str | None = None  # check the proof's commitment on this ledger DB
    request_data: str | None = None  # lazy: stop after the checkpoint pass, write a data request
    reveal: str | None = None  # lazy: replay with only these revealed samples (.npz)
    nonce: str | None = None  # lazy: the verifier's nonce for the request (default: random)

    def resolved_policy(self) -> Policy:
        return resolve(self.policy, random_per_epoch=self.random_per_epoch,
                       relative_error_max=self.relative_error_max,
                       update_size_min=self.update_size_min, require_exact=self.require_exact)

    def validate(self) -> None:
        for m in (*self.metrics, self.d1):
            if m not in METRICS:
                raise ConfigError(f"unknown metric {m!r}; known: {', '.join(METRICS)}")
        if self.q < 1:
            raise ConfigError("--q must be at least 1")
        if self.workers < 1:
            raise ConfigError("--workers must be at least 1")
        if self.request_data and self.reveal:
            raise ConfigError("--request-data and --reveal exclude each other")
        self.resolved_policy()  # an unknown policy name is an error


def verify(path: str | os.PathLike, options: VerifyOptions | None = None, **kw: Any) -> Report:
    """Run Algorithm 2 on the proof at `path` (options as a `VerifyOptions`, or as its keyword
    fields). Raises ProofFormatError (or a subclass) for unusable input; returns a Report (valid or
    invalid) otherwise.

    A CPU replay is bitwise equal to the prover's only with the same number of intra-op threads
    (reductions are split per thread), so replay runs with the prover's recorded thread count;
    deterministic algorithms and TF32 as the prover recorded them too (restored afterwards)."""
    if options is not None and kw:
        raise TypeError(f"verify() takes options or keyword fields, not both (got options and "
                        f"{', '.join(sorted(kw))})")
    o = options or VerifyOptions(**kw)
    o.validate()
    if o.distributed:
        from pol.verifier import distributed as _dist
        if not _dist.active():
            raise ConfigError("distributed verification needs an initialized torch.distributed "
                              "process group of more than one process (launch with torchrun)")
        if o.request_data or o.reveal:
            raise ConfigError("lazy verification (--request-data/--reveal) runs in one process")
        # every rank must choose the same random segments: rank 0's randomness for all
        o = replace(o, entropy=_dist.shared_entropy(o.entropy), workers=1)
    with _prover_numerics(path, o):
        return _verify_pass(path, o)


def _prover_numerics(path, o: VerifyOptions):
    """Torch's settings as the prover recorded them (`pol.step.numerics`: threads on a CPU,
    deterministic algorithms, TF32), restored on exit. An unreadable manifest changes nothing
    (the pass reports it)."""
    from contextlib import nullcontext

    from pol.proof.reader import read_manifest
    from pol.step import numerics
    try:
        spec = read_manifest(path, o.limits).spec
    except Exception:  # noqa: BLE001 - _verify_pass reports it properly
        return nullcontext()
    if o.device in ("cpu", None):
        dev = torch.device("cpu")
    else:
        from pol.registry import resolve_device
        try:
            dev = resolve_device(o.device)
        except Exception:  # noqa: BLE001 - _verify_pass reports it properly
            return nullcontext()
    return numerics(spec, dev)


@dataclass
class Session:
    """One verification's inputs, built once (see pol.verifier.session)."""

    proof: Any
    manifest: fmt.Manifest
    spec: Any
    data: Any = None
    leaves: np.ndarray | None = None
    revealed: np.ndarray | None = None
    device: torch.device | None = None
    ctx: Any = None
    store: CheckpointStore | None = None
    data_digest: str = ""  # content digest of in-memory data ("" where not computed)
    init_ks: Any = None  # the KS check of W_0 running on a thread (a Future), or None
    pvalue_helper: Any = None  # its p-values' process (`initcheck.PvalueHelper`), or None
    first_read: Any = None  # the first checkpoint's read, started beside the model's build
    overlap: bool = False  # work beside the replays runs on threads (`_overlaps`)


class _NoBar:
    """No progress bar (a disabled tqdm still starts tqdm's monitor thread)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _add(report: Report, results) -> None:
    for r in results:
        if r is not None:
            r.add_to(report)


def _verify_pass(path: str | os.PathLike, o: VerifyOptions) -> Report:
    policy = o.resolved_policy()
    t_start = time.perf_counter()
    report = Report(proof=str(path), root_digest="", metrics=list(o.metrics), d1=o.d1,
                    policy=policy.name)
    try:
        proof = open_proof(path, o.limits)
    except IntegrityError as e:
        report.add(CheckName.INTEGRITY, False, str(e))
        return report
    proof.views = True  # a checkpoint's tensors share the bytes read: one copy in memory
    s = Session(proof=proof, manifest=proof.manifest, spec=proof.manifest.spec)
    m, spec = s.manifest, s.spec
    check_verify_budget(m, o)  # dataset and replay-step budget, before any work
    report.root_digest = m.root_digest
    report.add(CheckName.INTEGRITY, True, "manifest root digest and per-step arrays match")
    from pol.protocol import COMMITMENT_FILE
    extra_files = [f for f in proof.extra_files if f != COMMITMENT_FILE]
    if extra_files:
        report.add(CheckName.EXTRA_FILES, False, f"files not covered by the manifest are "
                   f"ignored: {', '.join(extra_files[:5])}", warn=True)
    if o.ledger:  # the commitment on a ledger (cheap, decisive)
        from pol.protocol.commit import find_commitment, read_sidecar
        ok, why, info = find_commitment(o.ledger, m.root_digest, spec, read_sidecar(path))
        report.add(CheckName.COMMITMENT, ok, why, value=info or None)
    if not _session_inputs(s, o, report):
        return report  # replaying on other data proves nothing (indices may not even fit)
    _add(report, [inputs.learning_rates(proof)])
    if policy.has(Defence.HYPERPARAMETERS):
        _add(report, [inputs.hyperparameters(spec, policy.bounds)])
    if policy.has(Defence.EPOCH_STRUCTURE):
        _add(report, [inputs.epoch_structure(proof)])
    src = model_source_matches(spec)
    if src is not None:
        ok, theirs, mine = src
        report.add(CheckName.MODEL_SOURCE, ok, "installed model code matches the prover's" if ok
                   else f"model code differs from the prover's (proof {theirs[:12]}…, installed "
                   f"{mine[:12]}…)", warn=True)
    s.store = CheckpointStore(proof, s.ctx, early={m.checkpoints[0]: s.first_read})
    s.first_read = None  # the store's now (it lets go of it once taken)
    s.overlap = _overlaps(s)

    from pol.verifier.executors import make_executor
    n_planned, _ = selection.planned(m, o.q, o.all_segments, policy.extra_random)
    executor = make_executor(s, str(path), o, policy, n_planned)
    try:
        # threads beside the replay (the KS test's first scipy import, reads, decodes) hold the
        # GIL in short slices: with the default 5 ms, ResNet-20's first verification on a GPU
        # replayed its first segment 1.2 s slower while scipy.stats imported (s12b)
        with short_gil_slices() if s.overlap else contextlib.nullcontext():
            return _replay_pass(path, o, policy, s, report, executor, t_start)
    finally:
        executor.close()
        s.store.close()
        if s.pvalue_helper is not None:
            s.pvalue_helper.close()


def _session_inputs(s: Session, o: VerifyOptions, report: Report) -> bool:
    """The verifier's data and its commitment checked on one thread (`_verifier_data`: reading
    and hashing run outside the GIL), the first checkpoint read on another, while this one
    builds the step context (the model; the optimizer, whose construction imports torch's
    compiler stack). The data's verdict first: False (stop) where it fails, whatever the context
    did, else the context's error, if any. No replay starts before this returns."""
    from pol.registry import resolve_device
    data = Background(_verifier_data, s, o, name="pol-verifier-data")
    s.first_read = Background(s.proof.load_checkpoint, s.manifest.checkpoints[0],
                              name="pol-checkpoint-read")
    built = None
    try:
        s.device = resolve_device(o.device)
        s.ctx = build_step_context(s.spec, s.manifest, s.device, tuple(o.trusted_modules))
    except Exception as e:  # noqa: BLE001 - raised below, once the data's verdict is in
        built = e
    results, ok = data.result()
    _add(report, results)
    s.first_read.wait()  # no thread of this function outlives it (a worker pool may fork)
    if ok and built is not None:
        raise built
    return ok


def _verifier_data(s: Session, o: VerifyOptions) -> tuple[list, bool]:
    """The verifier's data (full, revealed or none yet) and the check of its commitment: (check
    results, whether to go on). Sets the session's data fields and nothing else (it runs beside
    the step context's construction)."""
    if o.request_data:
        return [CheckResult(CheckName.DATASET_COMMITMENT, None, "lazy verification: data "
                            "requested after the checkpoint pass")], True
    if o.reveal:
        from pol.protocol.lazy import load_reveal
        s.data, s.leaves, s.revealed, problems = load_reveal(o.reveal, s.manifest)
        return [CheckResult(CheckName.REVEALED_DATA, not problems,
                            f"{len(s.revealed)} revealed sample(s) verify against the committed "
                            "dataset root" if not problems else "; ".join(problems))], True
    s.data = load_verifier_data(s.spec, o.data)
    s.leaves, root, s.data_digest = dataset_leaves(s.data)
    c = inputs.dataset_commitment(s.data, s.leaves, s.spec, root)
    return [c], bool(c.ok)


def _replay_pass(path, o: VerifyOptions, policy: Policy, s: Session, report: Report, executor,
                 t_start: float) -> Report:
    m, spec, proof = s.manifest, s.spec, s.proof
    ck = m.checkpoints
    # --all, or a top-Q that picks every segment whatever the updates: they replay as read
    every = o.all_segments or selection.every_segment_chosen(m, o.q, policy.extra_random)
    if every and not (o.reveal or o.request_data):
        executor.submit_all([(ck[i], ck[i + 1]) for i in range(len(ck) - 1)])
    entropy, nonce = _lazy_entropy(o)
    entropy = os.urandom(16) if entropy is None else entropy  # one draw: the pass plans with it
    try:
        updates, w0, final_vec, state_probs, regen_pre, chosen = _checkpoint_pass(
            o, policy, s, report, executor, entropy, every)
    except IntegrityError as e:
        report.add(CheckName.CHECKPOINT_DIGESTS, False, str(e))
        return _finish(report, proof, t_start, 0)
    report.add(CheckName.CHECKPOINT_DIGESTS, True, f"all {len(ck)} checkpoints match the "
               "manifest")
    if policy.has(Defence.OPTIMIZER_STATE):
        report.add(CheckName.OPTIMIZER_STATE, not state_probs,
                   "every checkpoint's optimizer state is plausible (step counters, finite, "
                   "moments within what gradients can produce)" if not state_probs
                   else state_probs[0])
    # W_0's checks take their place in the report here, but run after the replays: the KS test
    # may still be running on its thread (a GPU's; its p-values from a helper process that is
    # importing scipy), and the segments not replayed in the pass need not wait for it
    start_at = len(report.checks)

    def check_start() -> None:
        n = len(report.checks)
        _check_start(o, policy, s, report, w0, regen_pre)
        added = report.checks[n:]
        del report.checks[n:]
        report.checks[start_at:start_at] = added

    lengths = [b - a for a, b in zip(ck, ck[1:])]
    expect_exact = replay_checks.expect_exact(spec, s.device)
    deltas, report.delta_rule = replay_checks.choose_deltas(
        o.delta, expect_exact, policy, updates, lengths, o.metrics, final_vec, spec, o.rho,
        o.fp16_floor_factor)
    report.deltas = deltas
    exact_mode = policy.hardened and all(deltas[mm] == 0 for mm in o.metrics)
    if policy.has(Defence.TOLERANCE):
        _add(report, [replay_checks.tolerance(exact_mode, spec, s.device, deltas, o.metrics,
                                              policy.require_exact)])

    d1s = [u[o.d1] for u in updates]
    if o.request_data or o.reveal:
        if not _lazy_phase(o, policy, s, report, chosen, nonce):
            check_start()
            return _finish(report, proof, t_start, 0)

    bar = tqdm(total=sum(lengths[i] for i, _ in chosen), desc="replaying", unit="step",
               leave=False) if o.progress else _NoBar()
    outcomes = executor.results([(ck[i], ck[i + 1]) for i, _ in chosen], bar)
    bar.close()
    check_start()
    tally = replay_checks.Tally()
    S = m.steps_per_epoch
    for (i, why), out in zip(chosen, outcomes):
        passed = replay_checks.judge_segment(out, updates[i], deltas, o.metrics, exact_mode,
                                             policy, tally)
        report.segments.append(SegmentResult(out.start, out.end, out.start // S, d1s[i],
                                             updates[i], out.error, passed, out.exact, why))
    _add(report, replay_checks.over_segments(tally, proof.losses, policy))
    _add(report, [replay_checks.update_size(tally, bool(report.segments), policy)])
    mode = "all segments" if o.all_segments else f"top-{o.q} per epoch"
    final = replay_checks.final_checks(tally, report.segments, deltas, o.metrics, mode,
                                       expect_exact,
                                       replay_checks.cross_hardware_note(spec, s.device))
    failed = {c.name for c in report.checks if c.failed} | {
        r.name.value for r in final if r.ok is False and not r.warn}
    why = replay_checks.undecidable_here(failed, tally, spec, s.device, report.delta_rule)
    if why:  # (the replay check's reason then says it once, with the rest)
        final = replay_checks.final_checks(tally, report.segments, deltas, o.metrics, mode,
                                           expect_exact)
    _add(report, final)
    if why:
        report.leave_open(failed, why)
    return _finish(report, proof, t_start, sum(lengths[i] for i, _ in chosen))


@dataclass
class Digest:
    """What the checkpoint pass takes from one checkpoint besides its tensors."""

    update: dict[str, float] | None  # every metric's distance to the previous one (None: first)
    state_problem: str | None = None  # the first implausibility in its optimizer state


class CheckpointDigester:
    """The checkpoint pass's work on each checkpoint, as it is read, in order (`read_pass`: on the
    reader thread when the pass reads ahead): its parameters as one float64 vector, that vector's
    norm, every metric's distance to the previous checkpoint's (bit for bit `flat_params` +
    `all_distances`) and, with a `spec`, the plausibility of its optimizer state (from the second
    checkpoint on). Two float64 vectors, reused: the previous one is used up by the distances
    (a − b written over it) and then holds the next checkpoint, so no checkpoint allocates."""

    def __init__(self, names: list[str], spec=None) -> None:
        self.names, self.spec = names, spec
        self._bufs: list[torch.Tensor] = []
        self._prev: tuple[torch.Tensor, torch.Tensor] | None = None  # (vector, norm)
        self._problem_seen = False

    @property
    def last_vec(self) -> torch.Tensor | None:
        """The last digested checkpoint's float64 parameter vector."""
        return None if self._prev is None else self._prev[0]

    def __call__(self, t: int, tensors: dict[str, torch.Tensor]) -> Digest:
        vec = self._flat(tensors)
        norm = torch.linalg.vector_norm(vec)
        update = None
        if self._prev is not None:
            update = distances(self._prev[0], vec, METRICS, self._prev[1], norm, consume=True)
        self._prev = (vec, norm)
        problem = None
        if self.spec is not None and update is not None and not self._problem_seen:
            problem = state_problem(t, tensors, self.spec)
            self._problem_seen = problem is not None
        return Digest(update, problem)

    def _flat(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self._bufs:
            n = sum(tensors[k].numel() for k in self.names)
            self._bufs = [torch.empty(n, dtype=torch.float64) for _ in range(2)]
        self._bufs.reverse()  # the one not holding the previous vector first
        return flat64(tensors, self.names, self._bufs[0])


def _checkpoint_pass(o: VerifyOptions, policy: Policy, s: Session, report: Report, executor,
                     entropy: bytes, every: bool):
    """Every checkpoint read once (digest checked by the reader, the rest by the store) and
    digested as it is read (`CheckpointDigester`): the claimed update of every segment, the
    plausibility of the optimizer state; early replays while a segment's two checkpoints are in
    memory (--all: every segment as its end is read; top-Q: the epoch's Q largest when the epoch
    ends). Where work beside the replays runs on threads (`_overlaps`), the reading and the
    digests run on the reader thread, a checkpoint ahead, and this thread only replays. The
    executor hears which segments replay next (`expect`: an exact proof's rounding log decodes
    ahead): --all, all of them at once; top-Q, a guess of each epoch's first pick while it is
    read, its picks when it ends, and at the end every replay still to come. `every`: every
    segment replays (--all, or a top-Q that picks them all whatever the updates), each as the
    pass reads its end, as --all's do. Returns, with
    what it read, the selection (`selection.choose`, with `entropy`: the random segments it
    announces are the ones replayed)."""
    m, spec = s.manifest, s.spec
    ck = m.checkpoints
    updates: list[dict[str, float]] = []
    state_probs: list[str] = []
    stream = selection.TopQStream(o.q, m.steps_per_epoch, ck)
    digester = CheckpointDigester(s.store.names,
                                  spec if policy.has(Defence.OPTIMIZER_STATE) else None)
    reads = s.store.read_pass(ck, digester, ahead=s.overlap)
    picked: set[int] = set()  # the segments the stream picked (replayed early, in the pass)
    if every:
        executor.expect([(ck[i], ck[i + 1]) for i in range(len(ck) - 1)])
    _, w0, _ = next(reads)
    regen_pre = _start_checks(o, policy, s, report, w0)
    prev = w0
    for i, (t, cur, d) in enumerate(tqdm(reads, total=len(ck) - 1, desc="reading checkpoints",
                                         leave=False) if o.progress else reads):
        updates.append(d.update)
        if d.state_problem and not state_probs:
            state_probs.append(d.state_problem)
        if every:
            executor.early(ck[i], t, prev, cur)
        else:
            ready = stream.add(i, d.update[o.d1], prev, cur)
            picked.update(j for j, _, _ in ready)
            if ready:
                executor.expect([(ck[j], ck[j + 1]) for j, _, _ in ready], replace=True)
            for j, a_t, b_t in ready:
                executor.early(ck[j], ck[j + 1], a_t, b_t)
            lead = stream.leading()  # the epoch's first pick, were it to end now
            if lead is not None:
                executor.guess((ck[lead], ck[lead + 1]))
        prev = cur
    chosen = selection.choose(m, [u[o.d1] for u in updates], o.q, o.all_segments,
                              policy.extra_random, entropy)
    if not every:
        ready = stream.flush()
        picked.update(j for j, _, _ in ready)
        # every replay still to come, in order: the last epoch's picks now, then the segments
        # the pass did not replay (the random ones), in `choose`'s order, as `results` asks
        rest = [(ck[i], ck[i + 1]) for i, _ in chosen if i not in picked]
        executor.expect([(ck[j], ck[j + 1]) for j, _, _ in ready] + rest, replace=True)
        for j, a_t, b_t in ready:
            executor.early(ck[j], ck[j + 1], a_t, b_t)
    return updates, w0, digester.last_vec, state_probs, regen_pre, chosen


def _start_checks(o: VerifyOptions, policy: Policy, s: Session, report: Report, w0
                  ) -> bool | None:
    """What the pass checks at W_0 while the model is still untouched: the KS test started on
    a thread (`_init_ks_ahead`), the initial optimizer state, and (hardened) whether the seed
    regenerates W_0 (returned; None where not checked here)."""
    m = s.manifest
    s.init_ks = _init_ks_ahead(o, s, w0)
    if policy.has(Defence.OPTIMIZER_STATE):
        _add(report, [init_checks.initial_optimizer_state(w0, s.spec)])
    if (policy.has(Defence.INIT_REGENERATION) and m.init.get("kind") != "parent"
            and m.init.get("external") is not True):
        # the model built above is still untouched (replays below change it); on any device,
        # this spares building a second model on the CPU (seconds at 100M parameters)
        return init_checks.seeded_init_equal(s.ctx.model, w0, s.store.names)
    return None


def _overlaps(s: Session) -> bool:
    """Whether work beside the replays runs on threads (the next checkpoint's read, the KS test of
    W_0): on a GPU, whose host CPU is free while it replays; not on a CPU, whose cores the replay
    uses (a thread beside it slows every step)."""
    return s.device.type != "cpu"


def _init_ks_ahead(o: VerifyOptions, s: Session, w0):
    """The KS test of W_0 started on a thread, to run while the checkpoint pass reads and replays
    (its result is taken in turn, by `_check_start`); None where it runs in turn (`_overlaps`),
    and for a warm start (no KS). It reads W_0 and the model's structure, never the weights the
    replays change."""
    if not s.overlap or s.manifest.init.get("kind") == "parent":
        return None
    import sys
    from concurrent.futures import ThreadPoolExecutor
    if "scipy.stats" not in sys.modules and s.spec.model.init != "none":
        from pol.verifier.initcheck import PvalueHelper, take_early
        # scipy.stats imported there, not under our GIL (started with the process by pol verify)
        s.pvalue_helper = take_early() or PvalueHelper()
    ex = ThreadPoolExecutor(1, thread_name_prefix="pol-init-ks")
    fut = ex.submit(init_checks.initialization, s.ctx.model, s.spec, w0, s.store.names, o.alpha,
                    s.pvalue_helper)
    ex.shutdown(wait=False)
    return fut


def _check_start(o: VerifyOptions, policy: Policy, s: Session, report: Report, w0,
                 regen_pre: bool | None) -> None:
    """W_0: the parent's final weights for a warm start, else KS (and, hardened, regeneration
    from the seed; a rank-correlation probe where that fails)."""
    m, spec, names = s.manifest, s.spec, s.store.names
    if m.init.get("kind") == "parent":
        from pol.protocol.chain import check_parent
        check_parent(report, m, w0, o, verify)
        return
    _add(report, [s.init_ks.result() if s.init_ks is not None else
                  init_checks.initialization(s.ctx.model, spec, w0, names, o.alpha)])
    if not policy.has(Defence.INIT_REGENERATION):
        return
    final = s.store.load(m.checkpoints[-1])
    if m.init.get("external") is True:  # the prover's own W_0, recorded as given
        _add(report, [init_checks.external_init(),
                      init_checks.init_rank_correlation(w0, final, names)])
        return
    from pol.verifier import hardened as hd
    regen = regen_pre if regen_pre is not None else \
        hd.regenerated_init_matches(spec, w0, names, o.trusted_modules)
    _add(report, [init_checks.init_regeneration(regen)])
    if not regen:
        _add(report, [init_checks.init_rank_correlation(w0, final, names)])


def _lazy_entropy(o: VerifyOptions) -> tuple[bytes | None, str | None]:
    """Both phases of a lazy verification draw the same random segments: from the nonce."""
    if not (o.request_data or o.reveal):
        return o.entropy, o.nonce
    nonce = o.nonce
    if o.reveal:
        with np.load(o.reveal, allow_pickle=False) as z:
            nonce = str(z["nonce"]) if "nonce" in z else ""
    nonce = nonce or secrets.token_hex(16)
    return hashlib.sha256(b"pol.lazy.v1|" + nonce.encode()).digest(), nonce


def _lazy_phase(o: VerifyOptions, policy: Policy, s: Session, report: Report, chosen,
                nonce: str) -> bool:
    """Lazy verification: write the data request (and stop), or check that the revealed samples
    cover the chosen segments. True: go on replaying."""
    from pol.protocol.lazy import eq4_fraction, needed_indices, write_request
    m, spec, proof = s.manifest, s.spec, s.proof
    need = needed_indices(proof, chosen)
    frac = len(need) / spec.data.size
    q_eff = o.q + policy.extra_random
    eq4 = eq4_fraction(q_eff, m.k, m.steps_per_epoch, m.epochs) if not o.all_segments else 1.0
    if o.request_data:
        write_request(o.request_data, proof, chosen, need, q_eff, nonce)
        report.add(CheckName.REPLAY, None, f"deferred: {len(need)} sample(s) requested "
                   f"({frac:.1%} of the dataset; Eq. (4) predicts {eq4:.1%}) in "
                   f"{o.request_data}", value=frac, bound=eq4)
        return False
    missing = np.setdiff1d(need, s.revealed)
    rfrac = len(s.revealed) / spec.data.size
    report.add(CheckName.REVEALED_FRACTION, not missing.size,
               f"{len(s.revealed)} of {spec.data.size} samples revealed ({rfrac:.1%}; "
               f"Eq. (4) predicts {eq4:.1%})" if not missing.size else
               f"{missing.size} sample(s) the replay needs were not revealed (first: "
               f"{int(missing[0])})", value=rfrac, bound=eq4)
    return not missing.size and report.valid


def _finish(report: Report, proof, t_start: float, replayed: int) -> Report:
    report.stats = {"replayed_steps": replayed, "total_steps": proof.manifest.total_steps,
                    "checkpoints": len(proof.manifest.checkpoints),
                    "seconds": time.perf_counter() - t_start, "torch": torch.__version__}
    return report

