"""Proof size per checkpoint against the reference pattern (torch.save of model and optimizer state
in fp32), for SGD-momentum and Adam:

1. pol v1 storage (fp32, fp16) and whether the fp16 proof still verifies;
2. the lossless checkpoint codec of format v2 (XOR with the previous checkpoint, byte shuffle,
   zstd; a keyframe every 16 checkpoints), alone and with fp16 storage, at k = 1 and k = 10;
   size against k (MB per 1,000 training steps, as in the paper's Fig. 2); compression and
   decompression throughput; ratios per kind of tensor (weights against optimizer state); and a
   predictor for SGD momentum at k = 1 (momentum XOR (W_{t-1} - W_t) / lr instead of XOR the
   previous momentum).

    python benchmarks/bench_size.py [--resnet-steps 60] [--skip-v1]

Part 2 trains each task once with k = 1 (a v1 proof: its checkpoints are the raw bytes the codec
sees) and encodes the checkpoint sequences for every k from it (the state at step t does not
depend on k). One compressed proof of digits-mlp is also written by `pol train --compress`'s code
path at k = 10: its stored sizes must equal the ones computed here, and it must verify in exact
mode.
"""

from __future__ import annotations

import argparse
import io
import shutil
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pol.proof import codec
from pol.proof import format as fmt
from pol.proof.reader import inspect_proof, open_proof
from pol.proof.host import Layout as _Layout
from pol.prover.trainer import train_task
from pol.step import build_context, storage_dtype
from pol.tasks import build_spec
from pol.verifier import verify

CASES = [("synthetic-resnet20", {"n_train": 256}), ("digits-cnn", None), ("digits-mlp", None)]
KF = codec.DEFAULT_KEYFRAME_INTERVAL
KS = (1, 2, 5, 10, 20, 50)


def reference_bytes(task: str, params) -> int:
    """torch.save({'net', 'opt'}) after one step, as the reference implementation stores."""
    spec, train, _ = build_spec(task, dataset_params=params)
    ctx = build_context(spec, torch.device("cpu"))
    from pol.step import update
    x, y = torch.from_numpy(train.x[:spec.batch_size]), torch.from_numpy(train.y[:spec.batch_size])
    update(ctx, x, y, [spec.optimizer.lr], 0)
    buf = io.BytesIO()
    torch.save({"net": ctx.model.state_dict(), "opt": ctx.optimizer.state_dict()}, buf)
    return len(buf.getvalue()), spec.optimizer.name


def v1_table(tmp: Path) -> None:
    print("| task | optimizer | reference bytes/ckpt | pol fp32 | ratio | pol fp16 | ratio | fp16 "
          "--all verifies: all 4 metrics / ℓ1,ℓ2,cos (auto δ) |")
    print("|---|---|---|---|---|---|---|---|")
    for task, params in CASES:
        ref, opt = reference_bytes(task, params)
        row = {}
        for prec in ("fp32", "fp16"):
            p = tmp / f"{task}-{prec}"
            train_task(task, p, epochs=1, k=2, precision=prec, dataset_params=params)
            info = inspect_proof(p)
            sizes = [f["size"] for n, f in info["files"].items()
                     if n.startswith("checkpoints/") and not n.endswith("_000000000.safetensors")]
            row[prec] = (sum(sizes) / len(sizes),
                         (verify(p, all_segments=True).valid,
                          verify(p, all_segments=True, metrics=("l1", "l2", "cos")).valid)
                         if prec == "fp16" else None)
        print(f"| {task} | {opt} | {ref} | {row['fp32'][0]:.0f} | {row['fp32'][0] / ref:.3f} "
              f"| {row['fp16'][0]:.0f} | {row['fp16'][0] / ref:.3f} | {row['fp16'][1][0]} / "
              f"{row['fp16'][1][1]} |")


# ------------------------------------------------------------------------------- codec

