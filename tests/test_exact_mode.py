"""Exact mode (`StepSpec.exact`, `pol train --exact`, `pol.step.exact`): a proof whose steps replay
bitwise on other hardware. Another thread count stands in for other hardware here: a CPU's
reductions split by thread, so a plain fp32 proof made with 2 threads does not replay bitwise with
1, while an exact-mode proof does, with the verifier's own thread count."""

from __future__ import annotations

import json
import math
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import check
from pol.errors import ConfigError
from pol.proof import format as fmt
from pol.proof import roundlog
from pol.proof.reader import open_proof
from pol.proof.writer import rehash_manifest
from pol.prover.trainer import train_task
from pol.spec import StepSpec, TrainingSpec
from pol.step import build_context, load_state, state_tensors, update
from pol.step.exact import STATE, check_model, round_exact, RoundingLog, tie_distance
from pol.verifier import verify

GOLDEN = Path(__file__).parent / "golden" / "exact"
TASK = dict(task="digits-cnn", epochs=1, k=1, batch_size=480, seed=4)  # 3 steps, 3 segments
K = TASK["k"]


def _train(out: Path, threads: int, **kw):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return train_task(out=out, **TASK, **kw)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def proofs(tmp_path_factory):
    d = tmp_path_factory.mktemp("exact")
    _train(d / "exact", 2, exact=True)
    _train(d / "fp32", 2)
    return d


def _replay_exact_segments(path: Path, threads: int) -> list[bool]:
    """Every segment replayed with `update` at `threads` threads, outside the verifier (which
    replays a plain CPU proof with the prover's thread count): bitwise equal to the claim?"""
    from pol.datasets import load_training_set
    from pol.step.exact import use_proof_log
    p = open_proof(path)
    spec = p.manifest.spec
    data = load_training_set(spec, None)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ctx = build_context(spec, torch.device("cpu"))
        out = []
        ck = p.manifest.checkpoints
        for a, b in zip(ck, ck[1:]):
            load_state(ctx.model, ctx.optimizer, spec.optimizer.name, p.load_checkpoint(a))
            if ctx.exact is not None:
                use_proof_log(ctx.exact, p.roundlog, a, b)
            for t in range(a, b):
                idx = p.batch(t)
                update(ctx, torch.from_numpy(data.x[idx]), torch.from_numpy(data.y[idx]),
                       p.lrs[t].tolist(), t)
            end, mine = p.load_checkpoint(b), state_tensors(ctx.model, ctx.optimizer)
            out.append(all(torch.equal(mine[k], end[k]) for k in end))
        return out
    finally:
        torch.set_num_threads(before)


def _verify_1_thread(path: Path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return verify(path, all_segments=True)
    finally:
        torch.set_num_threads(before)


def test_an_exact_proof_made_with_2_threads_verifies_bitwise_with_1(proofs):
    spec = open_proof(proofs / "exact").manifest.spec
    assert spec.step.exact and spec.cpu_threads == 2 and spec.step.exact_window == 2.0 ** -12
    r = _verify_1_thread(proofs / "exact")
    assert r.valid, r.render()
    assert len(r.segments) == 3 and all(s.exact for s in r.segments)
    assert all(v == 0 for v in r.deltas.values())
    assert check(r, "rounding log").status == "pass"
    assert check(r, "exact replay").status == "pass"
    assert _replay_exact_segments(proofs / "exact", 1) == [True] * 3


def test_a_plain_fp32_proof_made_with_2_threads_does_not_replay_bitwise_with_1(proofs):
    # the control: without exact mode, another thread count lands elsewhere (so the test above
    # could fail); with the prover's own count it is bitwise
    assert not any(_replay_exact_segments(proofs / "fp32", 1))
    assert all(_replay_exact_segments(proofs / "fp32", 2))


def _tampered(proofs: Path, tmp_path: Path, change) -> Path:
    out = tmp_path / "tampered"
    shutil.copytree(proofs / "exact", out)
    rows = open_proof(out).roundlog.copy()
    rows = change(rows)
    (out / fmt.ROUNDLOG).write_bytes(roundlog.encode(rows))
    rehash_manifest(out)
    return out


def _last_state_entry(rows: np.ndarray, k: int) -> int:
    """A log entry of the state vector (stored in the next checkpoint) at a segment's last step."""
    j = np.flatnonzero((rows[:, 1] == STATE) & (rows[:, 0] % k == k - 1))
    assert len(j), "no state entry at a segment's last step"
    return int(j[0])


def test_a_flipped_rounding_direction_fails_its_segment(proofs, tmp_path):
    rows = open_proof(proofs / "exact").roundlog
    j = _last_state_entry(rows, K)
    step = int(rows[j, 0])

    def flip(r):
        r[j, 3] ^= 1
        return r
    r = _verify_1_thread(_tampered(proofs, tmp_path, flip))
    assert not r.valid
    bad = [s for s in r.segments if not s.passed]
    assert [(s.start, s.end) for s in bad] == [(step - step % K, step - step % K + K)]
    assert f"steps {bad[0].start}–{bad[0].end}" in check(r, "replay").reason
    assert check(r, "rounding log").status == "pass"  # the value is near a tie: only its bits


def test_a_log_entry_moved_off_a_tie_fails_with_its_step(proofs, tmp_path):
    rows = open_proof(proofs / "exact").roundlog
    logged = {(int(t), int(p), int(i)) for t, p, i, _ in rows}
    j = next(j for j, (t, p, i, _) in enumerate(rows)
             if (t, p, i + 1) not in logged and p == STATE)
    step = int(rows[j, 0])

    def move(r):
        r[j, 2] += 1
        return r
    r = _verify_1_thread(_tampered(proofs, tmp_path, move))
    assert not r.valid
    c = check(r, "rounding log")
    assert c.status == "fail" and f"first: step {step})" in c.reason, c.reason


def test_an_altered_weight_fails(proofs, tmp_path):
    out = tmp_path / "weight"
    shutil.copytree(proofs / "exact", out)
    path = out / fmt.checkpoint_name(2 * K)
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    entry = json.loads(data[8:8 + n])["model.classifier.1.weight"]
    at = 8 + n + entry["data_offsets"][0] + 4 * 7
    data[at:at + 4] = (int.from_bytes(data[at:at + 4], "little") + 1).to_bytes(4, "little")
    path.write_bytes(bytes(data))  # one weight one ulp away
    rehash_manifest(out)
    r = _verify_1_thread(out)
    assert not r.valid
    assert {(s.start, s.end) for s in r.segments if not s.passed} == {(K, 2 * K), (2 * K, 3 * K)}


def test_dropout_fp16_and_unsupported_layers_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="dropout p = 0.1"):
        train_task("digits-mlp", tmp_path / "mlp", epochs=1, exact=True)
    assert not (tmp_path / "mlp").exists()
    with pytest.raises(ConfigError, match="LSTM"):
        check_model(nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 4)))
    with pytest.raises(ConfigError, match="float64"):
        check_model(nn.Linear(2, 2).double())

    class Own(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))
    with pytest.raises(ConfigError, match="holds its own tensors"):
        check_model(nn.Sequential(nn.Linear(3, 3), Own()))
    check_model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Dropout(0.0),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="autocast"):
        StepSpec(exact=True, autocast="bf16")
    with pytest.raises(ConfigError, match="precision must be fp32"):
        train_task("digits-cnn", tmp_path / "fp16", epochs=1, exact=True, precision="fp16")


