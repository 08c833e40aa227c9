"""Where exact mode's float64 step differs between two devices (issue 14's diagnosis).

Exact mode computes a step in float64 and rounds to float32 at its boundaries, logging values that
lie within `window` float32 ulps of a rounding tie. Replay on another device is bitwise only if the
two devices' float64 values differ by less than the window wherever a value is near a tie. This
script measures that difference on one step, from the same float32 state and the same batch, on
two devices (default: cuda and cpu; on a machine without a GPU: the CPU with 1 thread and with all
threads, whose reductions are ordered differently):

  d = |x_A − x_B| ÷ ulp32(x)   for every value of each rounding point (gradients, state, loss)

reported as quantiles, the share of values beyond 2^-12 and 2^-8 ulps (the default and the widest
window), and the values whose float32 rounding differs (each one breaks bitwise replay unless
logged), per tensor for the worst. Variants:

  boundary   pol's exact mode as it is (rounding at the step's boundaries only)
  per-op     the same step with every leaf module's output, and the gradient flowing into it,
             rounded to float32 (round-to-nearest, no log) as Srivastava et al. do: each op's
             inputs are then float32 values identical on both devices, so only one op's float64
             noise reaches each rounding

    python benchmarks/diag_exact_devices.py --tasks resnet20,gpt --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch

from pol.step import exact as ex

POINT_NAMES = {ex.GRADIENTS: "gradients", ex.STATE: "state", ex.LOSS: "loss"}


def _spec(name: str, args):
    from pol.tasks import build_spec
    common = dict(device="cpu", seed=0, exact=True)
    if name == "resnet20":
        dp = {"seed": 0, "n_train": 2 * args.batch_resnet, "n_test": 64}
        spec, train, _ = build_spec("synthetic-resnet20", epochs=1, batch_size=args.batch_resnet,
                                    dataset_params=dp, **common)
        return spec, train
    if name == "gpt":
        dp = {"seed": 0, "n_train": 4 * args.gpt_batch, "n_test": 16,
              "block_size": args.gpt_block, "vocab_size": 256}
        spec, train, _ = build_spec("synthetic-gpt", epochs=1, batch_size=args.gpt_batch,
                                    dataset_params=dp, **common)
        kw = {**spec.model.kwargs, "n_layer": args.gpt_layers, "n_head": args.gpt_heads,
              "n_embd": args.gpt_embd, "block_size": args.gpt_block, "vocab_size": 256}
        return spec.with_(model=replace(spec.model, kwargs=kw)), train
    if name == "digits-cnn":
        spec, train, _ = build_spec("digits-cnn", epochs=1, **common)
        return spec, train
    raise SystemExit(f"unknown task {name!r}")


@contextmanager
def _captured(store: list):
    """Every float64 vector exact mode rounds, with its rounding point, in call order."""
    orig = ex.round_exact

    def spy(x, log, t, point, *a, **kw):
        store.append((point, x.detach().double().cpu().clone()))
        return orig(x, log, t, point, *a, **kw)
    ex.round_exact = spy
    try:
        yield
    finally:
        ex.round_exact = orig


def _per_op_hooks(model: torch.nn.Module) -> list:
    """Round every leaf module's output, and the gradient flowing into it, to float32 values."""
    handles = []

    def fwd(mod, inp, out):
        if not isinstance(out, torch.Tensor) or out.dtype != torch.float64:
            return out
        r = out.float().double()
        if r.requires_grad:
            r.register_hook(lambda g: g.float().double())
        return r
    for m in model.modules():
        if not list(m.children()):
            handles.append(m.register_forward_hook(fwd))
    return handles


def one_step(spec, train, device: torch.device, variant: str, threads: int | None) -> list:
    from pol.step import build_context, numerics, update
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    store: list = []
    try:
        with numerics(spec, device):
            ctx = build_context(spec, device)
            handles = _per_op_hooks(ctx.model) if variant == "per-op" else []
            idx = np.arange(spec.batch_size)
            x, y = torch.from_numpy(train.x[idx]), torch.from_numpy(train.y[idx])
            lrs = [spec.optimizer.lr] * len(ctx.optimizer.param_groups)
            with _captured(store):
                update(ctx, x, y, lrs, 0)
                # a second step: Adam's and momentum's state enter the rounding
                update(ctx, x, y, lrs, 1)
            for h in handles:
                h.remove()
            sizes = [p.numel() for g in ctx.optimizer.param_groups for p in g["params"]]
    finally:
        torch.set_num_threads(old_threads)
    return store, sizes


