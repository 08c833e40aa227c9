"""Verification across processes launched by `torchrun` (torch.distributed), with the same code as
one process: `torchrun --nproc_per_node N -m pol.cli verify PROOF` (or `pol verify` under any
launcher that sets WORLD_SIZE/RANK/MASTER_ADDR/MASTER_PORT).

Every rank runs the whole verification up to the replay step: the pass over the checkpoints is
cheap next to replaying, and it lets each rank check integrity and digests itself. All ranks use
rank 0's verifier randomness (broadcast), so they choose the same segments; rank r replays the
chosen segments j ≡ r (mod world size); the outcomes travel as one float64 tensor (no pickling:
only numbers cross process boundaries), so every rank builds the same report. The process group
uses gloo, which carries CPU tensors whatever device the replays run on."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import torch

from pol.errors import ConfigError, ProofFormatError


def requested() -> bool:
    """True when a launcher asked for more than one process (WORLD_SIZE > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        raise ConfigError("WORLD_SIZE must be an integer") from None


def init_from_env() -> bool:
    """Join the process group the launcher describes; False when running alone."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if not requested():
        return False
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE > 1 but {', '.join(missing)} not set: launch with torchrun")
    dist.init_process_group(backend="gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and torch.cuda.device_count() > 1:
        torch.cuda.set_device(local % torch.cuda.device_count())
    return True


def active() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist
    return dist.get_rank() if active() else 0


def shared_entropy(entropy: bytes | None) -> bytes:
    """Rank 0's verifier randomness (its own, or os.urandom), the same on every rank."""
    import torch.distributed as dist
    buf = torch.zeros(32, dtype=torch.uint8)
    if dist.get_rank() == 0:
        e = entropy if entropy is not None else os.urandom(32)
        if len(e) > 32:
            import hashlib
            e = hashlib.sha256(e).digest()
        buf[:len(e)] = torch.tensor(list(e), dtype=torch.uint8)
        buf_len = torch.tensor([len(e)], dtype=torch.int64)
    else:
        buf_len = torch.zeros(1, dtype=torch.int64)
    dist.broadcast(buf, 0)
    dist.broadcast(buf_len, 0)
    return bytes(buf[:int(buf_len)].tolist())


def replay_shared(segments: Sequence[tuple[int, int]], replay_one: Callable[[int, int], Any],
                  metrics: Sequence[str]) -> list:
    """Replay `segments` [(a, b), ...] split over the ranks; every rank returns all outcomes, in
    order. A failure raises on every rank: the first failing segment in order decides, as in one
    process (its own exception on the rank that replayed it)."""
    import torch.distributed as dist

    from pol.verifier.parallel import SegmentOutcome
    r, world = dist.get_rank(), dist.get_world_size()
    M = len(metrics)
    # per segment: M errors, exact, data_ok, number of loss mismatches, first mismatch, failed,
    # optimizer-state error, its claimed change, step counters equal, data-dependence ratio,
    # exact mode's steps whose rounding log did not fit (-1: not an exact-mode proof), the first
    table = torch.zeros(len(segments), M + 11, dtype=torch.float64)
    mine: dict[int, BaseException] = {}
    for j, (a, b) in enumerate(segments):
        if j % world != r or mine:
            continue  # after a failure, later segments are not needed (the first failure wins)
        try:
            out = replay_one(a, b)
        except Exception as e:  # noqa: BLE001 - re-raised below, in segment order
            mine[j] = e
            table[j, M + 4] = 1
            continue
        for m_i, m in enumerate(metrics):
            table[j, m_i] = out.error[m]
        table[j, M] = float(out.exact)
        table[j, M + 1] = float(out.data_ok)
        table[j, M + 2] = len(out.loss_bad)
        table[j, M + 3] = out.loss_bad[0] if out.loss_bad else -1
        table[j, M + 5] = out.state_error
        table[j, M + 6] = out.state_change
        table[j, M + 7] = float(out.steps_ok)
        table[j, M + 8] = out.flip
        bad_log = getattr(out, "roundlog_bad", None)
        table[j, M + 9] = -1 if bad_log is None else len(bad_log)
        table[j, M + 10] = bad_log[0] if bad_log else -1
    dist.all_reduce(table)  # each row is filled by exactly one rank
    failed = torch.nonzero(table[:, M + 4]).flatten().tolist()
    if failed:
        j = int(failed[0])
        if j in mine:
            raise mine[j]
        a, b = segments[j]
        raise ProofFormatError(f"replaying steps {a}–{b} failed on rank {j % world} (see its "
                               "output)")
    outs = []
    for j, (a, b) in enumerate(segments):
        row = table[j].tolist()
        n_bad, first = int(row[M + 2]), int(row[M + 3])
        n_log, first_log = int(row[M + 9]), int(row[M + 10])
        # the report uses the number of mismatching steps and the first one
        outs.append(SegmentOutcome(start=a, end=b, error={m: row[i] for i, m in enumerate(metrics)},
                                   exact=bool(row[M]), loss_bad=[first] * n_bad,
                                   data_ok=bool(row[M + 1]), state_error=row[M + 5],
                                   state_change=row[M + 6], steps_ok=bool(row[M + 7]),
                                   flip=row[M + 8],
                                   roundlog_bad=None if n_log < 0 else [first_log] * n_log))
    return outs


def finish(ok: bool = True) -> None:
    """Leave the process group. After a successful run, all ranks meet at a barrier first, so
    none tears the group down while another still uses it (after a failure there is no barrier:
    the other ranks may be inside a collective, and torchrun stops them when this one exits)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def leave(code: int) -> None:
    """Exit a rank without running C++ static destructors: at interpreter shutdown gloo's
    threads can still be joinable and std::terminate aborts the process (seen in CI, 1 run in a
    few), turning a finished verification into a failed rank."""
    import sys
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_QUICK_EXIT = [False]


def _quick_exit() -> None:
    """Make this process's exit quick: at interpreter shutdown, Python's last garbage collections
    walk every object torch's compiler stack, scipy and the rest created (about 2 s on a 2-core
    machine, 0.3 s after `gc.freeze`). Nothing pol holds needs them (the report is written, files
    closed); objects are still freed by reference counting. Registered once, run at exit only."""
    if not _QUICK_EXIT[0]:
        import atexit
        import gc
        atexit.register(gc.freeze)
        _QUICK_EXIT[0] = True


def run_launched(verify: Callable[[bool], Any], exit_code: Callable[[Any], int],
                 report: Callable[[Any], int], cleanup: Callable[[], None] | None = None) -> None:
    """The whole process lifecycle of one verification, alone or under torchrun (`pol verify`
    calls this; it never returns).

    Alone: `report(verify(False))` and exit with the code `report` returns. Under a launcher
    (WORLD_SIZE > 1): join the process group, `verify(True)` on every rank, leave the group (a
    barrier first when every rank got that far), then rank 0 alone reports; every rank exits
    through `leave` (os._exit: see there), rank 0 with `report`'s code, the others with
    `exit_code(result)`, after `cleanup()` (os._exit skips `finally` blocks and context
    managers: a sealed proof's opened copy would stay on disk). An exception from `verify`
    leaves the group without the barrier and propagates (the caller prints it and exits)."""
    import sys
    _quick_exit()
    if not init_from_env():
        sys.exit(report(verify(False)))
    ok = lead = False
    try:
        result = verify(True)
        lead = rank() == 0
        ok = True
    finally:
        finish(ok)
    code = report(result) if lead else exit_code(result)
    if cleanup is not None:
        cleanup()
    leave(code)
    raise AssertionError("unreachable")  # pragma: no cover - leave() does not return