def test_the_spec_writes_exact_mode_only_when_set():
    assert StepSpec().to_dict() == {}
    d = StepSpec(exact=True).to_dict()
    assert d == {"exact": True, "exact_window": 2.0 ** -12, "exact_noise": 2.0 ** -40,
                 "exact_zone": 2.0 ** -8, "exact_grid": 8}
    assert StepSpec.from_dict(d) == StepSpec(exact=True)
    from pol.errors import ProofFormatError
    with pytest.raises(ProofFormatError):
        StepSpec.from_dict({"exact": True})  # the window is written with exact mode
    with pytest.raises(ProofFormatError):
        StepSpec.from_dict({"exact": True, "exact_window": 0.5})
    # a proof made before the noise bound existed: none (0), and never written
    old = StepSpec.from_dict({"exact": True, "exact_window": 2.0 ** -12})
    assert old.exact_noise == 0 and "exact_noise" not in old.to_dict()
    for bad in (3e-13, 2.0 ** -20, 0.0):  # not a power of two; above the bound; 0 written
        with pytest.raises(ProofFormatError):
            StepSpec.from_dict({**d, "exact_noise": bad})
    with pytest.raises(ProofFormatError):  # only with exact mode
        StepSpec.from_dict({"exact_noise": 2.0 ** -40})
    # a proof made before the round-to-even zone existed: none (0), and never written
    no_zone = {k: v for k, v in d.items() if k not in ("exact_zone", "exact_grid")}
    old = StepSpec.from_dict(no_zone)
    assert old.exact_zone == 0 and old.to_dict() == no_zone
    for bad in (3e-3, 2.0 ** -2, 2.0 ** -20, 0.0, True):
        with pytest.raises(ProofFormatError):
            StepSpec.from_dict({**d, "exact_zone": bad})
    with pytest.raises(ProofFormatError):
        StepSpec.from_dict({"exact_zone": 2.0 ** -8})
    with pytest.raises(ValueError, match="exact_zone"):
        StepSpec(exact=True, exact_zone=0.01)
    # a proof made before the gradient grid's coarseness existed: 4, and 4 is never written
    no_grid = {k: v for k, v in d.items() if k != "exact_grid"}
    old = StepSpec.from_dict(no_grid)
    assert old.exact_grid == 4 and old.to_dict() == no_grid
    assert StepSpec(exact=True, exact_grid=4).to_dict() == no_grid
    for bad in (1, 13, 8.0, True, 4):  # out of range; not an integer; 4 written
        with pytest.raises(ProofFormatError):
            StepSpec.from_dict({**d, "exact_grid": bad})
    with pytest.raises(ProofFormatError):
        StepSpec.from_dict({"exact_grid": 8})
    with pytest.raises(ValueError, match="exact_grid"):
        StepSpec(exact=False, exact_grid=6)


def _reference_distance(x: float) -> float:
    """|x − midpoint| ÷ gap of x's float32 neighbours, in exact rational arithmetic."""
    r = np.float32(x)
    other = np.nextafter(r, np.float32(np.inf) if float(r) <= x else np.float32(-np.inf))
    lo, hi = sorted((Fraction(float(r)), Fraction(float(other))))
    return float(abs(Fraction(x) - (lo + hi) / 2) / (hi - lo))


@pytest.mark.parametrize("deferred", [False, True])
def test_the_zone_rounds_ties_to_even_without_a_log_entry(deferred):
    """Values on a float32 rounding tie and a few float64 ulps beside it (what two devices'
    kernels make of one tie, a fused multiply-add or not) round to the even neighbour on every
    device with no log entry; without a zone (older proofs) each is logged."""
    g = torch.Generator().manual_seed(3)
    f = (torch.randn(3000, generator=g) * 5).float()
    tie = (f.double() + torch.nextafter(f, torch.tensor(float("inf"))).double()) / 2
    up = torch.tensor(float("inf"), dtype=torch.float64)
    near = tie.clone()
    for _ in range(3):  # 3 float64 ulps above the tie: nearest is the upper neighbour
        near = torch.nextafter(near, up)
    x = torch.cat([tie, near])
    other = torch.cat([torch.nextafter(tie, -up), torch.nextafter(near, -up)])  # "another device"
    hi = torch.nextafter(f, torch.tensor(float("inf")))
    even = torch.where((f.view(torch.int32) & 1).bool(), hi, f)
    rec = RoundingLog(2.0 ** -12, 0.0, 2.0 ** -8)
    rec.deferred = deferred
    r = round_exact(x.clone(), rec, 0, STATE)
    assert len(rec.take()) == 0
    assert torch.equal(r, torch.cat([even, even]))
    assert not torch.equal(x.float(), r)  # to nearest, half the values above would differ
    rep = RoundingLog(2.0 ** -12, 0.0, 2.0 ** -8)
    rep.replay(np.zeros((0, 4), dtype=np.int64))
    rep.begin(0)
    assert torch.equal(round_exact(other.clone(), rep, 0, STATE), r) and not rep.problems
    old = RoundingLog(2.0 ** -12)
    old.deferred = deferred
    round_exact(x.clone(), old, 0, STATE)
    assert len(old.take()) == len(x)