def _ulp32(x: torch.Tensor) -> torch.Tensor:
    f = x.float().abs()
    nxt = torch.nextafter(f, torch.full_like(f, math.inf))
    return (nxt - f).double().clamp_min(2.0 ** -149)


FLUSH_TRIES = (0.0, 2.0 ** -30, 2.0 ** -24, 2.0 ** -20, 2.0 ** -16, 2.0 ** -12)


def flush_what_if(x: torch.Tensor, d: torch.Tensor, sizes: list[int], window: float) -> dict:
    """Gradients: with values below `tau` × their tensor's largest flushed to zero, how many
    values are still beyond the window, and the expected number whose rounding differs unlogged
    (a value at distance ≤ d from a tie and beyond the window: about 2·(d − window) of them)."""
    if sum(sizes) != x.numel():
        return {}
    big = torch.cat([t.abs().max().expand(t.numel()) for t in x.split(sizes)])
    out = {}
    for tau in FLUSH_TRIES:
        keep = x.abs() >= tau * big
        dd = torch.where(keep, d, torch.zeros_like(d))
        out[f"{tau:.3g}"] = {
            "flushed": int((~keep).sum()),
            "over_window": int((dd > window).sum()),
            "expected_unlogged_flips": float((2 * (dd - window).clamp_min(0)).clamp_max(1).sum())}
    rel = (x.abs() / big.clamp_min(1e-300))[d > window]
    out["log2_rel_of_over_window"] = torch.quantile(
        rel.clamp_min(1e-300).log2(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    ).tolist() if rel.numel() > 1 else []
    return out


def compare(a: list, b: list, sizes: list[int] | None = None,
            window: float = 2.0 ** -12) -> list[dict]:
    rows = []
    for i, ((pa, xa), (pb, xb)) in enumerate(zip(a, b)):
        assert pa == pb and xa.shape == xb.shape, "the two devices rounded different vectors"
        d = (xa - xb).abs() / _ulp32(xa)
        differ = int((xa.float() != xb.float()).sum())
        q = torch.quantile(d[:1_000_000] if d.numel() > 1_000_000 else d,
                           torch.tensor([0.5, 0.99, 0.999], dtype=torch.float64)).tolist() \
            if d.numel() > 1 else [float(d.max())] * 3
        rows.append({"call": i, "point": POINT_NAMES.get(pa, str(pa)), "values": xa.numel(),
                     "d_median": q[0], "d_p99": q[1], "d_p999": q[2], "d_max": float(d.max()),
                     "over_2^-12": float((d > 2.0 ** -12).double().mean()),
                     "over_2^-8": float((d > 2.0 ** -8).double().mean()),
                     "float32_differs": differ, "worst_index": int(d.argmax())})
        if pa == ex.GRADIENTS and sizes:
            rows[-1]["flush"] = flush_what_if(xa, d, sizes, window)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="resnet20,gpt")
    ap.add_argument("--variants", default="boundary,per-op")
    ap.add_argument("--devices", default="", help="A,B (default: cuda,cpu; no GPU: cpu:1,cpu)")
    ap.add_argument("--batch-resnet", type=int, default=128)
    ap.add_argument("--gpt-layers", type=int, default=8)
    ap.add_argument("--gpt-heads", type=int, default=8)
    ap.add_argument("--gpt-embd", type=int, default=512)
    ap.add_argument("--gpt-block", type=int, default=128)
    ap.add_argument("--gpt-batch", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    devs = args.devices or ("cuda,cpu" if torch.cuda.is_available() else "cpu:1,cpu")
    pair = []
    for d in devs.split(","):
        name, _, th = d.partition(":")
        pair.append((torch.device(name), int(th) if th else None))
    out = []
    for task in args.tasks.split(","):
        spec, train = _spec(task, args)
        for variant in args.variants.split(","):
            a, sizes = one_step(spec, train, pair[0][0], variant, pair[0][1])
            b, _ = one_step(spec, train, pair[1][0], variant, pair[1][1])
            rows = compare(a, b, sizes)
            out.append({"task": task, "variant": variant, "devices": devs, "rows": rows})
            for r in rows:
                print(f"{task:9s} {variant:9s} {r['point']:9s} n={r['values']:>9d} "
                      f"d50={r['d_median']:.2e} d99={r['d_p99']:.2e} d999={r['d_p999']:.2e} "
                      f"max={r['d_max']:.2e} >2^-12={r['over_2^-12']:.2e} "
                      f">2^-8={r['over_2^-8']:.2e} f32-differs={r['float32_differs']}",
                      flush=True)
                for tau, f in r.get("flush", {}).items():
                    print(f"    flush < {tau} of tensor max: {f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