def ordered_tensors(data: bytes) -> dict[str, torch.Tensor]:
    """A v1 checkpoint's tensors in file order (the writer's state-dict order within a dtype)."""
    from safetensors.torch import load
    import json
    hlen = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + hlen])
    names = sorted((k for k in header if k != "__metadata__"),
                   key=lambda k: header[k]["data_offsets"][0])
    tensors = load(data)
    return {k: tensors[k] for k in names}


def raw_checkpoint(tensors: dict[str, torch.Tensor], precision: str, t: int):
    """What the writer's thread hands the codec: raw bytes and segments."""
    layout = _Layout.build(tensors, precision, key=())
    chunks = [layout.header_bytes(t)]
    segs = [(len(chunks[0]), 1)]
    for st, _, views, _ in layout.groups:
        b = torch.cat(views).to(st)
        chunks.append(b.view(torch.uint8).numpy().tobytes())
        segs.append((len(chunks[-1]), b.element_size()))
    return np.frombuffer(b"".join(chunks), dtype=np.uint8).copy(), tuple(segs)


def kind_of(name: str) -> str:
    if name.startswith("model."):
        return "weights"
    return name.rsplit(".", 1)[-1]  # momentum_buffer, exp_avg, exp_avg_sq, step


def kind_raw(tensors: dict[str, torch.Tensor], precision: str):
    """Per kind of tensor: raw bytes (storage dtype) and segments, no header."""
    out: dict[str, list] = {}
    for name, v in tensors.items():
        st = storage_dtype(name, v, precision)
        b = v.detach().reshape(-1).to(st)
        out.setdefault(kind_of(name), []).append(
            (b.view(torch.uint8).numpy().tobytes(), b.element_size()))
    res = {}
    for kind, items in out.items():
        raw = np.frombuffer(b"".join(x for x, _ in items), dtype=np.uint8).copy()
        segs, last = [], None
        for x, s in items:  # merge runs of one element size, as one writer group would
            if segs and last == s:
                segs[-1] = (segs[-1][0] + len(x), s)
            else:
                segs.append((len(x), s))
            last = s
        res[kind] = (raw, tuple(segs))
    return res


def encode_sequence(raws):
    """Encode a checkpoint sequence as the writer does. Returns (stored sizes, kinds, keyframe size
    of every checkpoint, encode seconds, decode seconds)."""
    enc = codec.Encoder(KF)
    sizes, kinds, blobs = [], [], []
    t0 = time.perf_counter()
    for i, (raw, segs) in enumerate(raws):
        blob, kind = enc.encode(raw, segs, i)
        sizes.append(len(blob))
        kinds.append(kind)
        blobs.append(blob)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = bsegs = None
    for (raw, _), blob in zip(raws, blobs):
        frame = codec.parse_frame(blob, "x", raw.size)
        base = codec.decode(frame, "x", base, bsegs)
        bsegs = frame.segments
        assert np.array_equal(base, raw), "codec round trip failed"
    t_dec = time.perf_counter() - t0
    key_sizes = [len(codec.Encoder(KF).encode(raw, segs, 0)[0]) for raw, segs in raws]
    return sizes, kinds, key_sizes, t_enc, t_dec


def steady(sizes, kinds, key_sizes) -> float:
    """Bytes per checkpoint with one keyframe every KF checkpoints: (K + (KF-1) D) / KF, from the
    mean keyframe size K (checkpoints >= 1) and the mean delta size D. Checkpoint 0 is left out
    (no optimizer state yet, a keyframe anyway)."""
    deltas = [s for s, k in zip(sizes, kinds) if k == codec.DELTA]
    K = float(np.mean(key_sizes[1:]))
    if not deltas:
        return K
    return (K + (KF - 1) * float(np.mean(deltas))) / KF