def test_near_ties_are_found_exactly_in_every_range():
    rng = np.random.default_rng(0)
    w = 2.0 ** -8
    base = np.concatenate([rng.normal(size=300), rng.normal(size=200) * 1e-40,  # subnormals
                           np.float32(rng.normal(size=100)).astype(np.float64)])  # exact
    # values placed on and around ties: midpoints of random float32 neighbours, nudged
    r32 = np.float32(rng.normal(size=300) * np.exp(rng.uniform(-90, 40, size=300)))
    up = np.nextafter(r32, np.float32(np.inf))
    mid = (r32.astype(np.float64) + up.astype(np.float64)) / 2
    gap = up.astype(np.float64) - r32.astype(np.float64)
    nudged = mid + gap * rng.uniform(-2 * w, 2 * w, size=300)
    x = torch.from_numpy(np.concatenate([base, mid, nudged, [0.0, -0.0, 2.0 ** -150]]))
    log = RoundingLog(w)
    r = round_exact(x, log, 3, STATE)
    assert torch.equal(r, x.float())  # record mode rounds to nearest
    rows = log.take()
    want = {i for i, v in enumerate(x.tolist()) if _reference_distance(v) <= w}
    assert set(rows[:, 2].tolist()) == want and len(want) > 300
    assert (rows[:, 0] == 3).all() and (rows[:, 1] == STATE).all()
    assert np.array_equal(rows[:, 3], (r[rows[:, 2]].double() > x[rows[:, 2]]).numpy())
    d = tie_distance(x, x.float()).tolist()
    assert all(abs(a - _reference_distance(v)) < 1e-9 for a, v in zip(d, x.tolist()))
    # replay: every logged value rounds the logged way, even mirrored across its tie (where
    # rounding to nearest goes the other way)
    idx = torch.from_numpy(rows[:, 2])
    xi, ri = x[idx], r[idx]
    other = torch.nextafter(ri, torch.where(ri.double() <= xi, float("inf"), float("-inf"))
                            .float())
    mirrored = x.clone()
    mirrored[idx] = (ri.double() + other.double()) - xi  # 2 · midpoint − x, exact
    assert not torch.equal(mirrored.float(), r)
    log.replay(rows)
    log.begin(3)
    assert torch.equal(round_exact(mirrored, log, 3, STATE), r) and not log.problems
    # a logged value that is not near a tie is a problem of its step
    log.begin(3)
    far = x.clone()
    far[idx[0]] = float(r[idx[0]])
    round_exact(far, log, 3, STATE)
    assert list(log.problems) == [3] and "float32 ulps from a rounding tie" in log.problems[3]


def test_the_log_file_round_trips_and_is_validated():
    rows = np.array([[0, 0, 5, 1], [0, 1, 2, 0], [0, 1, 9, 1], [4, 0, 0, 0], [4, 2, 0, 1]],
                    dtype=np.int64)
    assert np.array_equal(roundlog.decode(roundlog.encode(rows), "x", 5, 1 << 20), rows)
    from pol.errors import ProofFormatError
    with pytest.raises(ProofFormatError, match="step"):
        roundlog.decode(roundlog.encode(rows), "x", 4, 1 << 20)  # step 4 of a 4-step run
    for version in (1, 2, 3):
        with pytest.raises(ProofFormatError, match="increasing|declares steps"):
            roundlog.decode(roundlog.encode(rows[::-1], version), "x", 5, 1 << 20)
    bad = rows.copy()
    bad[1, 3] = 2
    with pytest.raises(ProofFormatError, match="direction"):
        roundlog.decode(roundlog.encode(bad), "x", 5, 1 << 20)
    data = bytearray(roundlog.encode(rows))
    data[8] += 1  # one more row than the frame holds
    with pytest.raises(ProofFormatError):
        roundlog.decode(bytes(data), "x", 5, 1 << 20)


def test_the_chunked_log_file_round_trips_and_is_validated():
    """Version 2: chunks decoded in order, their rows validated across chunks; a chunk that
    declares rows past the header's, or a header that declares rows no chunk holds, refused;
    version 1 still read."""
    from pol.errors import ProofFormatError
    a = np.array([[0, 0, 5, 1], [0, 1, 2, 0], [2, 1, 9, 1]], dtype=np.int64)
    b = np.array([[4, 0, 0, 0], [4, 2, 0, 1]], dtype=np.int64)
    rows = np.concatenate([a, b])
    data = roundlog.header(5, 2) + roundlog.encode_chunk(a, 2) + roundlog.encode_chunk(b, 2)
    assert np.array_equal(roundlog.decode(data, "x", 5, 1 << 20), rows)
    assert np.array_equal(roundlog.decode(roundlog.encode(rows, version=1), "x", 5, 1 << 20),
                          rows)
    assert np.array_equal(roundlog.decode(roundlog.header(0), "x", 5, 1 << 20),
                          np.zeros((0, 4), dtype=np.int64))
    swapped = roundlog.header(5, 2) + roundlog.encode_chunk(b, 2) + roundlog.encode_chunk(a, 2)
    with pytest.raises(ProofFormatError, match="increasing"):
        roundlog.decode(swapped, "x", 5, 1 << 20)
    for bad in (roundlog.header(4) + data[16:], roundlog.header(6) + data[16:], data[:-3],
                data + b"\0" * 8):
        with pytest.raises(ProofFormatError):
            roundlog.decode(bad, "x", 5, 1 << 20)
    from pol.errors import LimitExceeded
    with pytest.raises(LimitExceeded):
        roundlog.decode(roundlog.header(1 << 40) + data[16:], "x", 5, 1 << 20)


