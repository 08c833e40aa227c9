"""Algorithm 2: verify a proof-of-learning.

Order of work (cheap and decisive first):
1. manifest + per-step arrays read and validated, their digests checked (reader);
2. dataset commitment: the verifier's data must hash to the committed Merkle root;
3. learning rates: the recorded lr of every step against the spec's schedule;
4. initialization: KS test per layer (or, for a warm start, the parent proof);
5. one streaming pass over all checkpoints (each read once, digest checked): d1 of every segment;
6. per epoch, the Q segments with the largest d1 (or all, with `all_segments`) are replayed with the
   shared `update()`; each replayed step's batch hash is checked; d2(W'_end, W_end) ≤ δ per metric.

Deviations from the published pseudo-code, on purpose: a segment belongs to the epoch it starts in,
and the last epoch is verified too (the pseudo-code's loop ends before verifying it).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from tqdm import tqdm

from pol.errors import ConfigError, IntegrityError, ProofFormatError
from pol.proof import format as fmt
from pol.proof.hashing import merkle_root, sample_leaves
from pol.proof.reader import Proof, open_proof
from pol.spec import current_cpu_capability, set_tf32
from pol.step import expected_state_shapes, state_tensors
from pol.verifier.budget import check_verify_budget
from pol.verifier.distances import METRICS, flat_params, fp16_rounding_floor
from pol.verifier.report import Report, SegmentResult

log = logging.getLogger(__name__)

DELTA_RULE = ("auto δ per metric = max(ρ · mean single-step update over the proof, "
              "c · fp16 storage rounding floor), ρ = 1, c = 8 (floor only for fp16 proofs): the "
              "paper's heuristic (δ ≈ the average of a few gradient updates), for replays on the "
              "prover's kind of hardware. For other hardware, calibrate δ with `pol calibrate`.")


@dataclass
class VerifyOptions:
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
    policy: str = "hardened"  # "paper": Algorithm 2 exactly as published
    random_per_epoch: int = 1  # hardened: extra random segments per epoch beyond top-Q
    relative_error_max: float = 0.5  # hardened: ‖W'−W‖ ≤ r·‖W_b − W_a‖ for non-exact replays
    # hardened: a replayed segment whose claimed ℓ2 update is below c·δ proves nothing by δ alone;
    # the proof fails if no non-exact replayed segment clears it (steps all absorbed in δ). The
    # auto δ is the mean single-step update, so a uniform interpolation sits at exactly 1·δ, while
    # the largest honest segment measured 1.57–46·δ (3 tasks × k ∈ {1, 5, 10} × 3 seeds, fp16)
    # and c·δ-sized steps that are not gradient steps still fail the relative-error check
    update_size_min: float = 1.25
    entropy: bytes | None = None  # hardened: verifier randomness (default os.urandom)
    # hardened: fail unless replay runs in exact mode (δ = 0): no tolerance for a spoof to use
    require_exact: bool = False
    # protocol (pol.protocol): chain of trust, ledger commitment, lazy verification
    parents: tuple[str, ...] = ()  # directories that may hold parent proofs (matched by digest)
    registry: str | None = None  # ledger DB of "verdict" entries of previously verified proofs
    max_chain_depth: int = 32
    visited: tuple[str, ...] = ()  # root digests of the children being verified (cycle check)
    ledger: str | None = None  # check the proof's commitment on this ledger DB
    request_data: str | None = None  # lazy: stop after the checkpoint pass, write a data request
    reveal: str | None = None  # lazy: replay with only these revealed samples (.npz)
    nonce: str | None = None  # lazy: the verifier's nonce for the request (default: random)


def load_verifier_data(spec, data: str | None):
    """The training set the verifier replays on: built-in datasets are rebuilt from their name and
    parameters (they take no `data`: one given is an error, never silently ignored); local (CIFAR)
    and user data come from `data` (a directory, or an .npz file). Every problem with `data` is a
    ConfigError (exit 2) naming it."""
    import zipfile

    from pol.datasets import _PURE_DATASETS, ArrayDataset, load_dataset

    name = spec.data.name
    if data is not None and name in _PURE_DATASETS:
        raise ConfigError(f"--data {data}: this proof's dataset {name!r} is built into pol and "
                          "rebuilt from the proof's own parameters; it takes no --data (leave "
                          "--data out)")
    if data is not None and not os.path.exists(data):
        raise ConfigError(f"--data {data}: no such file or directory")
    try:
        if name in ("user", "npz"):
            if not data:
                raise ConfigError("this proof was made on user data: pass it with --data FILE.npz "
                                  "(arrays x and y)")
            if os.path.isdir(data):
                raise ConfigError(f"--data {data} is a directory: this proof was made on user "
                                  "data, pass the .npz file with arrays x and y")
            if not zipfile.is_zipfile(data):
                raise ConfigError(f"--data {data} is not an .npz archive: save the training set "
                                  "with numpy.savez(PATH, x=..., y=...) (CSV and .npy files are "
                                  "not read)")
            try:
                with np.load(data, allow_pickle=False) as z:
                    if "x" not in z or "y" not in z:
                        raise ConfigError(f"{data}: expected arrays named x and y")
                    return ArrayDataset(z["x"], z["y"].astype(np.int64))
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, TypeError) as e:
                if isinstance(e, ConfigError):
                    raise
                raise ConfigError(f"--data {data}: not a readable .npz archive of arrays x and "
                                  f"y ({e})") from None
        if data is not None and name in ("cifar10", "cifar100") and not os.path.isdir(data):
            raise ConfigError(f"--data {data} is a file: the {name} dataset is read from the "
                              "directory holding its binary files")
        train, _ = load_dataset(name, dict(spec.data.params), data)
        return train
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ProofFormatError(f"cannot load the proof's dataset {name!r}: {e}") from None


def _param_names(model: torch.nn.Module) -> list[str]:
    from pol.step import MODEL_PREFIX
    return [MODEL_PREFIX + n for n, _ in model.named_parameters()]


def auto_deltas(updates: list[dict[str, float]], lengths: list[int], metrics: Iterable[str],
                final_params: torch.Tensor | None, precision: str, rho: float,
                floor_factor: float) -> dict[str, float]:
    out = {}
    for m in metrics:
        per_step = float(np.mean([u[m] / n for u, n in zip(updates, lengths)])) if updates else 0.0
        floor = 0.0
        if precision == "fp16" and final_params is not None:
            floor = floor_factor * fp16_rounding_floor(final_params, m)
        out[m] = max(rho * per_step, floor)
    return out


def _segments_to_replay(proof: Proof, d1s: list[float], q: int, all_segments: bool,
                        random_per_epoch: int = 0, entropy: bytes | None = None
                        ) -> list[tuple[int, str]]:
    ck = proof.manifest.checkpoints
    S = proof.manifest.steps_per_epoch
    if all_segments:
        return [(i, "all") for i in range(len(ck) - 1)]
    by_epoch: dict[int, list[int]] = {}
    for i in range(len(ck) - 1):
        by_epoch.setdefault(ck[i] // S, []).append(i)
    chosen = []
    for e in sorted(by_epoch):
        segs = sorted(by_epoch[e], key=lambda i: (-d1s[i], i))
        chosen.extend((i, "top-q") for i in segs[:q])
    if random_per_epoch:
        from pol.verifier.hardened import random_segments
        taken = {i for i, _ in chosen}
        chosen.extend((i, "random") for i in random_segments(
            proof.manifest.root_digest, by_epoch, random_per_epoch, taken, entropy))
    return sorted(chosen)


def verify(path: str | os.PathLike, options: VerifyOptions | None = None, **kw: Any) -> Report:
    """Run Algorithm 2 on the proof at `path`. Raises ProofFormatError (or a subclass) for unusable
    input; returns a Report (valid or invalid) otherwise.

    A CPU replay is bitwise equal to the prover's only with the same number of intra-op threads
    (reductions are split per thread), so replay runs with the prover's recorded thread count."""
    o = options or VerifyOptions(**kw)
    if o.distributed:
        from dataclasses import replace as _replace

        from pol.verifier import distributed as _dist
        if not _dist.active():
            raise ConfigError("distributed verification needs an initialized torch.distributed "
                              "process group of more than one process (launch with torchrun)")
        if o.request_data or o.reveal:
            raise ConfigError("lazy verification (--request-data/--reveal) runs in one process")
        # every rank must choose the same random segments: rank 0's randomness for all
        o = _replace(o, entropy=_dist.shared_entropy(o.entropy), workers=1)
    threads = 0
    deterministic = False
    tf32 = ""
    try:
        from pol.proof.reader import read_manifest
        spec = read_manifest(path, o.limits).spec
        if spec.device == "cpu" and o.device in ("cpu", None):
            threads = spec.cpu_threads
        deterministic = spec.deterministic
        tf32 = spec.tf32  # matters only where the replay runs on a GPU
    except Exception:  # noqa: BLE001 - _verify reports it properly
        pass
    prev_tf32 = set_tf32(tf32)
    saved = torch.get_num_threads()
    saved_det = torch.are_deterministic_algorithms_enabled()
    if threads and threads != saved:
        torch.set_num_threads(threads)
    if deterministic and not saved_det:  # replay as the prover trained: exact on a GPU too
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        return _verify(path, o)
    finally:
        set_tf32(prev_tf32 if tf32 else "")
        if threads and threads != saved:
            torch.set_num_threads(saved)
        if deterministic and not saved_det:
            torch.use_deterministic_algorithms(False)