def momentum_predictor(ckpts, lrs, names) -> tuple[int, int, int]:
    """SGD at k = 1: momentum b_t XOR prediction (W_{t-1} - W_t) / lr (torch: W_t = W_{t-1} -
    lr b_t), against b_t XOR b_{t-1}. Returns (raw bytes, compressed XOR-previous, compressed
    XOR-prediction) summed over checkpoints 2..n."""
    import zstandard
    cctx = zstandard.ZstdCompressor(level=codec.DEFAULT_LEVEL)
    raw_total = base_total = pred_total = 0
    for i in range(2, len(ckpts)):
        t = i  # k = 1: checkpoint i is step i
        lr = np.float32(lrs[t - 1, 0])
        prev_b, cur_b, pred = [], [], []
        for j, n in enumerate(names):
            key = f"optim.{j}.momentum_buffer"
            w0 = ckpts[i - 1][f"model.{n}"].numpy().reshape(-1)
            w1 = ckpts[i][f"model.{n}"].numpy().reshape(-1)
            cur_b.append(ckpts[i][key].numpy().reshape(-1))
            prev_b.append(ckpts[i - 1][key].numpy().reshape(-1))
            pred.append(((w0 - w1) / lr).astype(np.float32))
        cur = np.concatenate(cur_b).view(np.uint32)
        a = np.bitwise_xor(cur, np.concatenate(prev_b).view(np.uint32)).view(np.uint8)
        b = np.bitwise_xor(cur, np.concatenate(pred).view(np.uint32)).view(np.uint8)
        segs = ((a.size, 4),)
        raw_total += a.size
        base_total += len(cctx.compress(codec.shuffle(a, segs)))
        pred_total += len(cctx.compress(codec.shuffle(b, segs)))
    return raw_total, base_total, pred_total


