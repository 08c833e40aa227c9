"""The user-loop matrix of the real-loops issue, on a GPU: each loop recorded through the public
API on `--device` (deterministic algorithms on, as the README tells GPU users) and verified on the
same device with every segment replayed (`all_segments`), then a tampered copy (one weight of one
checkpoint moved, digests recomputed) verified again. A row passes when the honest proof is VALID
with every segment bitwise exact and the tampered copy is rejected. A last pair of rows records
the SGD loop without deterministic algorithms (what a user's loop runs unless told otherwise), for
information.

    CUBLAS_WORKSPACE_CONFIG=:4096:8 python benchmarks/gpu_user_matrix.py --device cuda --json out.json

Runs on the CPU too (`--device cpu`), where the CI tests cover the same loops.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import pol
from pol.datasets import TokenFile
from pol.models import build_model
from pol.proof import format as fmt
from pol.proof.writer import rehash_manifest
from pol.spec import ModelSpec
from pol.step.optimizers import MODEL_PREFIX
from pol.verifier import verify

EPOCHS, K, N = 2, 4, 512
EXTRA: dict = {}  # allow_nondeterministic=True for the rows without deterministic algorithms
LENET = {"in_channels": 1, "num_classes": 10, "image_size": 8}
GPT = {"vocab_size": 64, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 64}

_FACTORY = '''
import numpy as np
import torch
from torch.utils.data import Dataset


class Images(Dataset):
    def __init__(self, n=512, seed=0):
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
        self.y = rng.integers(0, 10, n).astype(np.int64)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]), int(self.y[i])


def make(seed=0):
    return Images(seed=seed)
'''


def images(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 1, 8, 8)).astype(np.float32),
            rng.integers(0, 10, n).astype(np.int64))


def lenet(device: str) -> torch.nn.Module:
    return build_model("lenet", **LENET).to(device)


def train(opt, loader, model, autocast: bool = False, loss_fn=F.cross_entropy) -> None:
    for _ in range(EPOCHS):
        for x, y in loader:
            opt.zero_grad()
            if autocast:
                with opt.autocast():
                    loss = loss_fn(model(x), y)
                opt.backward(loss)
            else:
                loss = loss_fn(model(x), y)
                loss.backward()
            opt.step(loss=loss)


def attach(work: Path, model, opt, data=None, **kw):
    args = dict(model=model, optimizer=opt, data=images() if data is None else data,
                out=work / "proof", model_spec=ModelSpec("lenet", dict(LENET)), batch_size=32,
                epochs=EPOCHS, k=K, seed=3, init="from-seed", **EXTRA)
    args.update(kw)
    return pol.attach(**args)


# ------------------------------------------------------------------ the loops


def sgd_clip(work, device):
    model = lenet(device)
    opt, loader = attach(work, model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                         clip_grad_norm=1.0)
    train(opt, loader, model)
    return opt.proof, "npz", {}


def adamw_warmup_cosine(work, device):
    model = lenet(device)
    opt, loader = attach(work, model, torch.optim.AdamW(model.parameters(), lr=3e-3))
    total = EPOCHS * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: min(1.0, (t + 1) / 5) * 0.5 * (1 + math.cos(math.pi * t / total)))
    for _ in range(EPOCHS):
        for x, y in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step(loss=loss)
            sched.step()
    return opt.proof, "npz", {}


def accumulation4(work, device):
    model = lenet(device)
    opt, loader = attach(work, model, torch.optim.SGD(model.parameters(), lr=0.05),
                         batch_size=8, accumulation=4)
    for _ in range(EPOCHS):
        for i, (x, y) in enumerate(loader):
            loss = F.cross_entropy(model(x), y) / 4
            loss.backward()
            opt.record_loss(loss)
            if (i + 1) % 4 == 0:
                opt.step()
    return opt.proof, "npz", {}


def bf16_autocast(work, device):
    model = lenet(device)
    opt, loader = attach(work, model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                         autocast="bf16", clip_grad_norm=0.5)
    train(opt, loader, model, autocast=True)
    return opt.proof, "npz", {}


def fp16_grad_scaler(work, device):
    model = lenet(device)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**17, growth_interval=2)
    opt, loader = attach(work, model, torch.optim.Adam(model.parameters(), lr=1e-2),
                         autocast="fp16", grad_scaler=scaler, clip_grad_norm=1.0)
    train(opt, loader, model, autocast=True)
    last = load_file(str(opt.proof / fmt.checkpoint_name(opt.recorder.t)))
    skipped = opt.recorder.t - int(last["optim.0.step"])
    return opt.proof, "npz", {"skipped_steps": skipped, "steps": opt.recorder.t}


def dataloader_workers(work, device):
    (work / "polgpu_images.py").write_text(_FACTORY)
    sys.path.insert(0, str(work))
    import importlib
    sys.modules.pop("polgpu_images", None)
    mod = importlib.import_module("polgpu_images")
    model = lenet(device)
    opt, loader = attach(work, model, torch.optim.SGD(model.parameters(), lr=0.05),
                         data=mod.make(), data_params={"factory": "polgpu_images:make"},
                         num_workers=2)
    train(opt, loader, model)
    return opt.proof, "polgpu_images:make", {}


def token_file_gpt(work, device):
    rng = np.random.default_rng(0)
    path = work / "train.bin"
    rng.integers(0, GPT["vocab_size"], 40 * (GPT["block_size"] + 1) + 5).astype(np.uint16).tofile(path)
    model = build_model("gpt", **GPT).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    opt, loader = pol.attach(model=model, optimizer=opt, data=TokenFile(path, GPT["block_size"]),
                             out=work / "proof", model_spec=ModelSpec("gpt", dict(GPT)),
                             batch_size=8, epochs=EPOCHS, k=K, seed=4, init="from-seed",
                             loss="lm_cross_entropy", prepare="tokens", **EXTRA)
    train(opt, loader, model, loss_fn=opt.loss_fn)
    return opt.proof, str(path), {}


def recorder_readme(work, device):
    x, y = images()
    model = lenet(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rec = pol.Recorder(work / "proof", model=model, optimizer=opt, data=(x, y),
                       model_spec=ModelSpec("lenet", dict(LENET)), batch_size=32, epochs=EPOCHS,
                       k=K, seed=3, init="from-seed", **EXTRA)
    xd, yd = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    for epoch in range(EPOCHS):
        for idx in rec.epoch_batches(epoch):
            i = torch.from_numpy(idx).to(device)
            xb, yb = xd[i], yd[i]
            rec.record_batch(idx, xb, yb)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            rec.step(loss)
    rec.close()
    return rec.path, "npz", {}


CASES = {f.__name__: f for f in (sgd_clip, adamw_warmup_cosine, accumulation4, bf16_autocast,
                                 fp16_grad_scaler, dataloader_workers, token_file_gpt,
                                 recorder_readme)}


# ------------------------------------------------------------------ running a row


def tampered(proof: Path, work: Path) -> Path:
    bad = work / "tampered"
    shutil.rmtree(bad, ignore_errors=True)
    shutil.copytree(proof, bad)
    name = fmt.checkpoint_name(2 * K)
    state = load_file(str(bad / name))
    key = next(k for k in state if k.startswith(MODEL_PREFIX) and k.endswith("weight"))
    state[key] = state[key].clone()
    state[key].view(-1)[0] += 1e-3
    save_file(state, str(bad / name))
    rehash_manifest(bad)
    return bad


def row(name: str, device: str, deterministic: bool, root: Path) -> dict:
    work = root / f"{name}-{'det' if deterministic else 'nondet'}"
    work.mkdir(parents=True)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    EXTRA.clear()
    if not deterministic:
        EXTRA["allow_nondeterministic"] = True
    out: dict = {"case": name, "deterministic": deterministic}
    cwd = os.getcwd()
    os.chdir(work)
    try:
        t0 = time.perf_counter()
        proof, data, extra = CASES[name](work, device)
        out.update(extra, record_s=round(time.perf_counter() - t0, 2))
        if data == "npz":
            x, y = images()
            np.savez(work / "data.npz", x=x, y=y)
            data = str(work / "data.npz")
        t0 = time.perf_counter()
        r = verify(proof, data=data, all_segments=True, device=device,
                   trusted_modules=("polgpu_images",))
        out.update(verify_s=round(time.perf_counter() - t0, 2), valid=r.valid,
                   segments=len(r.segments), exact=sum(bool(s.exact) for s in r.segments))
        if not r.valid:
            out["report"] = r.render(verbose=True)[-3000:]
        bad = verify(tampered(proof, work), data=data, all_segments=True, device=device,
                     trusted_modules=("polgpu_images",))
        out["tampered_rejected"] = not bad.valid
        out["ok"] = bool(r.valid and out["exact"] == out["segments"] > 0 and not bad.valid)
    except Exception as e:  # noqa: BLE001 - a row's failure is a result
        out.update(ok=False, error=f"{type(e).__name__}: {e}", tb=traceback.format_exc()[-2000:])
    finally:
        os.chdir(cwd)
        torch.use_deterministic_algorithms(prev)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--json")
    a = ap.parse_args()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plan = [(c, True) for c in a.cases.split(",")] + [("sgd_clip", False),
                                                           ("token_file_gpt", False)]
        for name, det in plan:
            r = row(name, a.device, det, Path(tmp))
            rows.append(r)
            print(f"{name:22s} det={det!s:5s} ok={r.get('ok')} valid={r.get('valid')} "
                  f"exact={r.get('exact')}/{r.get('segments')} "
                  f"tampered_rejected={r.get('tampered_rejected')} "
                  f"{'skipped=' + str(r['skipped_steps']) if 'skipped_steps' in r else ''}"
                  f"{r.get('error', '')}", flush=True)
    meta = {"device": a.device, "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None,
            "date": time.strftime("%Y-%m-%d")}
    if a.json:
        Path(a.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
