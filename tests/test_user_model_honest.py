"""A user's own model class (`ModelSpec("mynet:WineNet", {})`) is verified like a built-in one.

Regressions: the hardened init-regeneration check built the model without the trusted modules and
turned the refusal into a failed check (an honest proof INVALID); the console script could not
import `mynet.py` from the current directory; a factory in the training script itself was imported
again (it trained twice, and `pol verify --trust-module` ran the script, whose
`Recorder(..., overwrite=True)` destroyed the proof being verified).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import record_until
from pol import ModelSpec, Recorder
from pol.errors import ConfigError, ProofFormatError, UntrustedFactoryError
from pol.verifier import verify

MODULE = '''
from torch import nn


class WineNet(nn.Module):
    def __init__(self, d=13, h=16, c=3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Dropout(0.1), nn.Linear(h, c))

    def forward(self, x):
        return self.net(x)
'''
_counter = itertools.count()


def _data():
    x = np.random.default_rng(0).normal(size=(64, 13)).astype(np.float32)
    return x, ((x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1)).astype(np.int64)


def _forget(name: str) -> None:
    for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[k]


def _digest_tree(path: Path) -> dict[str, tuple[str, float]]:
    return {str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                       p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def user_proof(tmp_path_factory):
    """A proof of a user model class (module `usernet_<n>.py` in its own directory, Adam)."""
    from pol.step import build_model
    d = tmp_path_factory.mktemp("user")
    name = f"usernet_{os.getpid()}_{next(_counter)}"
    (d / f"{name}.py").write_text(MODULE)
    x, y = _data()
    np.savez(d / "data.npz", x=x, y=y)
    cwd = os.getcwd()
    os.chdir(d)  # the module is found in the current directory (it is not on sys.path)
    try:
        spec = ModelSpec(f"{name}:WineNet", {})
        net = build_model(spec, [name])
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        rec = Recorder(d / "proof", model=net, optimizer=opt, data=(x, y), model_spec=spec,
                       batch_size=16, epochs=2, k=2, seed=5, init="from-seed")
        record_until(rec, net, opt, x, y)
    finally:
        os.chdir(cwd)
        _forget(name)
    return d, name


def test_user_model_verifies_valid_with_trusted_modules(user_proof, monkeypatch):
    d, name = user_proof
    monkeypatch.chdir(d)
    try:
        r = verify(d / "proof", data=str(d / "data.npz"), trusted_modules=(name,),
                   all_segments=True)
    finally:
        _forget(name)
    assert r.valid, r.render()
    assert next(c for c in r.checks if c.name == "init regeneration").status == "pass"
    assert all(s.exact for s in r.segments)


def test_init_regeneration_raises_instead_of_failing(user_proof, monkeypatch):
    """An exception inside the check is the verifier's error, never a silent FAIL."""
    from pol.proof.reader import open_proof
    from pol.verifier.hardened import regenerated_init_matches
    d, name = user_proof
    monkeypatch.chdir(d)
    proof = open_proof(d / "proof")
    w0 = proof.load_checkpoint(0)
    names = [k for k in w0 if k.startswith("model.")]
    try:
        with pytest.raises(UntrustedFactoryError):
            regenerated_init_matches(proof.manifest.spec, w0, names)
        assert regenerated_init_matches(proof.manifest.spec, w0, names, (name,))
    finally:
        _forget(name)


def test_untrusted_user_model_is_unusable_not_invalid(user_proof):
    d, name = user_proof
    with pytest.raises(UntrustedFactoryError, match=f"--trust-module {name}"):
        verify(d / "proof", data=str(d / "data.npz"))


def test_trusted_module_not_found_says_where_pol_looked(user_proof, tmp_path, monkeypatch):
    d, name = user_proof
    monkeypatch.chdir(tmp_path)  # not where the module is
    with pytest.raises(ProofFormatError, match="current directory"):
        verify(d / "proof", data=str(d / "data.npz"), trusted_modules=(name,))


