"""`pol.proof` is the format only: the manifest module imports no torch and knows no optimizer, the
writer takes host buffers, and device snapshots (`pol.prover.snapshot`) write the same bytes as the
host path."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pol import util
from pol.proof import format as fmt
from pol.proof.host import HostSnapshotter, Layout
from pol.proof.writer import ProofWriter


def test_format_imports_no_torch():
    code = ("import pol.proof.format, sys; assert 'torch' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith('torch'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_format_names_no_optimizer_state():
    src = open(fmt.__file__).read()
    for word in ("exp_avg", "momentum_buffer", "import torch"):
        assert word not in src


def test_dtype_table_is_the_one_table():
    for name, (code, size, descr) in fmt.DTYPES.items():
        assert fmt.safetensors_dtype(name) == code
        assert fmt.SAFETENSORS_ITEMSIZE[code] == size
        assert getattr(torch, name).itemsize == size
        if descr:
            assert np.dtype(descr).itemsize == size and np.dtype(descr).str == descr
    for array, dtype in fmt.ARRAY_DTYPES.items():
        assert fmt.npy_descr(dtype) == np.dtype(dtype).str
    with pytest.raises(ValueError):
        fmt.safetensors_dtype("complex64")


def test_storage_dtype_keeps_its_old_name():
    assert fmt.storage_dtype("optim.0.exp_avg", torch.zeros(2), "fp16") == torch.bfloat16
    assert fmt.storage_dtype("optim.0.step", torch.zeros(()), "fp16") == torch.float32
    assert fmt.storage_dtype("model.w", torch.zeros(2), "fp16") == torch.float16
    assert fmt.storage_dtype("model.w", torch.zeros(2), "fp32") == torch.float32
    assert fmt.storage_dtype("model.n", torch.zeros(2, dtype=torch.int64), "fp16") == torch.int64


def test_root_digest_is_the_ascii_canonical_json():
    body = {"b": [1, 2.5, "é"], "a": {"z": None, "y": True}, "root_digest": "x"}
    old = json.dumps({k: v for k, v in body.items() if k != "root_digest"}, sort_keys=True,
                     separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    assert fmt.canonical_json({"b": body["b"], "a": body["a"]}) == old
    assert fmt.root_digest(body) == hashlib.sha256(b"pol.manifest.v1\x00" + old).hexdigest()
    assert fmt.canonical_json(body) == util.canonical_json(body, ascii_only=True)


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"model.w": torch.randn(5, 3, generator=g), "model.b": torch.randn(3).double(),
            "model.n": torch.arange(4), "optim.0.exp_avg": torch.randn(5, 3, generator=g),
            "optim.0.step": torch.tensor(3.0)}


def test_header_matches_the_safetensors_library():
    from safetensors.torch import load
    state = _state()
    for precision in ("fp32", "fp16"):
        snap = HostSnapshotter().take(state, None, precision)
        data = snap.header.bytes(7) + b"".join(c.tobytes() for c in snap.chunks)
        back = load(data)
        layout = Layout.build(state, precision, ())
        assert len(snap.header.bytes(7)) % 8 == 0
        assert b'"step":"00000000000000000007"' in snap.header.bytes(7)
        for name, v in state.items():
            st = fmt.storage_dtype(name, v, precision)
            assert back[name].dtype == st and torch.equal(back[name], v.to(st))
        assert [n for _, _, _, n in layout.groups] == [c.size // s for c, s in
                                                       zip(snap.chunks, snap.itemsizes)]


def test_writer_takes_host_checkpoints(tmp_path):
    """`put` with host buffers and `put_checkpoint` with a state dict write the same file."""
    state = _state()
    from pol.prover.snapshot import DeviceSnapshotter
    outs = []
    for how in ("put", "put_checkpoint", "device-snapshotter"):
        # the prover's snapshotter takes CPU state the host way (no CUDA needed)
        w = ProofWriter(tmp_path / how, run_info={"spec": {"batch_size": 2}},
                        snapshotter=DeviceSnapshotter() if how.startswith("device") else None)
        rec = {"indices": np.array([[0, 1]]), "lrs": np.array([[0.1]]),
               "losses": np.array([0.5], np.float32)}
        if how == "put":
            w.put(1, HostSnapshotter().take(state, rec, "fp32"))
        else:
            w.put_checkpoint(1, state, rec)
        w.abort()
        outs.append((tmp_path / how / fmt.checkpoint_name(1)).read_bytes())
    assert outs[0] == outs[1] == outs[2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("graphs", [True, False])
def test_device_snapshots_write_the_host_bytes(tmp_path, graphs):
    from pol.prover.snapshot import DeviceSnapshotter
    state = _state()
    cuda = {k: v.cuda() for k, v in state.items()}
    for precision in ("fp32", "fp16"):
        files = []
        for name, st, snapper in (("host", state, None),
                                  ("dev", cuda, DeviceSnapshotter(use_graphs=graphs))):
            d = tmp_path / f"{precision}-{name}-{graphs}"
            w = ProofWriter(d, precision=precision, run_info={"spec": {"batch_size": 2}},
                            snapshotter=snapper)
            for t in (1, 2, 3):
                loss = torch.tensor([0.5 * t], device=next(iter(st.values())).device)
                w.put_checkpoint(t, st, {"indices": np.array([[t, t + 1]]),
                                         "lrs": np.array([[0.1]]), "losses": loss})
                with torch.no_grad():
                    st["model.w"].add_(1.0)
            w.abort()
            files.append([(d / fmt.checkpoint_name(t)).read_bytes() for t in (1, 2, 3)]
                         + [(d / ".pol-writing" / "losses.bin").read_bytes()])
        assert files[0] == files[1]
