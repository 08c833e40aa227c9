"""The checkpoint pass digests every checkpoint as it is read: the finite check of the weights in
one fused pass, the float64 parameter vector in reused buffers, its distances to the previous
checkpoint (bit for bit the published measures), the optimizer state's plausibility; on a GPU on
the reader thread, with the same report as in turn."""

from __future__ import annotations

import dataclasses
import json
import struct

import pytest
import torch
from conftest import MODEL_PREFIX, tampered_copy

from pol.errors import ProofFormatError
from pol.proof import format as fmt
from pol.proof.reader import open_proof
from pol.step import build_context
from pol.verifier import core, verify
from pol.verifier import session as sess
from pol.verifier.distances import METRICS, all_distances, flat_params


def test_first_nonfinite_names_the_first_bad_tensor():
    t = {"a": torch.ones(5), "b": torch.ones(300), "c": torch.ones(3, dtype=torch.float16)}
    assert sess.first_nonfinite(t, ["a", "b", "c"]) is None
    t["c"][1] = float("inf")
    t["b"][7] = float("nan")
    assert sess.first_nonfinite(t, ["a", "b", "c"]) == "b"
    assert sess.first_nonfinite(t, ["c", "b"]) == "c"
    t["a"][0] = -float("inf")
    assert sess.first_nonfinite(t, ["c", "a"]) == "c"
    assert sess.first_nonfinite(t, ["a"]) == "a"


def test_first_nonfinite_large_finite_values_pass():
    """A finite tensor whose norm overflows its dtype is finite: the elementwise test decides."""
    t = {"big32": torch.full((100,), 3e38), "big16": torch.full((1000,), 6e4, dtype=torch.float16),
         "bf": torch.full((10,), 3e38, dtype=torch.bfloat16), "empty": torch.zeros(0),
         "scalar": torch.tensor(2.0)}
    assert sess.first_nonfinite(t, list(t)) is None


def _last_weight(state: dict) -> str:
    return sorted(k for k in state if k.startswith(MODEL_PREFIX))[-1]


def _nan_at_end(state: dict) -> None:
    key = _last_weight(state)
    state[key] = state[key].clone()
    state[key].view(-1)[-1] = float("nan")


@pytest.mark.parametrize("ahead", [False, True], ids=["in-turn", "reader-thread"])
def test_nan_checkpoint_rejected_with_step_and_tensor(mlp_proof, tmp_path, monkeypatch, ahead):
    ck = open_proof(mlp_proof).manifest.checkpoints
    bad = tampered_copy(mlp_proof, tmp_path / "nan", ck[3], _nan_at_end)
    monkeypatch.setattr(core, "_overlaps", lambda s: ahead)
    last = _last_weight(open_proof(mlp_proof).load_checkpoint(0))
    with pytest.raises(ProofFormatError, match=rf"checkpoint at step {ck[3]}: {last} has NaN/Inf"):
        verify(bad, all_segments=True, entropy=b"e")


def test_store_rejects_nan_on_load(mlp_proof, tmp_path):
    ck = open_proof(mlp_proof).manifest.checkpoints
    proof = open_proof(tampered_copy(mlp_proof, tmp_path / "nan", ck[2], _nan_at_end))
    store = sess.CheckpointStore(proof, build_context(proof.manifest.spec, torch.device("cpu")))
    store.load(ck[1])
    with pytest.raises(ProofFormatError, match=f"step {ck[2]}: .* NaN/Inf"):
        store.load(ck[2])


@pytest.mark.parametrize("ahead", [False, True], ids=["in-turn", "reader-thread"])
def test_digests_are_the_published_distances(mlp_proof, ahead):
    """Every update bit for bit `all_distances(flat_params(a), flat_params(b))` though the
    buffers are reused (and the previous vector used up) from one checkpoint to the next."""
    proof = open_proof(mlp_proof)
    ctx = build_context(proof.manifest.spec, torch.device("cpu"))
    store = sess.CheckpointStore(proof, ctx)
    ck = proof.manifest.checkpoints
    digest = core.CheckpointDigester(store.names, proof.manifest.spec)
    seen = list(store.read_pass(ck, digest, ahead=ahead))
    store.close()
    assert [t for t, _, _ in seen] == list(ck) and seen[0][2].update is None
    plain = [proof.load_checkpoint(t) for t in ck]
    for j in range(1, len(ck)):
        want = all_distances(flat_params(plain[j - 1], store.names),
                             flat_params(plain[j], store.names), METRICS)
        assert seen[j][2].update == want, j
        assert seen[j][2].state_problem is None
    assert torch.equal(digest.last_vec, flat_params(plain[-1], store.names))