def test_a_version_3_log_decodes_only_the_chunks_of_the_steps_asked_for():
    """Version 3: chunk headers (rows, bytes, step ranges) checked at open; a step range's
    chunks decoded and validated when asked for (`Log.between`), those sharing a step with it
    included; a chunk whose rows lie outside its declared steps, or a corrupt frame, refused
    when its steps are asked for, not before; ranges that go back refused at open."""
    from pol.errors import ProofFormatError
    a = np.array([[0, 0, 5, 1], [0, 1, 2, 0], [2, 1, 9, 1]], dtype=np.int64)
    b = np.array([[2, 2, 0, 1], [4, 0, 0, 0]], dtype=np.int64)  # step 2 cut between chunks
    c = np.array([[6, 0, 3, 1], [7, 1, 1, 0]], dtype=np.int64)
    rows = np.concatenate([a, b, c])
    chunks = [roundlog.encode_chunk(x) for x in (a, b, c)]
    data = roundlog.header(7) + b"".join(chunks)
    log = roundlog.Log(data, "x", 8, 1 << 20)
    assert len(log) == 7 and np.array_equal(log.all(), rows)
    assert np.array_equal(log.between(2, 3), rows[2:4])  # from two chunks
    assert np.array_equal(log.between(5, 7), rows[5:6]) and len(log.between(3, 4)) == 0
    for bad_steps in ((b, a, c), (a, c, b)):  # a range that goes back
        with pytest.raises(ProofFormatError, match="declares steps"):
            roundlog.Log(roundlog.header(7) + b"".join(roundlog.encode_chunk(x)
                                                       for x in bad_steps), "x", 8, 1 << 20)
    # the third chunk's frame holds other steps than its header declares (6, 7 -> 6, 6)
    head = bytearray(chunks[2][:32])
    head[24:32] = (6).to_bytes(8, "little")
    lying = roundlog.header(7) + chunks[0] + chunks[1] + bytes(head) + chunks[2][32:]
    log = roundlog.Log(lying, "x", 8, 1 << 20)  # headers alone are consistent
    assert np.array_equal(log.between(0, 5), rows[:5])
    with pytest.raises(ProofFormatError, match="declares steps"):
        log.between(6, 7)
    # a corrupt frame: found when its steps are decoded
    broken = bytearray(data)
    broken[-3] ^= 0xFF
    log = roundlog.Log(bytes(broken), "x", 8, 1 << 20)
    assert np.array_equal(log.between(0, 3), rows[:4])
    with pytest.raises(ProofFormatError):
        log.between(6, 8)
    with pytest.raises(ProofFormatError, match="step"):
        roundlog.Log(data, "x", 7, 1 << 20)  # a chunk declares step 7 of a 7-step run


def test_segments_announced_to_a_version_3_log_are_decoded_ahead_with_the_same_rows_and_errors():
    """`Log.expect`: the announced segments decoded one ahead on a thread give the rows a plain
    `between` gives, in any order asked; a corrupt frame in an announced segment raises when that
    segment is asked for (not earlier, not lost); chunks each valid on their own that join out
    of order (a row repeated across a chunk boundary) are refused."""
    from pol.errors import ProofFormatError
    rng = np.random.default_rng(3)
    steps = 12
    parts = []
    for t in range(steps):
        idx = np.unique(rng.integers(0, 10_000, 300))
        parts.append(np.stack([np.full(len(idx), t), np.zeros(len(idx), np.int64), idx,
                               rng.integers(0, 2, len(idx))], axis=1))
    rows = np.concatenate(parts).astype(np.int64)
    piece = 250  # chunks cut steps
    data = roundlog.header(len(rows)) + b"".join(
        roundlog.encode_chunk(rows[i:i + piece]) for i in range(0, len(rows), piece))
    plain = roundlog.Log(data, "x", steps, 1 << 30)
    segs = [(0, 3), (3, 6), (6, 9), (9, 12)]
    log = roundlog.Log(data, "x", steps, 1 << 30)
    log.expect(segs)
    for a, b in [segs[0], segs[2], segs[1], segs[3]]:  # not the announced order
        got = log.between(a, b)
        assert np.array_equal(got, plain.between(a, b))
        assert np.array_equal(got, rows[(rows[:, 0] >= a) & (rows[:, 0] < b)])
    log = roundlog.Log(data, "x", steps, 1 << 30)
    log.expect(segs)
    for a, b in segs:  # what a replay reads: narrow, contiguous columns of the same rows
        cols = log.columns(a, b)
        assert [c.dtype for c in cols] == [np.int32, np.uint16, np.int64, np.bool_]
        assert all(c.flags.c_contiguous for c in cols)
        assert np.array_equal(np.stack(cols, axis=1).astype(np.int64), plain.between(a, b))
    broken = bytearray(data)
    broken[-3] ^= 0xFF  # the last chunk's frame: steps of the last segment
    log = roundlog.Log(bytes(broken), "x", steps, 1 << 30)
    log.expect(segs)
    for a, b in segs[:3]:
        assert np.array_equal(log.between(a, b), plain.between(a, b))
    with pytest.raises(ProofFormatError):
        log.between(*segs[3])
    # two chunks each in order, joined out of order: the first chunk's last row repeated
    x = np.array([[0, 0, 1, 0], [0, 0, 4, 1]], dtype=np.int64)
    y = np.array([[0, 0, 4, 1], [1, 0, 2, 0]], dtype=np.int64)
    joined = roundlog.header(4) + roundlog.encode_chunk(x) + roundlog.encode_chunk(y)
    for ahead in (False, True):
        log = roundlog.Log(joined, "x", 2, 1 << 20)
        if ahead:
            log.expect([(0, 2)])
        with pytest.raises(ProofFormatError, match="strictly increasing"):
            log.between(0, 2)


def test_a_replaced_announcement_lets_a_wrong_guess_go_and_decodes_the_new_first():
    """`Log.expect(..., replace=True)` (top-Q's guess of the epoch's first pick, then the picks):
    a segment decoded ahead that is not the new first is let go and the new first is decoded
    ahead instead; the same guess again keeps its decode; segments are not announced twice;
    every segment still reads as a plain `between` gives it."""
    rng = np.random.default_rng(4)
    steps = 9
    rows = np.concatenate([np.stack([np.full(50, t), np.zeros(50, np.int64),
                                     np.sort(rng.choice(5000, 50, replace=False)),
                                     rng.integers(0, 2, 50)], axis=1) for t in range(steps)])
    data = roundlog.header(len(rows)) + b"".join(
        roundlog.encode_chunk(rows[i:i + 100]) for i in range(0, len(rows), 100))
    plain = roundlog.Log(data, "x", steps, 1 << 30)
    log = roundlog.Log(data, "x", steps, 1 << 30)
    log.expect([(0, 3)], replace=True)  # a guess
    first = log._ahead
    assert first is not None and first.segment == (0, 3)
    log.expect([(0, 3)], replace=True)  # the same guess: kept
    assert log._ahead is first and log._plan == []
    log.expect([(3, 6)], replace=True)  # the guess changed: (0, 3) let go
    assert log._ahead is not first and log._ahead.segment == (3, 6) and log._plan == []
    log.expect([(3, 6), (6, 9), (6, 9)])  # no segment twice
    assert log._plan == [(6, 9)]
    ahead = log._ahead
    for seg in [(3, 6), (0, 3), (6, 9)]:
        assert np.array_equal(log.between(*seg), plain.between(*seg))
    assert ahead.result() is not None and log._ahead is None and log._plan == []
    log.expect([], replace=True)  # nothing next: nothing kept
    assert log._ahead is None and log._plan == []


