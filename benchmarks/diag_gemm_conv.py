"""Float64 convolutions on a GPU: cuDNN against `pol.step.gemm_conv` (unfold + matrix product),
forward and backward, on ResNet-20's convolution shapes at batch 128, with deterministic
algorithms (what pol's GPU proofs run with). Also the largest relative difference between the
two (float64 noise, which exact mode absorbs) and float32 cuDNN for scale.

    python benchmarks/diag_gemm_conv.py --json out.json
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

from pol.step import gemm_conv

# (channels in, out, H, stride, how many in ResNet-20)
SHAPES = [(3, 16, 32, 1, 1), (16, 16, 32, 1, 6), (16, 32, 32, 2, 1), (32, 32, 16, 1, 5),
          (32, 64, 16, 2, 1), (64, 64, 8, 1, 5)]


def _time(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3


def _model_steps(dtype, mode: str, batch: int, reps: int) -> dict:
    """ResNet-20's forward and backward passes (no optimizer), ms per step: wall (the loop is
    bound by the host or the device, whichever is slower) and the host's time to queue them."""
    from pol.models import resnet20
    torch.manual_seed(0)
    model = resnet20().cuda().to(dtype)
    mods = gemm_conv.install(model) if mode != "cudnn" else []
    gemm_conv.COMPOSITE = mode == "composite"
    x = torch.randn(batch, 3, 32, 32, device="cuda", dtype=dtype)
    y = torch.randint(0, 10, (batch,), device="cuda")

    def step():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    host = 0.0
    for _ in range(reps):
        h0 = time.perf_counter()
        step()
        host += time.perf_counter() - h0
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / reps * 1e3
    gemm_conv.uninstall(mods)
    gemm_conv.COMPOSITE = False
    return {"wall_ms": wall, "host_ms": host / reps * 1e3}


def _mm_host(dtype, reps: int = 200) -> float:
    """µs of host time per `torch.mm` call at ResNet-20's first-stage shape (no waits)."""
    a = torch.randn(131072, 144, device="cuda", dtype=dtype)
    b = torch.randn(144, 16, device="cuda", dtype=dtype)
    for _ in range(5):
        torch.mm(a, b)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    host = time.perf_counter() - t0
    torch.cuda.synchronize()
    return host / reps * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator(device="cuda").manual_seed(0)
    rows, total = [], {"cudnn64": 0.0, "gemm64": 0.0, "cudnn32": 0.0}
    for c, o, h, s, count in SHAPES:
        row = {"in": c, "out": o, "H": h, "stride": s, "count": count}
        for name, dtype, fn in (("cudnn64", torch.float64, F.conv2d),
                                ("gemm64", torch.float64, None),
                                ("cudnn32", torch.float32, F.conv2d)):
            x = torch.randn(a.batch, c, h, h, device="cuda", dtype=dtype, generator=g,
                            requires_grad=True)
            w = torch.randn(o, c, 3, 3, device="cuda", dtype=dtype, generator=g,
                            requires_grad=True)
            up = torch.randn(a.batch, o, h // s, h // s, device="cuda", dtype=dtype, generator=g)

            def step(x=x, w=w, up=up, fn=fn, s=s):
                y = (fn(x, w, None, s, 1) if fn is not None
                     else gemm_conv.conv2d(x, w, None, (s, s), (1, 1), (1, 1)))
                torch.autograd.grad(y, [x, w], up)
            row[name + "_ms"] = _time(step, a.reps)
            total[name] += row[name + "_ms"] * count
        x = torch.randn(a.batch, c, h, h, device="cuda", dtype=torch.float64, generator=g)
        w = torch.randn(o, c, 3, 3, device="cuda", dtype=torch.float64, generator=g)
        ref = F.conv2d(x, w, None, s, 1)
        got = gemm_conv.conv2d(x, w, None, (s, s), (1, 1), (1, 1))
        row["max_rel_diff"] = float(((got - ref).abs().max() / ref.abs().max()))
        rows.append(row)
        print(json.dumps(row))
    models = {f"{name}_{mode}": _model_steps(dtype, mode, a.batch, a.reps)
              for name, dtype in (("fp32", torch.float32), ("fp64", torch.float64))
              for mode in (("cudnn",) if dtype == torch.float32 else
                           ("cudnn", "function", "composite"))}
    print(json.dumps(models))
    mm = {"fp32_us": _mm_host(torch.float32), "fp64_us": _mm_host(torch.float64)}
    print(json.dumps({"mm_host": mm}))
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "batch": a.batch, "rows": rows, "resnet20_fwd_bwd": models, "mm_host": mm,
           "resnet20_convs_ms": total,
           "gemm64_over_cudnn64": total["gemm64"] / total["cudnn64"],
           "gemm64_over_cudnn32": total["gemm64"] / total["cudnn32"]}
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
