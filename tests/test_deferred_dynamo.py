"""pol's own processes load torch's compiler stack (`torch._dynamo`, ~1 s) only when something
uses it: the optimizers' no-op uses of it are served by a stand-in, bit-for-bit the same steps,
and any real use loads the real module. Each case runs in a fresh interpreter (the stand-in is
process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

_TRAIN = """
import hashlib, json, sys
from pol import deferred_dynamo
installed = deferred_dynamo.install() if sys.argv[1] == "stand-in" else False
import torch
from pol.step.runtime import set_deterministic
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
h = hashlib.sha256()
set_deterministic(True)
for Opt in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
    o = Opt(m.parameters(), lr=0.05)
    for _ in range(3):
        o.zero_grad()
        m(torch.randn(5, 6)).square().sum().backward()
        o.step()
    o.load_state_dict(o.state_dict())
det = torch.are_deterministic_algorithms_enabled()
set_deterministic(False)
for p in m.parameters():
    h.update(p.detach().numpy().tobytes())
print(json.dumps({"installed": installed, "active": deferred_dynamo.active(), "det": det,
                  "digest": h.hexdigest(), "dynamo": type(sys.modules.get("torch._dynamo")).__name__,
                  "inductor": "torch._inductor.config" in sys.modules}))
"""


def _py(code: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_optimizers_step_alike_without_loading_the_compiler_stack():
    with_standin, without = _py(_TRAIN, "stand-in"), _py(_TRAIN, "torch")
    assert with_standin["installed"] and with_standin["active"]
    assert with_standin["dynamo"] == "_Standin" and not with_standin["inductor"]
    assert with_standin["det"] and without["det"]
    assert with_standin["digest"] == without["digest"]
    assert not without["active"] and without["dynamo"] == "module"


_REAL_USE = """
import json, sys
from pol import deferred_dynamo
deferred_dynamo.install()
import torch
m = torch.nn.Linear(3, 1)
o = torch.optim.SGD(m.parameters(), lr=0.1)   # its methods wrapped by the stand-in
import torch._dynamo.utils                     # a submodule: the real package is loaded
real = sys.modules["torch._dynamo"]
f = torch.compile(lambda x: x * 2 + 1, backend="eager")
y = f(torch.ones(2))
m(torch.ones(1, 3)).sum().backward()
o.step()                                       # now through torch's own disable
print(json.dumps({"active": deferred_dynamo.active(), "real": type(real).__name__,
                  "y": y.tolist(), "same": torch._dynamo is real,
                  "again": deferred_dynamo.install()}))
"""


def test_any_real_use_loads_the_real_module():
    r = _py(_REAL_USE)
    assert r == {"active": False, "real": "module", "y": [3.0, 3.0], "same": True,
                 "again": False}


def test_nothing_is_replaced_once_torch_dynamo_is_loaded():
    r = _py("import json, torch._dynamo, sys\nfrom pol import deferred_dynamo\n"
            "print(json.dumps({'installed': deferred_dynamo.install(), "
            "'active': deferred_dynamo.active()}))")
    assert r == {"installed": False, "active": False}


def test_pol_verify_does_not_load_the_compiler_stack(tmp_path):
    from pol.prover.trainer import train_task
    out = tmp_path / "p"
    train_task("digits-mlp", out, epochs=1, k=10, seed=1)
    code = ("import json, runpy, sys\nsys.argv = ['pol', 'verify', sys.argv[1], '--all']\n"
            "try:\n    runpy.run_module('pol', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print(json.dumps({'exit': code, 'dynamo': type(sys.modules.get('torch._dynamo'))"
            ".__name__, 'inductor': 'torch._inductor.config' in sys.modules,"
            " 'scipy.stats': 'scipy.stats' in sys.modules}))")
    # (and the KS p-values came from the helper process pol verify starts with it)
    assert _py(code, str(out)) == {"exit": 0, "dynamo": "_Standin", "inductor": False,
                                   "scipy.stats": False}


def test_pol_train_with_the_stand_in_writes_the_library_s_checkpoints(tmp_path):
    """`pol train` (the stand-in in place) and `train_task` in this process (torch's own
    module) write bit-identical checkpoints."""
    import hashlib
    import os

    import torch

    from pol.prover.trainer import train_task
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))  # (the same sums)
    r = subprocess.run([sys.executable, "-m", "pol", "train", "--task", "digits-cnn", "--epochs",
                        "1", "--k", "15", "--seed", "4", "--out", str(tmp_path / "cli")],
                       capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    train_task("digits-cnn", tmp_path / "lib", epochs=1, k=15, seed=4)

    def digests(p):
        return {f.relative_to(p).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted((p / "checkpoints").rglob("*")) if f.is_file()}
    cli, lib = digests(tmp_path / "cli"), digests(tmp_path / "lib")
    assert cli and cli == lib