def test_top_q_guesses_on_a_gpu_like_pass_give_the_same_report(tmp_path, monkeypatch):
    """A top-Q verification whose pass guesses each epoch's first pick (work beside the replays,
    as on a GPU) announces guesses and picks to the log with `replace`, and at its end every
    replay still to come (the random segments too); it gets the report of a pass that does not
    guess; a corrupt log is refused as it is without guesses."""
    import shutil

    from pol.proof import roundlog as rl
    from pol.verifier import core, verify
    src = GOLDEN.parent / "exact-log3" / "iris-logreg-exact-log3"
    want = verify(src, entropy=b"g")
    assert want.valid
    calls = []
    real = rl.Log.expect

    def spy(self, segments, replace=False):
        calls.append(([tuple(x) for x in segments], replace))
        return real(self, segments, replace=replace)
    monkeypatch.setattr(rl.Log, "expect", spy)
    monkeypatch.setattr(core, "_overlaps", lambda s: True)
    # the stream's path (this proof's epochs are short enough for Q plus the random segment to
    # cover them, which replays them as --all does: tests/test_verify_fast_paths.py)
    monkeypatch.setattr(core.selection, "every_segment_chosen", lambda *a, **kw: False)
    got = verify(src, entropy=b"g")
    assert got.valid and [(c.name, c.status) for c in got.checks] == [
        (c.name, c.status) for c in want.checks]
    assert [(r.start, r.end, r.passed) for r in got.segments] == [
        (r.start, r.end, r.passed) for r in want.segments]
    guesses = [segs for segs, replace in calls if replace and len(segs) == 1]
    assert len(guesses) >= 7  # one per checkpoint read, at least
    # at the pass's end, every replay still to come: the last epoch's pick, then the random
    # segments (drawn with the same entropy as the selection), in the order they replay
    final = [segs for segs, replace in calls if replace][-1]
    randoms = [(r.start, r.end) for r in got.segments if r.why == "random"]
    assert randoms and final[1:] == sorted(randoms)
    p = tmp_path / "forged"
    shutil.copytree(src, p)
    raw = bytearray((p / "roundlog.polr").read_bytes())
    raw[-3] ^= 0xFF  # the last chunk: steps of the last epoch
    (p / "roundlog.polr").write_bytes(bytes(raw))
    from pol.proof.writer import rehash_manifest
    rehash_manifest(p)
    from pol.errors import ProofFormatError
    for overlap in (False, True):
        monkeypatch.setattr(core, "_overlaps", lambda s: overlap)
        with pytest.raises(ProofFormatError, match="roundlog.polr: corrupt zstd frame"):
            verify(p, entropy=b"g")  # its segments replay (Q + R covers the last epoch)


def test_a_log_chunk_that_lies_about_its_steps_fails_when_its_segment_is_replayed(tmp_path):
    """A version 3 proof whose first log chunk declares fewer steps than it holds (digests
    redone, as a forger would): opened without complaint, refused by a verification that
    replays that chunk's steps, with the chunk named, as a malformed log at open is."""
    import shutil
    import struct

    from pol.errors import ProofFormatError
    from pol.proof.writer import rehash_manifest
    src = GOLDEN.parent / "exact-log3" / "iris-logreg-exact-log3"
    p = tmp_path / "p"
    shutil.copytree(src, p)
    f = p / fmt.ROUNDLOG
    data = bytearray(f.read_bytes())
    m, b, first, last = struct.unpack_from("<QQqq", data, 16)
    assert last > first
    struct.pack_into("<QQqq", data, 16, m, b, first, first)
    f.write_bytes(bytes(data))
    rehash_manifest(p)
    assert len(open_proof(p).log) == len(open_proof(src).log)
    with pytest.raises(ProofFormatError, match="a chunk declares steps"):
        verify(p, all_segments=True)


@pytest.mark.parametrize("folder", [GOLDEN, GOLDEN.parent / "exact-noise",
                                    GOLDEN.parent / "exact-chunked",
                                    GOLDEN.parent / "exact-zone",
                                    GOLDEN.parent / "exact-grid",
                                    GOLDEN.parent / "exact-log3"])
def test_the_golden_exact_proof_reads_and_verifies_bitwise(folder):
    """exact/: made before the gradient noise bound existed (none); exact-noise/: with it, its
    log holding gradient-grid entries; both logs of version 1 (one frame). exact-chunked/: the
    log of version 2, a chunk per checkpoint. exact-zone/: with the round-to-even zone (the
    others were made before it: none). exact-grid/: with the gradient grid's coarseness 8 (the
    others: 4, unwritten). exact-log3/: the log of version 3 (chunks with their step ranges)."""
    index = json.loads((folder / "GOLDEN.json").read_text())
    for name, info in index.items():
        p = open_proof(folder / name)
        assert p.manifest.root_digest == info["root_digest"]
        assert p.manifest.spec.step.exact and len(p.roundlog) > 0
        assert (p.manifest.spec.step.exact_noise > 0) == (folder.name != "exact")
        version = (folder / name / fmt.ROUNDLOG).read_bytes()[4]
        assert version == {"exact": 1, "exact-noise": 1, "exact-log3": 3}.get(folder.name, 2)
        assert (p.manifest.spec.step.exact_zone > 0) == (folder.name in ("exact-zone",
                                                                         "exact-grid",
                                                                         "exact-log3"))
        assert p.manifest.spec.step.exact_grid == (8 if folder.name in ("exact-grid",
                                                                       "exact-log3") else 4)
        r = verify(folder / name, all_segments=True)
        assert r.valid and all(s.exact for s in r.segments), r.render()
        assert check(r, "rounding log").status == "pass"


_IRIS = dict(task="iris-logreg", epochs=2, k=3, seed=2, exact=True)


def _wide_log(monkeypatch) -> None:
    """Runs that log the values within 2^-4 ulps of the zone's edge (iris's 15 parameters log
    few values at the spec's window: these runs are not verified, their logs are compared)."""
    from pol.step import exact as ex
    init = ex.RoundingLog.__init__
    monkeypatch.setattr(ex.RoundingLog, "__init__",
                        lambda self, w, *a: init(self, 2.0 ** -4, *a))