def test_cli_trust_module_from_the_current_directory_without_pythonpath(user_proof):
    """The console script does not put the current directory on sys.path; pol finds the module
    named by --trust-module there anyway (and the proof is left as it was)."""
    d, name = user_proof
    pol = shutil.which("pol", path=str(Path(sys.executable).parent)) or shutil.which("pol")
    assert pol, "the pol console script is not installed"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    before = _digest_tree(d / "proof")
    res = subprocess.run([pol, "verify", "proof", "--data", "data.npz", "--trust-module", name],
                         cwd=d, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "verdict: VALID" in res.stdout
    assert _digest_tree(d / "proof") == before


# ------------------------------------------------------------------- factories with side effects

def test_main_factory_is_refused_with_the_fix(tmp_path):
    from pol.models import mlp
    x, y = _data()
    net = mlp(in_features=13, num_classes=3, hidden=[8])
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="running script.*module of its own"):
        Recorder(tmp_path / "p", model=net, optimizer=opt, data=(x, y),
                 model_spec=ModelSpec("__main__:Net", {}), batch_size=16, epochs=1, k=2)
    assert not (tmp_path / "p").exists()


def test_factory_in_the_running_script_file_is_refused(tmp_path, monkeypatch):
    """`python trainscript.py` naming `trainscript:Net`: refused before the script is imported
    again (it would train twice), nothing written, the fix named."""
    script = tmp_path / "trainscript.py"
    script.write_text(MODULE.replace("WineNet", "Net") + '''
import numpy as np, torch
from pol import ModelSpec, Recorder
raise SystemExit("the script ran again")
''')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script)])
    from pol.models import mlp
    x, y = _data()
    net = mlp(in_features=13, num_classes=3, hidden=[16])
    with pytest.raises(ConfigError, match="the running script.*module of its own"):
        Recorder(tmp_path / "proof", model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                 data=(x, y), model_spec=ModelSpec("trainscript:Net", {}), batch_size=16,
                 epochs=1, k=2)
    assert "trainscript" not in sys.modules
    assert not (tmp_path / "proof").exists()


@pytest.mark.parametrize("payload,why", [
    # visible in the source: refused before the module is imported
    ('from pol import Recorder\nRecorder(PROOF, model=None, optimizer=None, data=None, '
     'overwrite=True)\n', "at its top level"),
    # hidden from a source check: the Recorder itself refuses to start during the import
    ('import pol\ngetattr(pol, "Rec" + "order")(PROOF, model=None, optimizer=None, data=None, '
     'overwrite=True)\n', "while pol imported"),
])
def test_verifier_never_trains_into_the_proof_it_reads(user_proof, tmp_path, monkeypatch,
                                                       payload, why):
    """A trusted module that trains when imported (here: a Recorder overwriting the proof) is
    refused with a clear error, and the proof is untouched."""
    d, name = user_proof
    work = tmp_path / "w"
    shutil.copytree(d, work)
    proof = work / "proof"
    # guarded training code may stay in the module
    (work / f"{name}.py").write_text(MODULE + payload.replace("PROOF", repr(str(proof))) + '''
if __name__ == "__main__":
    from pol import Recorder
    Recorder("elsewhere", model=None, optimizer=None, data=None)
''')
    monkeypatch.chdir(work)
    before = _digest_tree(proof)
    try:
        with pytest.raises(ConfigError, match=why):
            verify(proof, data=str(work / "data.npz"), trusted_modules=(name,))
    finally:
        _forget(name)
    assert _digest_tree(proof) == before


def test_guarded_training_code_in_the_model_module_is_accepted():
    from pol.registry import _top_level_training_calls
    src = MODULE + '''
def main():
    Recorder("p")

if __name__ == "__main__":
    fit("p")
'''
    assert _top_level_training_calls(src) == []
    line = len(src.splitlines()) + 1
    assert _top_level_training_calls(src + "train_task('digits-mlp', 'p')\n") == \
        [(line, "train_task")]


def test_package_in_the_current_directory_and_its_import_guard(tmp_path, monkeypatch):
    """`--trust-module pkg` with `pkg/nets.py` in the current directory: the package's submodules
    import normally; a package whose __init__ trains when imported is refused."""
    from pol.step import build_model
    name = f"userpkg_{os.getpid()}_{next(_counter)}"
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    try:
        assert isinstance(build_model(ModelSpec(f"{name}.nets:WineNet", {}), [name]),
                          torch.nn.Module)
    finally:
        _forget(name)
    (pkg / "__init__.py").write_text('import pol\ngetattr(pol, "Rec" + "order")("x", model=None, '
                                     'optimizer=None, data=None)\n')
    try:
        with pytest.raises(ConfigError, match="while pol imported"):
            build_model(ModelSpec(f"{name}.nets:WineNet", {}), [name])
    finally:
        _forget(name)
    assert not (tmp_path / "x").exists()
