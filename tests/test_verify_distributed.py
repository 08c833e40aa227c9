"""`pol verify` under torchrun: the ranks split the replays (torch.distributed, gloo), agree on the
random segments, and rank 0 alone prints one report; a forged checkpoint is still caught."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pol.demo import perturb_checkpoint
from pol.errors import ConfigError
from pol.prover.trainer import train_task
from pol.verifier import verify

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master-addr", "127.0.0.1", "--master-port",
           str(_free_port()), "-m", "pol.cli", "verify", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def proof(tmp_path_factory):
    p = tmp_path_factory.mktemp("dist") / "mlp"
    train_task("digits-mlp", p, epochs=2, k=5, seed=4)
    return p


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
def test_two_ranks_accept_an_honest_proof(proof):
    r = _torchrun(str(proof))  # hardened default: top-Q + random segments, shared randomness
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("verdict: VALID") == 1  # rank 0 reports, rank 1 stays quiet
    assert "bitwise equal" in r.stdout


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
def test_two_ranks_reject_a_forged_checkpoint(proof, tmp_path):
    forged = tmp_path / "forged"
    shutil.copytree(proof, forged)
    perturb_checkpoint(forged, 30, norm=0.5)  # a segment owned by either rank, digests redone
    r = _torchrun(str(forged), "--all", "--json", str(tmp_path / "r.json"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.count("verdict: INVALID") == 1
    assert (tmp_path / "r.json").exists()


def test_distributed_without_a_process_group_is_a_config_error(proof):
    with pytest.raises(ConfigError, match="torchrun"):
        verify(proof, distributed=True)