def _interrupted(out, monkeypatch, at: int) -> None:
    """The iris run interrupted (Ctrl-C) as step `at` starts, in `out`."""
    from pol.prover import recorder
    real = recorder.Recorder.step

    def crash(self, loss=None):
        if self.t == at:
            raise KeyboardInterrupt
        real(self, loss)
    monkeypatch.setattr(recorder.Recorder, "step", crash)
    with pytest.raises(KeyboardInterrupt):
        train_task(out=out, **_IRIS)
    monkeypatch.setattr(recorder.Recorder, "step", real)


def _full_and_interrupted(tmp_path, monkeypatch) -> None:
    """An exact-mode run in full/ and the same run interrupted at step 7 in cut/, both with a
    wide log (`_wide_log`)."""
    _wide_log(monkeypatch)
    train_task(out=tmp_path / "full", **_IRIS)
    _interrupted(tmp_path / "cut", monkeypatch, 7)


def test_an_interrupted_exact_run_resumes_to_the_same_proof(tmp_path, monkeypatch):
    from pol.errors import IncompleteProofError
    from pol.proof.reader import inspect_proof
    from pol.prover.trainer import resume_task
    _full_and_interrupted(tmp_path, monkeypatch)
    with pytest.raises(IncompleteProofError):
        open_proof(tmp_path / "cut")
    resume_task(tmp_path / "cut")
    assert inspect_proof(tmp_path / "cut")["files"] == inspect_proof(tmp_path / "full")["files"]


@pytest.mark.parametrize("journal_kind", ["raw rows", "version 2 chunks"])
def test_a_run_interrupted_with_an_older_journal_resumes(tmp_path, monkeypatch, journal_kind):
    """A run interrupted before pol journaled the rounding log in chunks (raw int64 rows, no
    `log_bytes` in its progress record), or in version 2 chunks (no `log_version`), resumes to
    a proof with the rounding log of an uninterrupted run."""
    from pol.proof.reader import inspect_proof
    from pol.proof.writer import WRITING_DIR
    from pol.prover.trainer import resume_task
    _full_and_interrupted(tmp_path, monkeypatch)
    journal = tmp_path / "cut" / WRITING_DIR / "roundlog.bin"
    prog_path = tmp_path / "cut" / fmt.PROGRESS
    prog = json.loads(prog_path.read_text())
    chunks = journal.read_bytes()[:prog.pop("log_bytes")]
    rows = roundlog.decode(roundlog.header(prog["log_rows"]) + chunks, "x", 1 << 20, 1 << 30)
    assert len(rows) == prog["log_rows"] > 0 and prog.pop("log_version") == roundlog.VERSION
    if journal_kind == "raw rows":
        journal.write_bytes(rows.astype("<i8").tobytes() + b"\1" * 32)  # a torn row past it
    else:
        old = roundlog.encode_chunk(rows[:5], 2) + roundlog.encode_chunk(rows[5:], 2)
        journal.write_bytes(old + b"\1" * 32)
        prog["log_bytes"] = len(old)
    prog_path.write_text(json.dumps(prog))
    resume_task(tmp_path / "cut")
    # the same rows (the rows before the interruption in one chunk: other bytes), every other
    # file the same
    cut, full = inspect_proof(tmp_path / "cut")["files"], inspect_proof(tmp_path / "full")["files"]
    assert {k: v for k, v in cut.items() if k != fmt.ROUNDLOG} == \
        {k: v for k, v in full.items() if k != fmt.ROUNDLOG}
    assert np.array_equal(open_proof(tmp_path / "cut").roundlog,
                          open_proof(tmp_path / "full").roundlog)


def test_the_log_goes_to_the_writer_in_pieces_between_checkpoints(tmp_path, monkeypatch):
    """Rows reach the proof writer every LOG_PIECE_ROWS rows, not only with each checkpoint
    (a long interval's log is never held at once): the same proof, logs equal row for row;
    a run interrupted with pieces journaled past its last checkpoint resumes to it too."""
    from pol.proof.writer import ProofWriter
    from pol.prover import recorder
    from pol.prover.trainer import resume_task
    _wide_log(monkeypatch)  # many rows per step
    train_task(out=tmp_path / "full", **_IRIS)
    puts = []
    real_put = ProofWriter.put_log
    monkeypatch.setattr(ProofWriter, "put_log",
                        lambda self, rows: (puts.append(len(rows)), real_put(self, rows)))
    monkeypatch.setattr(recorder, "LOG_PIECE_ROWS", 1)
    train_task(out=tmp_path / "pieces", **_IRIS)
    assert len(puts) > 5 and all(puts)
    full, pieces = open_proof(tmp_path / "full"), open_proof(tmp_path / "pieces")
    assert np.array_equal(full.roundlog, pieces.roundlog)

    def files(p):
        return {k: v for k, v in p.manifest.files.items() if k != fmt.ROUNDLOG}
    assert files(full) == files(pieces)
    _interrupted(tmp_path / "cut2", monkeypatch, 8)  # a piece of step 7 past the checkpoint at 6
    resume_task(tmp_path / "cut2")
    assert np.array_equal(open_proof(tmp_path / "cut2").roundlog, full.roundlog)


def test_a_spec_with_exact_mode_round_trips_through_the_manifest(proofs):
    m = json.loads((proofs / "exact" / fmt.MANIFEST).read_text())
    assert m["spec"]["step"] == {"exact": True, "exact_window": 2.0 ** -12,
                                 "exact_noise": 2.0 ** -40, "exact_zone": 2.0 ** -8,
                                 "exact_grid": 8}
    assert fmt.ROUNDLOG in m["files"]
    assert TrainingSpec.from_dict(m["spec"]).step.exact


def test_the_hardened_verifier_bounds_the_rounding_window(proofs):
    from pol.verifier.soundness import hyperparameter_problems
    spec = open_proof(proofs / "exact").manifest.spec
    assert hyperparameter_problems(spec) == []
    wide = spec.with_(step=StepSpec(exact=True, exact_window=2.0 ** -6))
    assert any("rounding-log window" in p for p in hyperparameter_problems(wide))
    # the grid's spacing 2^exact_grid · exact_noise: 2^-28 at most (2^12 · 2^-40 passes)
    ok = spec.with_(step=StepSpec(exact=True, exact_grid=12))
    assert hyperparameter_problems(ok) == []
    coarse = spec.with_(step=StepSpec(exact=True, exact_noise=2.0 ** -32, exact_grid=5))
    assert any("grid spacing" in p for p in hyperparameter_problems(coarse))