def _verify(path: str | os.PathLike, o: VerifyOptions) -> Report:
    pools: list = []  # a replay worker pool started early (closed whatever happens)
    try:
        return _verify_pass(path, o, pools)
    finally:
        for pool in pools:
            pool.close()


def _n_segments(proof: Proof, q: int, all_segments: bool, random_per_epoch: int) -> int:
    """How many segments `_segments_to_replay` will choose (known before the d1 pass)."""
    ck = proof.manifest.checkpoints
    if all_segments:
        return len(ck) - 1
    S = proof.manifest.steps_per_epoch
    counts: dict[int, int] = {}
    for i in range(len(ck) - 1):
        counts[ck[i] // S] = counts.get(ck[i] // S, 0) + 1
    return sum(min(n, q) + min(n - min(n, q), random_per_epoch) for n in counts.values())


def _verify_pass(path: str | os.PathLike, o: VerifyOptions, pools: list) -> Report:
    for m in (*o.metrics, o.d1):
        if m not in METRICS:
            raise ConfigError(f"unknown metric {m!r}; known: {', '.join(METRICS)}")
    if o.q < 1:
        raise ConfigError("--q must be at least 1")
    if o.policy not in ("hardened", "paper"):
        raise ConfigError(f"unknown policy {o.policy!r}: hardened or paper")
    hardened = o.policy == "hardened"
    t_start = time.perf_counter()
    report = Report(proof=str(path), root_digest="", metrics=list(o.metrics), d1=o.d1,
                    policy=o.policy)
    try:
        proof = open_proof(path, o.limits)
    except IntegrityError as e:
        report.add("integrity", False, str(e))
        return report
    m = proof.manifest
    spec = m.spec
    check_verify_budget(m, o)  # dataset and replay-step budget, before any work
    report.root_digest = m.root_digest
    report.add("integrity", True, "manifest root digest and per-step arrays match")
    from pol.protocol import COMMITMENT_FILE
    extra_files = [f for f in proof.extra_files if f != COMMITMENT_FILE]
    if extra_files:
        report.add("extra files", False, f"files not covered by the manifest are ignored: "
                   f"{', '.join(extra_files[:5])}", warn=True)
    if o.request_data and o.reveal:
        raise ConfigError("--request-data and --reveal exclude each other")

    # --- commitment on a ledger (cheap, decisive)
    if o.ledger:
        from pol.protocol.commit import find_commitment, read_sidecar
        ok, why, info = find_commitment(o.ledger, m.root_digest, spec, read_sidecar(path))
        report.add("commitment", ok, why, value=info or None)

    # --- data commitment
    revealed = None
    if o.request_data:
        data = leaves = None
        report.add("dataset commitment", None, "lazy verification: data requested after the "
                   "checkpoint pass")
    elif o.reveal:
        from pol.protocol.lazy import load_reveal
        data, leaves, revealed, problems = load_reveal(o.reveal, m)
        report.add("revealed data", not problems,
                   f"{len(revealed)} revealed sample(s) verify against the committed dataset "
                   "root" if not problems else "; ".join(problems))
    else:
        data = load_verifier_data(spec, o.data)
        leaves = sample_leaves(data.x, data.y)
        root = merkle_root(leaves).hex()
        ok = len(data) == spec.data.size and root == spec.data.root
        report.add("dataset commitment", ok,
                   "the data hashes to the committed Merkle root" if ok else
                   f"the data given ({len(data)} samples, root {root[:16]}…) is not the committed "
                   f"dataset ({spec.data.size} samples, root {spec.data.root[:16]}…)")
        if not ok:  # replaying on other data proves nothing (and indices may not even fit)
            return report

    # --- recorded learning rates against the declared schedule
    T = m.total_steps
    base = spec.optimizer.lr
    expected = np.array([spec.schedule.lr_at(base, t, T) for t in range(T)])
    bad = np.nonzero(~np.isclose(proof.lrs, expected[:, None], rtol=1e-6, atol=0))[0]
    if spec.schedule.name == "recorded":
        report.add("learning rates", None, "no schedule declared: replay uses the lr recorded "
                   "for every step")
    else:
        report.add("learning rates", bad.size == 0,
                   "every step's lr follows the declared schedule" if bad.size == 0 else
                   f"{len(np.unique(bad))} step(s) use an lr outside the declared "
                   f"{spec.schedule.name} schedule with base lr {base} (first: step "
                   f"{int(bad[0])}, recorded {proof.lrs[bad[0]].tolist()}, declared "
                   f"{expected[bad[0]]:.6g})")

    if hardened:
        from pol.verifier import soundness
        probs = soundness.hyperparameter_problems(spec)
        report.add("hyperparameters", not probs,
                   "optimizer hyperparameters within the policy bounds" if not probs else
                   "; ".join(probs) + ": a step this small or this damped can hide any "
                   "trajectory", bound=str(soundness.BOUNDS))
        prob = soundness.epoch_structure_problem(proof)
        report.add("epoch structure", prob is None,
                   f"{m.epochs} epoch(s) of {m.steps_per_epoch} steps, each a permutation of the "
                   f"{spec.data.size} samples" if prob is None else prob)

    # --- build the model the proof describes
    from pol.registry import build_context, resolve_device
    device = resolve_device(o.device)
    _check_model_size(spec, m, o.trusted_modules)
    try:
        ctx = build_context(spec, device, o.trusted_modules)
    except ConfigError as e:
        raise ProofFormatError(f"the proof's spec cannot be rebuilt: {e}") from None
    except (RuntimeError, MemoryError, TypeError, ValueError) as e:
        raise ProofFormatError(f"the proof's model cannot be built: {e}") from None
    if spec.model.source_sha256:
        from pol.registry import module_source_digest
        installed = module_source_digest(spec.model.arch.split(":")[0])
        report.add("model source", installed == spec.model.source_sha256,
                   "installed model code matches the prover's" if installed ==
                   spec.model.source_sha256 else
                   f"model code differs from the prover's (proof {spec.model.source_sha256[:12]}…,"
                   f" installed {installed[:12]}…)", warn=True)
    names = _param_names(ctx.model)
    ref_state = state_tensors(ctx.model, ctx.optimizer)
    dtypes = {k: fmt.storage_dtype(k, v, spec.precision) for k, v in ref_state.items()}
    for i in range(sum(len(g["params"]) for g in ctx.optimizer.param_groups)):
        for key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
            name = f"optim.{i}.{key}"
            dtypes[name] = fmt.storage_dtype(name, torch.empty(0), spec.precision)
        dtypes[f"optim.{i}.step"] = torch.float32

    model_shapes, opt_shapes = expected_state_shapes(ctx.model, ctx.optimizer,
                                                     spec.optimizer.name)
    recent: dict[int, dict[str, torch.Tensor]] = {}  # the last two checked checkpoints

    def load(t: int) -> dict[str, torch.Tensor]:
        """Checkpoint t, digest, shapes, dtypes and values checked. The last two stay in memory
        (never altered: load_state copies them), so a replay of consecutive segments, or of the
        last one after the streaming pass, does not read and check the same file again."""
        hit = recent.get(t)
        if hit is not None:
            return hit
        tensors = _load_checked(t)
        recent[t] = tensors
        while len(recent) > 2:
            recent.pop(next(iter(recent)))
        return tensors

    def _load_checked(t: int) -> dict[str, torch.Tensor]:
        tensors = proof.load_checkpoint(t)
        for k, v in tensors.items():
            want = model_shapes.get(k, opt_shapes.get(k))
            if want is None or tuple(v.shape) != want:
                raise ProofFormatError(f"checkpoint at step {t}: entry {k} does not fit the model")
            if v.dtype != dtypes.get(k, v.dtype):
                raise ProofFormatError(f"checkpoint at step {t}: entry {k} is {v.dtype}, a "
                                       f"{spec.precision} proof stores {dtypes[k]}")
        missing = [k for k in model_shapes if k not in tensors]
        if missing:
            raise ProofFormatError(f"checkpoint at step {t}: missing {missing[:3]}")
        for n in names:
            if not torch.isfinite(tensors[n]).all():
                raise ProofFormatError(f"checkpoint at step {t}: {n} has NaN/Inf values")
        return tensors

    # --- replay workers start now, so that their start overlaps with the streaming pass (and with
    # --all, whose segments are known already, their replays too)
    ck = m.checkpoints
    pool = None
    if o.workers > 1 and not o.reveal and not o.request_data and not o.distributed:
        n_workers = min(o.workers, _n_segments(proof, o.q, o.all_segments,
                                               o.random_per_epoch if hardened else 0))
        if n_workers > 1:
            from pol.proof.hashing import content_digest
            from pol.verifier.parallel import ReplayJob, ReplayPool, start_method, torch_settings
            method = start_method(device)
            job = ReplayJob(proof=str(path), root_digest=m.root_digest, limits=o.limits,
                            data=o.data, data_digest="" if method == "fork" else
                            content_digest(data.x, data.y), leaves=leaves, device=o.device,
                            trusted_modules=tuple(o.trusted_modules), metrics=tuple(o.metrics),
                            hardened=hardened, torch_settings=torch_settings())
            pool = ReplayPool(job, n_workers, method,
                              {"job": job, "proof": proof, "data": data, "ctx": ctx,
                               "leaves": leaves, "names": names, "load": load})
            pools.append(pool)
            if o.all_segments:
                pool.submit([(ck[i], ck[i + 1]) for i in range(len(ck) - 1)], background=True)

    # --- streaming pass: every checkpoint read once (digest checked), d1 of each segment.
    # Replays start during the pass, while the segment's two checkpoints are in memory: --all
    # replays every segment as soon as its end is read; top-Q keeps the Q largest segments of the
    # epoch being read (2·Q checkpoints) and replays them when the epoch ends (workers: submits
    # them). Only an optimization: the replay step below takes the segments that
    # `_segments_to_replay` chooses, in its order, and raises the first failure in that order as
    # the in-process loop would; an early outcome is used only for a segment it chose (any other
    # is replayed there); the early replays' errors wait until then.
    from pol.verifier.parallel import distances, replay_segment
    S = m.steps_per_epoch
    early: dict[int, Any] = {}  # segment index -> SegmentOutcome, or the exception it raised
    early_ok = not o.reveal and not o.request_data and not o.distributed
    cand: list[tuple[float, int, Any, Any]] = []  # (-d1, i, start, end): this epoch's top-Q

    def replay_early(i: int, start: dict, end: dict) -> None:
        if pool is not None:
            pool.submit([(ck[i], ck[i + 1])], background=True)
            return
        if any(isinstance(v, BaseException) for v in early.values()):
            return  # the replay step stops at the first failure: nothing after it is needed
        src = {ck[i]: start, ck[i + 1]: end}
        try:
            early[i] = replay_segment(ctx, proof, data, leaves, names, ck[i], ck[i + 1],
                                      o.metrics, hardened, lambda t: src[t] if t in src else load(t))
        except Exception as e:  # noqa: BLE001 - raised at the replay step, in order
            early[i] = e

    def flush_epoch() -> None:
        for _, i, start, end in sorted(cand, key=lambda c: c[1]):
            replay_early(i, start, end)
        cand.clear()

    updates: list[dict[str, float]] = []
    regen_pre = None
    state_probs: list[str] = []  # hardened: implausible optimizer state, first per checkpoint

    def plausible(t: int, tensors: dict) -> None:
        if hardened and t > 0 and not state_probs:
            from pol.verifier.soundness import state_problem
            prob = state_problem(t, tensors, spec)
            if prob:
                state_probs.append(prob)

    try:
        prev = load(0)
        if hardened:
            from pol.verifier.soundness import state_problem
            prob0 = state_problem(0, prev, spec)
            report.add("initial optimizer state", prob0 is None,
                       "checkpoint 0 holds no optimizer state (a fresh optimizer)" if prob0 is None
                       else prob0)
        w0 = prev
        if hardened and m.init.get("kind") != "parent" and device.type == "cpu":
            # the model built above is still untouched (replays below change it): it is the
            # init that pol derives from the proof's seed, built as regenerated_init_matches does
            mine = {"model." + k: v for k, v in ctx.model.state_dict().items()}
            regen_pre = all(n in mine and torch.equal(mine[n].to(w0[n].dtype), w0[n].cpu())
                            for n in names)
        prev_vec = flat_params(prev, names)
        prev_norm = torch.linalg.vector_norm(prev_vec)
        for i, t in enumerate(tqdm(ck[1:], desc="reading checkpoints", leave=False)
                              if o.progress else ck[1:]):
            cur = load(t)
            plausible(t, cur)
            vec = flat_params(cur, names)
            norm = torch.linalg.vector_norm(vec)
            updates.append(distances(prev_vec, vec, METRICS, prev_norm, norm))
            if early_ok and o.all_segments:
                if pool is None:
                    replay_early(i, prev, cur)
            elif early_ok:
                if cand and ck[cand[0][1]] // S != ck[i] // S:
                    flush_epoch()
                cand.append((-updates[-1][o.d1], i, prev, cur))
                cand.sort(key=lambda c: (c[0], c[1]))
                del cand[o.q:]
            prev, prev_vec, prev_norm = cur, vec, norm
        final_vec = prev_vec
        flush_epoch()
    except IntegrityError as e:
        report.add("checkpoint digests", False, str(e))
        return _finish(report, proof, t_start, 0)
    report.add("checkpoint digests", True, f"all {len(ck)} checkpoints match the manifest")
    if hardened:
        report.add("optimizer state", not state_probs,
                   f"every checkpoint's optimizer state is plausible (step counters, finite, "
                   f"moments within what gradients can produce)" if not state_probs
                   else state_probs[0])

    # --- initialization
    if m.init.get("kind") == "parent":
        from pol.protocol.chain import check_parent
        check_parent(report, m, w0, o, verify)
    else:
        from pol.verifier.initcheck import check_init
        try:
            ok, layers, thr = check_init(ctx.model, spec.model.init,
                                         {n[len('model.'):]: w0[n] for n in names}, o.alpha)
        except ValueError as e:
            raise ProofFormatError(f"initialization strategy: {e}") from None
        worst = min(layers, key=lambda r: r.pvalue) if layers else None
        report.add("initialization", ok,
                   (f"W_0 fits the {spec.model.init} distribution in all {len(layers)} layers "
                    f"(KS, Bonferroni)") if ok else
                   f"W_0 is unlikely to come from {spec.model.init}: layer {worst.name} "
                   f"(KS p = {worst.pvalue:.2e})",
                   value=worst.pvalue if worst else None, bound=thr)
        if hardened:
            from pol.verifier import hardened as hd
            regen = regen_pre if regen_pre is not None else \
                hd.regenerated_init_matches(spec, w0, names, o.trusted_modules)
            report.add("init regeneration", regen,
                       "W_0 is bitwise the init pol derives from the proof's seed" if regen else
                       "W_0 is not the init that the proof's seed and strategy give: pol always "
                       "draws W_0 from the seed, so this start was forged or made elsewhere "
                       "(start from other weights through a parent proof)")
            if not regen:
                final = load(ck[-1])
                rhos = hd.rank_correlations(w0, final, names)
                top = max(rhos, key=lambda r: r[1]) if rhos else None
                ok = top is None or top[1] <= hd.SPEARMAN_MAX
                report.add("init rank correlation", ok,
                           "W_0's ranks are not copied from W_T" if ok else
                           f"W_0 is rank-ordered like the final weights in layer {top[0]} "
                           f"(Spearman ρ = {top[1]:.4f}): a rank-resampled forged init",
                           value=top[1] if top else None, bound=hd.SPEARMAN_MAX)

    # --- δ
    lengths = [b - a for a, b in zip(ck, ck[1:])]
    expect_exact = (spec.device == device.type and spec.precision == "fp32"
                    and (device.type == "cpu" or spec.deterministic)
                    and spec.torch_version == torch.__version__
                    and (device.type != "cpu"
                         or (spec.cpu_capability == current_cpu_capability() != ""
                             and spec.cpu_threads == torch.get_num_threads())))
    if hardened and expect_exact and o.delta == "auto":
        deltas = {mm: 0.0 for mm in o.metrics}
        report.delta_rule = ("exact mode: the proof was made on this device type with this torch "
                             "version (fp32, CPU or deterministic), so replay must be bitwise "
                             "equal (δ = 0)")
    elif o.delta == "auto":
        deltas = auto_deltas(updates, lengths, o.metrics, final_vec, spec.precision, o.rho,
                             o.fp16_floor_factor)
        report.delta_rule = DELTA_RULE
    else:
        deltas = dict(o.delta)
        auto = auto_deltas(updates, lengths, o.metrics, final_vec, spec.precision, o.rho,
                           o.fp16_floor_factor)
        for mm in o.metrics:
            deltas.setdefault(mm, auto[mm])
        report.delta_rule = "given on the command line (auto for metrics not given)"
    report.deltas = deltas
    exact_mode = hardened and all(deltas[mm] == 0 for mm in o.metrics)
    if hardened:
        if exact_mode:
            report.add("tolerance", True, "exact mode: every replayed segment must land bitwise "
                       "(δ = 0)")
        else:
            why = (f"the proof claims device {spec.device!r}, precision {spec.precision}, torch "
                   f"{spec.torch_version or '?'}" + (", deterministic" if spec.deterministic
                                                     else "") +
                   f"; this verifier replays on {device.type} with torch {torch.__version__}")
            shown = ", ".join(f"{mm}={deltas[mm]:.3g}" for mm in o.metrics)
            report.add("tolerance", False, warn=not o.require_exact, reason=
                       f"tolerant mode ({why}): replay may land up to δ away ({shown}); "
                       + ("exact mode was required (--require-exact)" if o.require_exact else
                          "pass --require-exact to refuse any tolerance"))

    # --- replay
    d1s = [u[o.d1] for u in updates]
    entropy = o.entropy
    nonce = o.nonce
    if o.request_data or o.reveal:  # both phases must draw the same random segments
        import hashlib
        import secrets
        if o.reveal:
            with np.load(o.reveal, allow_pickle=False) as z:
                nonce = str(z["nonce"]) if "nonce" in z else ""
        nonce = nonce or secrets.token_hex(16)
        entropy = hashlib.sha256(b"pol.lazy.v1|" + nonce.encode()).digest()
    chosen = _segments_to_replay(proof, d1s, o.q, o.all_segments,
                                 o.random_per_epoch if hardened else 0, entropy)
    S = m.steps_per_epoch
    if o.request_data or o.reveal:
        from pol.protocol.lazy import eq4_fraction, needed_indices, write_request
        need = needed_indices(proof, chosen)
        frac = len(need) / spec.data.size
        q_eff = o.q + (o.random_per_epoch if hardened else 0)
        eq4 = eq4_fraction(q_eff, m.k, S, m.epochs) if not o.all_segments else 1.0
        if o.request_data:
            write_request(o.request_data, proof, chosen, need, q_eff, nonce)
            report.add("replay", None, f"deferred: {len(need)} sample(s) requested "
                       f"({frac:.1%} of the dataset; Eq. (4) predicts {eq4:.1%}) in "
                       f"{o.request_data}", value=frac, bound=eq4)
            return _finish(report, proof, t_start, 0)
        missing = np.setdiff1d(need, revealed)
        rfrac = len(revealed) / spec.data.size
        report.add("revealed fraction", not missing.size,
                   f"{len(revealed)} of {spec.data.size} samples revealed ({rfrac:.1%}; "
                   f"Eq. (4) predicts {eq4:.1%})" if not missing.size else
                   f"{missing.size} sample(s) the replay needs were not revealed (first: "
                   f"{int(missing[0])})", value=rfrac, bound=eq4)
        if missing.size or not report.valid:
            return _finish(report, proof, t_start, 0)
    replayed = 0
    data_ok = True
    loss_bad: list[int] = []
    rel_bad: list[tuple[int, int, float]] = []
    sizes: list[float] = []  # claimed ℓ2 update ÷ δ of each non-exact replayed segment
    state_bad: list[tuple[int, int, str]] = []  # hardened: optimizer state replays elsewhere
    flip_bad: list[tuple[int, int, float]] = []  # hardened: a step that ignores its gradient
    from pol.verifier.soundness import BOUNDS
    bar = tqdm(total=sum(lengths[i] for i, _ in chosen), desc="replaying", unit="step",
               leave=False) if o.progress else _NoBar()
    if o.workers < 1:
        raise ConfigError("--workers must be at least 1")
    # lazy reveal (revealed samples only) always replays in this process
    outcomes = None
    if o.distributed:  # this rank replays its share; all ranks get every outcome
        from pol.verifier.distributed import replay_shared

        def _one(a: int, b: int):
            out = replay_segment(ctx, proof, data, leaves, names, a, b, o.metrics, hardened, load)
            bar.update(b - a)
            return out
        outcomes = replay_shared([(ck[i], ck[i + 1]) for i, _ in chosen], _one, o.metrics)
    if pool is not None:  # independent segments in worker processes; same outcomes, same order
        outcomes = pool.results(lambda out: bar.update(out.end - out.start),
                                [(ck[i], ck[i + 1]) for i, _ in chosen])
    for j, (i, why) in enumerate(chosen):
        a, b = ck[i], ck[i + 1]
        if outcomes is not None:
            out = outcomes[j]
        elif i in early:
            out = early[i]
            if isinstance(out, BaseException):
                raise out
            bar.update(b - a)
        else:
            out = replay_segment(ctx, proof, data, leaves, names, a, b, o.metrics, hardened,
                                 load, lambda: bar.update(1))
        data_ok = data_ok and out.data_ok
        loss_bad.extend(out.loss_bad)
        replayed += b - a
        err, exact = out.error, out.exact
        passed = all(err[mm] <= deltas[mm] for mm in o.metrics)
        if hardened:
            srel = out.state_error / out.state_change if out.state_change > 0 else (
                0.0 if out.state_error == 0 else float("inf"))
            if not out.steps_ok:
                state_bad.append((a, b, "the step counters differ"))
            elif exact_mode and not exact and out.state_error > 0:
                state_bad.append((a, b, "not bitwise equal in exact mode"))
            elif not exact_mode and srel > BOUNDS.state_relative_max:
                state_bad.append((a, b, f"{srel:.2f}× its own change"))
            if state_bad and state_bad[-1][:2] == (a, b):
                passed = False
            if not (out.flip >= BOUNDS.flip_min):  # NaN (not measured) fails too
                flip_bad.append((a, b, out.flip))
                passed = False
        if hardened and not exact and "l2" in err:
            rel = err["l2"] / max(updates[i]["l2"], 1e-300)
            if rel > o.relative_error_max:
                rel_bad.append((a, b, rel))
                passed = False
            if deltas["l2"] > 0:
                sizes.append(updates[i]["l2"] / deltas["l2"])
        report.segments.append(SegmentResult(a, b, a // S, d1s[i], updates[i], err, passed,
                                             exact, why))
    bar.close()
    if hardened:
        nonfinite = [t for t in loss_bad if not np.isfinite(proof.losses[t])]
        report.add("loss replay", not loss_bad,
                   "the recomputed loss matches the recorded loss at every replayed step"
                   if not loss_bad else f"{len(loss_bad)} replayed step(s) have a recorded loss "
                   f"that the replay does not reproduce (first: step {loss_bad[0]})" +
                   (f"; {len(nonfinite)} recorded loss(es) are NaN or infinite (first: step "
                    f"{nonfinite[0]}): the hardened policy needs every step's loss"
                    if nonfinite else ""))
        report.add("optimizer replay", not state_bad,
                   "the optimizer state replays onto the claimed state at the end of every "
                   "replayed segment" if not state_bad else
                   f"{len(state_bad)} segment(s) end with optimizer state other than the claim "
                   f"(first: steps {state_bad[0][0]}–{state_bad[0][1]}, {state_bad[0][2]})")
        worst_flip = min((r for _, _, r in flip_bad if r == r), default=None)
        report.add("data dependence", not flip_bad,
                   f"each replayed segment's first step moves with its gradient (a sign-flipped "
                   f"gradient lands ≥ {BOUNDS.flip_min:g}× the step's update away)"
                   if not flip_bad else
                   f"{len(flip_bad)} replayed segment(s) land on the same weights whatever their "
                   f"gradient (first: steps {flip_bad[0][0]}–{flip_bad[0][1]}, a sign-flipped "
                   f"gradient moves the step by {flip_bad[0][2]:.3g}× its update): the claimed "
                   "training does not depend on the data", value=worst_flip,
                   bound=BOUNDS.flip_min)
        worst_rel = max((r for _, _, r in rel_bad), default=0.0)
        report.add("relative error", not rel_bad,
                   f"every non-exact replayed segment lands within {o.relative_error_max:g}× its "
                   "own update" if not rel_bad else
                   f"{len(rel_bad)} segment(s) replay farther from the claim than "
                   f"{o.relative_error_max:g}× their own update (first: steps {rel_bad[0][0]}–"
                   f"{rel_bad[0][1]}, {rel_bad[0][2]:.2f}×): the claimed steps do not follow the "
                   "gradient", value=worst_rel, bound=o.relative_error_max)
        c = o.update_size_min
        if sizes:
            small = sum(r < c for r in sizes)
            big = max(sizes)
            report.add("update size", big >= c,
                       f"{len(sizes) - small} of {len(sizes)} non-exact replayed segment(s) claim "
                       f"an update of at least {c:g}·δ (largest {big:.3g}·δ); the "
                       f"{small} smaller one(s) rest on the relative-error check" if big >= c else
                       f"every non-exact replayed segment claims an update below {c:g}·δ "
                       f"(largest {big:.3g}·δ): each step is absorbed in the tolerance, so "
                       "replay proves nothing (a tiny-step spoof, Fang et al.)",
                       value=big, bound=c)
        elif report.segments:
            report.add("update size", True, "δ = 0 (exact mode) or every replayed segment "
                       "bitwise exact: no tolerance to hide steps in")
    report.add("data hashes", data_ok,
               "every replayed batch matches its recorded hash" if data_ok else
               "a replayed batch's data does not match the hash recorded in the proof")
    n_bad = sum(not s.passed for s in report.segments)
    worst_ratio = max((max(s.error[mm] / deltas[mm] if deltas[mm] > 0 else
                           (0.0 if s.error[mm] == 0 else float("inf")) for mm in o.metrics)
                       for s in report.segments), default=0.0)
    mode = "all segments" if o.all_segments else f"top-{o.q} per epoch"
    report.add("replay", n_bad == 0,
               f"{len(report.segments)} segment(s) replayed ({mode}), all within δ" if n_bad == 0
               else f"{n_bad} of {len(report.segments)} replayed segment(s) end farther than δ "
                    f"from the claimed checkpoint (first: steps "
                    f"{next(s for s in report.segments if not s.passed).start}–"
                    f"{next(s for s in report.segments if not s.passed).end})",
               value=worst_ratio, bound=1.0)
    n_exact = sum(s.exact for s in report.segments)
    if n_exact == len(report.segments):
        report.add("exact replay", True, f"all {n_exact} replayed segment(s) are bitwise equal "
                   "to the claimed checkpoints")
    elif expect_exact:
        report.add("exact replay", False, f"only {n_exact} of {len(report.segments)} segment(s) "
                   "replayed bitwise exactly, though the proof was made on this device type with "
                   "this torch version: other hardware, or checkpoints altered within δ",
                   warn=True)
    else:
        report.add("exact replay", None, f"{n_exact} of {len(report.segments)} segment(s) "
                   "replayed bitwise exactly (not expected: different device, precision or "
                   "torch version)")
    return _finish(report, proof, t_start, replayed)


class _NoBar:
    """No progress bar (a disabled tqdm still starts tqdm's monitor thread)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _check_model_size(spec, m: fmt.Manifest, trusted: tuple[str, ...]) -> None:
    """Build the spec's model on the meta device (no memory) and refuse one whose parameters need
    far more bytes than the proof's first checkpoint holds, before allocating it for real."""
    from pol.registry import build_model
    try:
        with torch.device("meta"):
            model = build_model(spec.model, trusted)
    except (RuntimeError, MemoryError, TypeError, ValueError) as e:
        raise ProofFormatError(f"the proof's model cannot be built: {e}") from None
    need = sum(p.numel() for p in model.parameters()) * (2 if spec.precision == "fp16" else 4)
    have = m.files[fmt.checkpoint_name(0)][1]
    if need > have:
        raise ProofFormatError(f"the spec describes a model of {need} parameter bytes, but the "
                               f"first checkpoint holds only {have} bytes")


def _finish(report: Report, proof: Proof, t_start: float, replayed: int) -> Report:
    report.stats = {"replayed_steps": replayed, "total_steps": proof.manifest.total_steps,
                    "checkpoints": len(proof.manifest.checkpoints),
                    "seconds": time.perf_counter() - t_start, "torch": torch.__version__}
    return report