def codec_tables(tmp: Path, resnet_steps: int) -> None:
    runs = [("synthetic-resnet20", {"n_train": 128 * resnet_steps}, 1),
            ("digits-cnn", None, 4), ("digits-mlp", None, 4)]
    main_rows, k_rows, kind_rows, thr_rows, pred_rows = [], [], [], [], []
    for task, params, epochs in runs:
        ref, opt = reference_bytes(task, params)
        p = tmp / f"{task}-k1"
        t0 = time.perf_counter()
        train_task(task, p, epochs=epochs, k=1, dataset_params=params)
        train_s = time.perf_counter() - t0
        proof = open_proof(p)
        steps = list(proof.manifest.checkpoints)
        ckpts = [ordered_tensors(proof.checkpoint_bytes(t)) for t in steps]
        T = proof.manifest.total_steps
        res = {}
        for prec in ("fp32", "fp16"):
            full = [raw_checkpoint(c, prec, t) for c, t in zip(ckpts, steps)]
            for k in KS:
                sel = fmt.checkpoint_steps(T, k)
                if len(sel) < 3:
                    continue
                seq = [full[t] for t in sel]
                sizes, kinds, keys, te, td = encode_sequence(seq)
                raw_mean = float(np.mean([r.size for r, _ in seq[1:]]))
                res[prec, k] = dict(steady=steady(sizes, kinds, keys), raw=raw_mean,
                                    mb=sum(r.size for r, _ in seq) / 2**20, enc=te, dec=td,
                                    stored=sizes)
        for k in (1, 10):
            if ("fp32", k) not in res:
                continue
            r32, r16 = res["fp32", k], res["fp16", k]
            main_rows.append(
                f"| {task} | {opt} | {k} | {ref:,} | {r32['raw']:,.0f} | {r32['steady']:,.0f} | "
                f"**{r32['steady'] / ref:.3f}** | {r32['steady'] / r32['raw']:.3f} | "
                f"{r16['steady']:,.0f} | **{r16['steady'] / ref:.3f}** |")
        for k in KS:
            if ("fp32", k) not in res:
                continue
            r32, r16 = res["fp32", k], res["fp16", k]
            per = 1000 / k / 2**20
            k_rows.append(f"| {task} | {k} | {r32['raw'] * per:.1f} | {r16['raw'] * per:.1f} | "
                          f"{r32['steady'] * per:.1f} | {r16['steady'] * per:.1f} |")
        both = [k for k in (1, 10) if ("fp32", k) in res]
        enc_mb = sum(res["fp32", k]["mb"] for k in both)
        enc_s = sum(res["fp32", k]["enc"] for k in both)
        dec_s = sum(res["fp32", k]["dec"] for k in both)
        thr_rows.append(f"| {task} | {enc_mb:.0f} | {enc_mb / enc_s:.0f} | {enc_mb / dec_s:.0f} | "
                        f"{T} steps in {train_s:.0f} s |")
        # per kind of tensor (fp32), steady state
        for k in both:
            sel = fmt.checkpoint_steps(T, k)
            per_kind: dict[str, list] = {}
            for c in (ckpts[t] for t in sel):
                for kind, v in kind_raw(c, "fp32").items():
                    per_kind.setdefault(kind, []).append(v)
            cells = []
            for kind in ("weights", "momentum_buffer", "exp_avg", "exp_avg_sq"):
                seq = per_kind.get(kind)
                if not seq:
                    continue
                sizes, kinds, keys, _, _ = encode_sequence(seq)
                raw_mean = float(np.mean([r.size for r, _ in seq[1:]]))
                cells.append(f"{kind} {steady(sizes, kinds, keys) / raw_mean:.3f}")
            kind_rows.append(f"| {task} | {k} | {', '.join(cells)} |")
        if opt == "sgd":
            ctx = build_context(proof.manifest.spec, torch.device("cpu"))
            names = [n for n, _ in ctx.model.named_parameters()]
            raw_b, base_b, pred_b = momentum_predictor(ckpts, proof.lrs, names)
            pred_rows.append(f"| {task} | {base_b / raw_b:.3f} | {pred_b / raw_b:.3f} |")
        if task == "digits-mlp":  # the writer's own output equals the sizes computed here
            q = tmp / f"{task}-k10-z"
            train_task(task, q, epochs=epochs, k=10, compress=True, dataset_params=params)
            info = inspect_proof(q)
            got = [info["files"][fmt.stored_checkpoint_name(t, 2)]["size"]
                   for t in fmt.checkpoint_steps(T, 10)]
            assert got == res["fp32", 10]["stored"], (got, res["fp32", 10]["stored"])
            rep = verify(q, all_segments=True)
            assert rep.valid and all(s.exact for s in rep.segments), rep.render()
            print(f"check: pol train --compress (digits-mlp, k=10) wrote exactly these sizes, "
                  f"format v{info['format_version']}; verify --all: exact mode, valid")
        shutil.rmtree(p, ignore_errors=True)

    print("\nCodec (steady state: one keyframe every 16 checkpoints), bytes per checkpoint")
    print("| task | optimizer | k | reference | pol v1 fp32 | codec | ÷ ref | ÷ v1 fp32 | "
          "codec + fp16 | ÷ ref |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(main_rows))
    print("\nSize against k: MB of checkpoints per 1,000 training steps")
    print("| task | k | v1 fp32 | v1 fp16 | codec | codec + fp16 |")
    print("|---|---|---|---|---|---|")
    print("\n".join(k_rows))
    print("\nThroughput (one thread, zstd level 3), fp32 checkpoints of the k = 1 and k = 10 runs")
    print("| task | MB in | encode MB/s | decode MB/s (incl. check) | training |")
    print("|---|---|---|---|---|")
    print("\n".join(thr_rows))
    print("\nCompressed ÷ raw per kind of tensor (fp32, steady state)")
    print("| task | k | ratios |")
    print("|---|---|---|")
    print("\n".join(kind_rows))
    print("\nSGD momentum at k = 1, compressed ÷ raw: XOR previous momentum (codec) / "
          "XOR (W_{t-1} - W_t) / lr")
    print("| task | XOR previous | XOR predictor |")
    print("|---|---|---|")
    print("\n".join(pred_rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resnet-steps", type=int, default=60)
    ap.add_argument("--skip-v1", action="store_true")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pol-size-"))
    try:
        if not a.skip_v1:
            v1_table(tmp)
        codec_tables(tmp, a.resnet_steps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