def test_attach_records_an_exact_proof_that_verifies_bitwise(tmp_path):
    import torch.nn.functional as F

    import pol
    from pol import ModelSpec
    arch = {"in_features": 6, "num_classes": 3, "hidden": [16]}
    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)
    model = pol.models.mlp(**arch)
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    opt, loader = pol.attach(model=model, optimizer=inner, data=(x, y), out=tmp_path / "p",
                             model_spec=ModelSpec("mlp", arch), batch_size=8, epochs=2, k=4,
                             init="from-seed", clip_grad_norm=0.5, accumulation=2, exact=True)
    for _ in range(2):
        for i, (xb, yb) in enumerate(loader):
            assert xb.dtype == torch.float64
            loss = F.cross_entropy(model(xb), yb) / 2
            loss.backward()
            opt.record_loss(loss)
            if i % 2 == 1:
                opt.step()
    assert model[1].weight.dtype == torch.float32  # float32 between steps
    np.savez(tmp_path / "d.npz", x=x, y=y)
    r = verify(tmp_path / "p", data=str(tmp_path / "d.npz"), all_segments=True)
    assert r.valid and all(s.exact for s in r.segments), r.render()
    assert open_proof(tmp_path / "p").manifest.spec.step.exact


def test_a_recorder_around_a_loop_of_ones_own_refuses_exact_mode(tmp_path):
    from pol import ModelSpec, Recorder
    arch = {"in_features": 4, "num_classes": 2, "hidden": [4]}
    model = __import__("pol").models.mlp(**arch)
    x = np.zeros((8, 4), dtype=np.float32)
    rec = Recorder(tmp_path / "p", model=model, optimizer=torch.optim.SGD(model.parameters(), 0.1),
                   data=(x, np.zeros(8, dtype=np.int64)), model_spec=ModelSpec("mlp", arch),
                   batch_size=4, epochs=1, k=1, init="from-seed", features=StepSpec(exact=True))
    with pytest.raises(ConfigError, match="only pol's step makes"):
        rec.record_batch(np.arange(4))
    rec.abort()


def test_a_gradient_zero_in_exact_arithmetic_stays_zero():
    # attention's key bias: softmax ignores a shift of a row's logits, so its gradient is
    # float64 noise (~1e-20 here), different on every device; exact mode takes it as zero
    from dataclasses import replace
    from pol.tasks import build_spec
    dp = {"seed": 0, "n_train": 64, "n_test": 4, "block_size": 16, "vocab_size": 32}
    spec, train, _ = build_spec("synthetic-gpt", epochs=1, batch_size=16, dataset_params=dp,
                                exact=True)
    spec = spec.with_(model=replace(spec.model, kwargs={
        **spec.model.kwargs, "block_size": 16, "vocab_size": 32, "n_layer": 1, "n_embd": 16,
        "n_head": 2}))
    ctx = build_context(spec, torch.device("cpu"))
    bias = ctx.model.blocks[0].qkv.bias
    before = bias.detach().clone()
    for t in range(2):
        idx = np.arange(16 * t, 16 * t + 16)
        update(ctx, torch.from_numpy(train.x[idx]), torch.from_numpy(train.y[idx]), [1e-3], t)
    assert torch.equal(bias[16:32], before[16:32])  # the key third: never moved
    assert not torch.equal(bias[:16], before[:16]) and not torch.equal(bias[32:], before[32:])
    assert not ctx.optimizer.state[bias]["exp_avg"][16:32].any()


def test_exact_mode_prepares_the_input_on_the_cpu():
    import dataclasses

    from pol.step import step_inputs
    from pol.tasks import build_spec
    spec, _, _ = build_spec("digits-cnn", epochs=1, exact=True)
    seen = []

    def prepare(x):
        seen.append(x.device.type)
        return x.float() / 255.0
    for exact in (True, False):
        ctx = build_context(spec if exact else spec.with_(step=StepSpec()), torch.device("cpu"))
        ctx = dataclasses.replace(ctx, device=torch.device("meta"), prepare=prepare)
        x, _ = step_inputs(ctx, torch.zeros(2, 64), torch.zeros(2, dtype=torch.long), None)
        assert x.device.type == "meta"
    assert seen == ["cpu", "meta"]


def _device_noise(x: torch.Tensor, sizes: list[int], nu: float, seed: int) -> torch.Tensor:
    """x as another device computes it: off by up to ν/2 of each tensor's largest |value|."""
    g = torch.Generator().manual_seed(seed)
    parts = [p + (torch.rand(p.shape, generator=g, dtype=torch.float64) - 0.5) * nu
             * p.abs().max() for p in x.split(sizes)]
    return torch.cat(parts)


ENTRIES_BY_GRID: dict[int, int] = {}


@pytest.mark.parametrize("bits", [4, 8])
def test_gradient_grid_absorbs_noise_that_scales_with_the_tensor(bits):
    """A reduction's float64 error between devices scales with the tensor's largest terms (an
    H200 against a CPU: up to ~2^-43 of the gradient tensor's largest value), so a small value's
    rounding can differ by a whole ulp; with the noise bound, logged values and the grid floor
    replay bitwise where plain float32 rounding does not. A coarser grid (bits: 2^bits·ν, 4 in
    older proofs) logs fewer values."""
    from pol.step.exact import GRADIENTS, RoundingLog, round_exact
    nu = 2.0 ** -40
    g = torch.Generator().manual_seed(0)
    sizes = [50_000, 7, 200_000]
    x = torch.cat([torch.randn(n, generator=g, dtype=torch.float64) * s
                   * torch.rand(n, generator=g, dtype=torch.float64) ** 6
                   for n, s in zip(sizes, (1e-3, 5.0, 1e-6))])
    other = _device_noise(x, sizes, nu, seed=1)
    assert int((x.float() != other.float()).sum()) > 10  # plain rounding: they differ
    rec = RoundingLog(2.0 ** -12, nu, grid=bits)
    rec.begin(0)
    mine = round_exact(x, rec, 0, GRADIENTS, sizes=sizes)
    entries = rec.take()
    assert 0 < len(entries) < 0.05 * x.numel()
    ENTRIES_BY_GRID[bits] = len(entries)
    if len(ENTRIES_BY_GRID) == 2:  # 2^-4 of the values on the finer grid, 2^-8 on the coarser
        assert ENTRIES_BY_GRID[8] < ENTRIES_BY_GRID[4] / 4
    rep = RoundingLog(2.0 ** -12, nu, grid=bits)
    rep.replay(entries)
    rep.begin(0)
    theirs = round_exact(other, rep, 0, GRADIENTS, sizes=sizes)
    assert not rep.problems and torch.equal(mine, theirs)
    # float32 where the float32 spacing is at least the grid's; a multiple of the floor below
    big = x[:sizes[0]].abs().max()
    q = 2.0 ** (math.frexp(float(big))[1] - 40 + bits)
    head = x[:sizes[0]]
    coarse = head.abs() < q * 2 ** 23
    assert torch.equal(mine[:sizes[0]][~coarse], head[~coarse].float())
    assert coarse.any() and bool((torch.remainder(mine[:sizes[0]][coarse].double(), q) == 0).all())
    # without the log the replay differs; a forged entry naming a value far from a tie fails
    rep2 = RoundingLog(2.0 ** -12, nu, grid=bits)
    rep2.replay(np.zeros((0, 4), dtype=np.int64))
    rep2.begin(0)
    assert not torch.equal(mine, round_exact(other, rep2, 0, GRADIENTS, sizes=sizes))
    far = int(((x.abs() > 0.5 * x[:sizes[0]].abs().max())[:sizes[0]]).nonzero()[0, 0])
    rep3 = RoundingLog(2.0 ** -12, nu, grid=bits)
    rep3.replay(np.array([[0, GRADIENTS, far, 1]], dtype=np.int64))
    rep3.begin(0)
    round_exact(other, rep3, 0, GRADIENTS, sizes=sizes)
    assert rep3.problems and "grid spacings from a rounding tie" in rep3.problems[0]


