"""What a `pol verify` process pays before its first replayed step that no change to pol can
remove: the interpreter, `import torch`, CUDA's initialization, `import torch._dynamo` (torch's
optimizers import it at their first step, `torch.use_deterministic_algorithms` through
`torch._inductor.config`) and `import scipy.stats` (the KS p-value), each timed in a fresh
process, `--repeats` times (median), after one untimed run (the file cache warm; bytecode
written where the interpreter can write it). `--pycache DIR`: PYTHONPYCACHEPREFIX for all of them,
where the packages' own directories keep no bytecode (s12d's figures, taken without this and
without the untimed run, look like compilation: 5.8 s for torch._dynamo). Also whether CUDA's
initialization holds the GIL: a thread counts while the main thread initializes CUDA.

    python benchmarks/diag_import_costs.py [--repeats 3] [--pycache DIR] [--json OUT.json]
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

PROBES = {
    "interpreter": "pass",
    "import torch": "import torch",
    "import torch; cuda init": "import torch\nt=time.perf_counter()\ntorch.cuda.init()\n"
                               "torch.zeros(1, device='cuda')\nextra=time.perf_counter()-t",
    "import torch; import torch._dynamo": "import torch\nt=time.perf_counter()\n"
                                          "import torch._dynamo\nextra=time.perf_counter()-t",
    "import torch; import scipy.stats": "import torch\nt=time.perf_counter()\n"
                                        "import scipy.stats\nextra=time.perf_counter()-t",
    "cuda init beside a counting thread": (
        "import torch, threading\nn=[0]\nstop=[False]\n"
        "def count():\n    while not stop[0]:\n        n[0]+=1\n"
        "th=threading.Thread(target=count); th.start()\nt=time.perf_counter()\n"
        "torch.zeros(1, device='cuda')\nextra=time.perf_counter()-t\nstop[0]=True; th.join()\n"
        "t=time.perf_counter(); m=n[0]\nstop[0]=False; n[0]=0\nth=threading.Thread(target=count)"
        "\nth.start(); time.sleep(extra); stop[0]=True; th.join()\n"
        "print('counts', m, n[0])"),
}


def run(code: str, env: dict[str, str]) -> tuple[float, float | None, str]:
    src = ("import time\nt0=time.perf_counter()\nextra=None\n" + code +
           "\nprint('wall', time.perf_counter()-t0, 'extra', extra)")
    wrapper = ("import subprocess,sys,time\nt=time.perf_counter()\n"
               "p=subprocess.run([sys.executable,'-c',sys.argv[1]],capture_output=True,text=True)\n"
               "print('process', time.perf_counter()-t)\nprint(p.stdout)\nprint(p.stderr[-500:])")
    out = subprocess.run([sys.executable, "-c", wrapper, src], capture_output=True,
                         text=True, env=env).stdout
    process = float(out.split("process ")[1].split()[0])
    extra = None
    if "extra " in out and "extra None" not in out:
        extra = float(out.split("extra ")[1].split()[0])
    counts = out.split("counts ")[1].split("\n")[0] if "counts " in out else ""
    return process, extra, counts


def main() -> None:
    argv = sys.argv[1:]
    repeats = int(argv[argv.index("--repeats") + 1]) if "--repeats" in argv else 3
    env = dict(os.environ)
    if "--pycache" in argv:
        env["PYTHONPYCACHEPREFIX"] = argv[argv.index("--pycache") + 1]
    rows = {}
    for name, code in PROBES.items():
        run(code, env)  # untimed: the file cache warm, bytecode written
        got = [run(code, env) for _ in range(repeats)]
        rows[name] = {"process_s": statistics.median(g[0] for g in got),
                      "part_s": (statistics.median(g[1] for g in got)
                                 if all(g[1] is not None for g in got) else None),
                      "counts": [g[2] for g in got if g[2]]}
        print(f"{name:40s} process {rows[name]['process_s']:.3f} s"
              + (f", the part {rows[name]['part_s']:.3f} s" if rows[name]["part_s"] else "")
              + (f", thread counts during / alone: {rows[name]['counts']}"
                 if rows[name]["counts"] else ""), flush=True)
    if "--json" in argv:
        with open(argv[argv.index("--json") + 1], "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
