"""GPU checks of the hardened verifier's soundness checks (issue 10), in one run on the device:

1. honest proofs made on the GPU (digits-cnn, synthetic-resnet20; deterministic algorithms, pol's
   default) verified on the same GPU: valid, exact mode, every new check passing;
2. an honest GPU proof made with non-deterministic kernels (--no-deterministic) verified on the GPU:
   what the new checks say in tolerant mode (optimizer replay, data dependence);
3. the optimizer-state forgery claiming device=cuda, verified on the GPU: rejected;
4. the data-dependence probe's cost on the GPU (bench_soundness.py), ResNet-20, k = 10 and 100.

    OUT=dir python benchmarks/gpu_soundness.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(os.environ.get("OUT", "gpu-out"))
OUT.mkdir(parents=True, exist_ok=True)
WORK = Path("/tmp/pol-gpu")
RESULTS: dict = {"date": time.strftime("%Y-%m-%d"), "runs": {}}


def save() -> None:
    (OUT / "gpu_soundness.json").write_text(json.dumps(RESULTS, indent=1))


def summarize(rep) -> dict:
    return {"valid": rep.valid, "failed": [c.name for c in rep.checks if c.failed],
            "warned": [c.name for c in rep.checks if c.status == "warn"],
            "checks": {c.name: [c.status, c.reason[:160]] for c in rep.checks},
            "segments": len(rep.segments), "exact": sum(s.exact for s in rep.segments),
            "seconds": rep.stats.get("seconds")}


def main() -> None:
    import torch

    from pol.prover.trainer import train_task
    from pol.verifier import verify
    RESULTS["torch"] = torch.__version__
    RESULTS["gpu"] = torch.cuda.get_device_name(0)
    small = {"seed": 0, "n_train": 2048, "n_test": 100}
    runs = [("digits-cnn", {"epochs": 2, "k": 10}, True),
            ("synthetic-resnet20", {"epochs": 1, "k": 10, "dataset_params": small}, True),
            ("digits-cnn", {"epochs": 2, "k": 10}, False)]
    for task, kw, det in runs:
        name = f"{task}-{'det' if det else 'nondet'}"
        p = WORK / name
        t0 = time.perf_counter()
        train_task(task, p, device="cuda", deterministic=det, overwrite=True, **kw)
        r = {"train_s": time.perf_counter() - t0}
        for dev in ("cuda", "cpu"):
            for mode, opts in (("default", {}), ("all", {"all_segments": True})):
                t0 = time.perf_counter()
                try:
                    rep = verify(p, device=dev, **opts)
                    r[f"{dev}-{mode}"] = summarize(rep)
                except Exception as e:  # noqa: BLE001 - recorded
                    r[f"{dev}-{mode}"] = {"error": f"{type(e).__name__}: {e}"[:300]}
                r[f"{dev}-{mode}"]["wall_s"] = time.perf_counter() - t0
                print(name, dev, mode, {k: v for k, v in r[f"{dev}-{mode}"].items()
                                        if k in ("valid", "failed", "warned", "error")},
                      flush=True)
        RESULTS["runs"][name] = r
        save()
    # the forgery, claiming cuda, verified on the GPU
    from pol.attacks.optstate import attack_optimizer_state
    tgt = WORK / "digits-cnn-det"
    spoof = WORK / "spoof"
    import shutil
    shutil.rmtree(spoof, ignore_errors=True)
    attack_optimizer_state(tgt, spoof, measure_honest=False)
    body = json.loads((spoof / "manifest.json").read_text())
    body["spec"]["device"] = "cuda"
    from pol.proof import format as fmt
    body["root_digest"] = fmt.root_digest(body)
    (spoof / "manifest.json").write_text(json.dumps(body, indent=1, sort_keys=True))
    rep = verify(spoof, device="cuda")
    RESULTS["forgery_claims_cuda_on_gpu"] = summarize(rep)
    print("forgery on gpu", rep.valid, [c.name for c in rep.checks if c.failed], flush=True)
    save()
    # probe cost on the GPU
    for k in (10, 100):
        j = OUT / f"probe_cost_resnet20_k{k}.json"
        subprocess.run([sys.executable, "benchmarks/bench_soundness.py", "--task",
                        "synthetic-resnet20", "--epochs", "1", "--k", str(k), "--n-train",
                        "6400", "--device", "cuda", "--repeats", "3", "--json", str(j)],
                       check=False, timeout=240)
        if j.exists():
            RESULTS[f"probe_cost_k{k}"] = json.loads(j.read_text())
            print("probe cost", k, RESULTS[f"probe_cost_k{k}"], flush=True)
        save()


if __name__ == "__main__":
    main()