def test_a_failed_replay_on_other_hardware_names_exact_mode():
    """An honest GPU proof replayed on a CPU can end farther than δ (float32 kernels differ and
    the difference grows with k): the verdict says why and what to do, instead of a bare
    INVALID; an exact-mode proof expects bitwise replay anywhere and gets no such note."""
    from types import SimpleNamespace as Seg

    from pol.tasks import build_spec
    from pol.verifier.checks.replay import Tally, cross_hardware_note, final_checks
    gpu, _, _ = build_spec("digits-mlp", device="cuda", deterministic=True)
    note = cross_hardware_note(gpu, torch.device("cpu"))
    assert "made on cuda, replayed here on cpu" in note and "--exact" in note
    exact, _, _ = build_spec("digits-mlp", device="cuda", deterministic=True, exact=True)
    assert cross_hardware_note(exact, torch.device("cpu")) == ""
    seg = Seg(passed=False, start=0, end=10, error={"l2": 2.0}, exact=False)
    checks = final_checks(Tally(), [seg], {"l2": 1.0}, ["l2"], "top-1 per epoch", False, note)
    replay = next(c for c in checks if c.name == "replay")
    assert replay.ok is False and "exact mode" in replay.reason


def test_pol_train_on_a_gpu_points_to_exact_mode(capsys):
    from types import SimpleNamespace as NS

    from pol.cli import render
    from pol.spec import StepSpec

    def r(device: str, exact: bool):
        return NS(spec=NS(task="t", device=device, step=StepSpec(exact=exact)), total_steps=1,
                  train_seconds=1.0, final_loss=0.1, test_accuracy=0.5, proof="p", root_digest="d")
    render.trained(r("cuda", False), None, None, None)
    assert "--exact" in capsys.readouterr().out
    for device, exact in (("cuda", True), ("cpu", False)):
        render.trained(r(device, exact), None, None, None)
        assert "--exact" not in capsys.readouterr().out


def test_deferred_recording_logs_what_the_immediate_one_logs():
    """On a GPU the log is recorded without waiting for the device (masks over the whole vector,
    compacted into a buffer sized from earlier steps, read behind an event): forced here on the
    CPU, with a buffer too small at first, it gives exactly the immediate path's rows, for the
    float32 rounding and the gradient grid."""
    from pol.step import exact as ex
    rng = np.random.default_rng(1)
    w = 2.0 ** -8
    r32 = np.float32(rng.normal(size=4000) * np.exp(rng.uniform(-100, 40, size=4000)))
    up = np.nextafter(r32, np.float32(np.inf))
    mid = (r32.astype(np.float64) + up.astype(np.float64)) / 2
    gap = up.astype(np.float64) - r32.astype(np.float64)
    x = torch.from_numpy(np.concatenate([
        rng.normal(size=3000), rng.normal(size=500) * 1e-40, mid,
        mid + gap * rng.uniform(-2 * w, 2 * w, size=4000),
        [0.0, -0.0, 2.0 ** -150, 2.0 ** -126, float("nan"), float("inf")]]))
    sizes = [5000, x.numel() - 5000]
    for point, kw in ((ex.STATE, {}), (ex.GRADIENTS, {"sizes": sizes})):
        logs = []
        for deferred in (False, True):
            log = ex.RoundingLog(w, 2.0 ** -40)
            log.deferred = deferred
            if deferred:
                log._caps[point] = 16  # far too few slots: read again from the masks
            for t in range(3):
                r = ex.round_exact(x, log, t, point, **kw)
            logs.append(log.take())
        assert len(logs[0]) > 1000 and np.array_equal(logs[0], logs[1])
        assert log._caps[point] >= len(logs[0]) // 3  # the next steps' buffer fits
        del r
    fx = x.clone()
    assert torch.equal(ex._near_tie(fx, w),
                       torch.nan_to_num(tie_distance(fx, fx.float()), nan=1.0) <= w)


def test_exact_mode_is_the_default_for_gpu_proofs_where_the_model_supports_it():
    """`pol train` / `pol commit` on a GPU record in exact mode unless told otherwise (a float32
    GPU proof replays bitwise only on the same kind of GPU); never on a CPU, in fp16, with TF32,
    or for a model exact mode refuses (digits-mlp: dropout)."""
    from pol.prover.trainer import default_exact
    assert default_exact(None, "cifar10-resnet20", "cuda") is True
    assert default_exact(None, "synthetic-gpt", "cuda") is True
    assert default_exact(None, "cifar10-resnet20", "cpu") is False
    assert default_exact(None, "digits-cnn", "cuda", precision="fp16") is False
    assert default_exact(None, "digits-cnn", "cuda", tf32=True) is False
    assert default_exact(None, "digits-mlp", "cuda") is False  # dropout: refused by exact mode
    assert default_exact(False, "digits-cnn", "cuda") is False
    assert default_exact(True, "digits-cnn", "cpu") is True