def _comparable(report) -> dict:
    d = dataclasses.asdict(report)
    d.pop("stats")
    return d


def test_pass_on_the_reader_thread_gives_the_same_report(cnn_proof, monkeypatch):
    """What a GPU verification does (the pass's work on the reader thread, the KS test on its
    own), forced on a CPU: the same report, check for check, as the pass in turn."""
    in_turn = verify(cnn_proof, all_segments=True, entropy=b"e")
    monkeypatch.setattr(core, "_overlaps", lambda s: True)
    threaded = verify(cnn_proof, all_segments=True, entropy=b"e")
    assert in_turn.valid and threaded.valid
    assert _comparable(threaded) == _comparable(in_turn)
    top_q = verify(cnn_proof, entropy=b"e")
    monkeypatch.setattr(core, "_overlaps", lambda s: False)
    assert _comparable(verify(cnn_proof, entropy=b"e")) == _comparable(top_q)


def test_store_reads_views_of_one_buffer(mlp_proof):
    """The store's checkpoints are views of the bytes read (one copy in memory), equal to what
    the safetensors parser gives."""
    proof = open_proof(mlp_proof)
    for t in proof.manifest.checkpoints[:3]:
        parsed = proof.load_checkpoint(t)
        views = dataclasses.replace(proof, views=True).load_checkpoint(t)
        assert set(parsed) == set(views)
        assert all(torch.equal(parsed[k], views[k]) and parsed[k].dtype == views[k].dtype
                   for k in parsed)
        raw = (mlp_proof / fmt.checkpoint_name(t)).read_bytes()
        header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
        at = {k: v.data_ptr() - header[k]["data_offsets"][0] for k, v in views.items()}
        assert len(set(at.values())) == 1  # each at its offset in one buffer: no copies


def _safetensors(entries: list[tuple[str, str, list[int], int, int]], body: bytes) -> bytearray:
    header = {k: {"dtype": d, "shape": s, "data_offsets": [a, b]} for k, d, s, a, b in entries}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return bytearray(struct.pack("<Q", len(raw)) + raw + body)


def test_views_only_where_the_parser_takes_the_bytes_as_they_are():
    from pol.proof.reader import parse_safetensors
    body = struct.pack("<e", 1.5) + struct.pack("<f", 2.5)  # the float32 at an odd offset
    odd = _safetensors([("h", "F16", [1], 0, 2), ("f", "F32", [1], 2, 6)], body)
    got = parse_safetensors(odd, "odd", fmt.Limits(), share=True)
    assert got["h"].item() == 1.5 and got["f"].item() == 2.5  # parsed, aligned copies
    ok = _safetensors([("f", "F32", [1], 0, 4), ("h", "F16", [1], 4, 6)],
                      struct.pack("<f", 2.5) + struct.pack("<e", 1.5))
    got = parse_safetensors(ok, "ok", fmt.Limits(), share=True)
    assert got["h"].item() == 1.5 and got["f"].item() == 2.5
    hole = _safetensors([("f", "F32", [1], 0, 4), ("g", "F32", [1], 8, 12)], bytes(12))
    for share in (False, True):
        with pytest.raises(ProofFormatError, match="unreadable safetensors"):
            parse_safetensors(hole, "hole", fmt.Limits(), share=share)


def test_verifier_reads_views(mlp_proof, monkeypatch):
    opened = []

    def recording(*a, **kw):
        opened.append(open_proof(*a, **kw))
        return opened[-1]
    monkeypatch.setattr(core, "open_proof", recording)
    assert verify(mlp_proof, entropy=b"e").valid and opened[0].views
