"""pol.cluster: training spread over untrusted workers, every update verified.

The multi-process tests run real jobs: every rank a process (gloo over 127.0.0.1, the round
protocol over the c10d store), a tiny MLP, 8 local steps. One job holds a Byzantine worker of each
main kind and a crashing one, and must reject exactly the Byzantine updates, count the honest ones
and finish; another kills its coordinator between audits and commit, restarts it, and must end
with the model of a run that was never interrupted, every round accepted once.
"""

from __future__ import annotations

import itertools
import math
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pol.cluster import (Behaviour, ClusterConfig, JobFailed, accepted_rounds,
                         detection_probability, p_random_hit, parse_byzantine, run_inprocess,
                         run_local, segment_plan)
from pol.cluster import assign
from pol.cluster.config import BYZANTINE
from pol.errors import ConfigError

TINY = dict(model_kwargs={"hidden": [16]}, local_steps=8, batch_size=8, segment=1,
            budget=5 / 8, q=1, heartbeat_timeout=3.0, round_timeout=60.0, join_timeout=120.0)


def _config(tmp_path, name: str, **kw) -> ClusterConfig:
    return ClusterConfig(out=str(tmp_path / name), **{**TINY, **kw})


def _verdicts(result) -> dict[tuple[int, int], str]:
    return {(v["round"], v["worker"]): v["verdict"] for v in result.verdicts}


def _expected(config: ClusterConfig, r: int, w: int) -> str:
    b = config.behaviour(w)
    acts = b.acts(r, r)  # every worker here takes part from round 0
    if b.kind in ("crash", "hang") and acts:
        return "absent"
    return "rejected" if acts else "accepted"


def _ledger_ok(out) -> None:
    from pol.crypto import Ledger
    with Ledger(f"{out}/ledger.db", create=False) as led:
        assert led.verify().ok


# ---------------------------------------------------------------------- budget and analytics

def test_segment_plan_and_the_hypergeometric_detection():
    p = segment_plan(100, 1, 0.1, 1)
    assert (p.segments, p.q, p.random, p.all_segments) == (100, 1, 9, False)
    assert segment_plan(8, 1, 1.0, 1).all_segments
    for n, q, bad, r in [(8, 1, 4, 4), (10, 1, 2, 3), (12, 2, 3, 4), (20, 1, 1, 1)]:
        hits = [bool(set(c) & set(range(bad))) for c in itertools.combinations(range(n - q), r)]
        assert p_random_hit(n, q, bad, r) == pytest.approx(sum(hits) / len(hits))
    cfg = ClusterConfig(**{**TINY, "budget": 0.1, "local_steps": 100})
    lazy, _ = detection_probability(Behaviour("lazy"), cfg)  # 50 wrong of 100, 9 random
    assert lazy == pytest.approx(1 - math.comb(49, 9) / math.comb(99, 9)) and lazy > 0.99
    assert detection_probability(Behaviour("noise"), cfg)[0] == 1.0
    # the test jobs below: the lazy worker is caught with certainty (4 wrong of 8, 1 + 4 replayed)
    assert detection_probability(Behaviour("lazy"), ClusterConfig(**TINY))[0] == 1.0


def test_the_coordinators_policy_is_hardened_with_an_exact_mode_data_dependence_bound():
    from pol.cluster.audit import coordinator_policy
    from pol.verifier import HARDENED
    exact = coordinator_policy(ClusterConfig())
    assert exact.defences == HARDENED.defences and 0 < exact.bounds.flip_min < 1e-100
    assert coordinator_policy(ClusterConfig(require_exact=False)) is HARDENED

def test_byzantine_spec_parses_and_refuses_nonsense():
    b = parse_byzantine("1:noise, 2:lazy=0.25,5:crash=1")
    assert b == {1: Behaviour("noise"), 2: Behaviour("lazy", 0.25), 5: Behaviour("crash", 1.0)}
    for bad in ("1:teleport", "x:noise", "1:noise,1:lazy", "1:signflip=2"):
        with pytest.raises(ConfigError):
            parse_byzantine(bad)
    with pytest.raises(ConfigError):
        ClusterConfig(workers=2, byzantine=parse_byzantine("3:noise"))


def test_messages_from_workers_are_read_strictly():
    msg = assign.pack_message({"round": 1}, {"a": b"xyz", "b": b""})
    m = assign.unpack_message(msg, 1 << 20)
    assert m.header == {"round": 1} and m.blobs == {"a": b"xyz", "b": b""}
    for bad in (msg[:-1], msg + b"!", b"garbage", msg[:10]):
        with pytest.raises(ValueError):
            assign.unpack_message(bad, 1 << 20)
    with pytest.raises(ValueError):
        assign.unpack_message(msg, 10)


def test_the_assignment_check_names_what_differs(tmp_path):
    cfg = _config(tmp_path, "x")
    base = assign.base_spec(cfg)
    train, _ = assign.task_data(cfg.task)
    d1 = assign.shard(train, assign.shard_indices(cfg, 0, 1, len(train)))
    d2 = assign.shard(train, assign.shard_indices(cfg, 0, 2, len(train)))
    s1 = assign.assigned_spec(cfg, base, d1, 0, 1)
    assert assign.spec_mismatch(s1, assign.with_own_hardware(s1)) == ""
    assert "another assignment" in assign.spec_mismatch(s1, assign.assigned_spec(cfg, base, d2,
                                                                                 0, 2))
    other = s1.with_(data=assign.assigned_spec(cfg, base, d2, 0, 2).data)
    assert "other data" in assign.spec_mismatch(s1, other)
    assert "k differ" in assign.spec_mismatch(s1, s1.with_(k=2))


# ---------------------------------------------------------------------- in one process

def test_every_behaviour_in_one_process(tmp_path):
    """Each Byzantine kind rejected in every round it acts in, the honest, late and not yet
    stale workers accepted, crash and hang absent from their round on; the ledger verifies."""
    byz = parse_byzantine("2:noise,3:signflip,4:scale,5:lazy,6:stale,7:freerider,8:copycat,"
                          "9:otherdata,10:forge,11:sparse=0.5,12:crash=1,13:hang=1,14:late=0")
    cfg = _config(tmp_path, "all", workers=14, rounds=2, byzantine=byz, budget=1.0)
    res = run_inprocess(cfg)
    got = _verdicts(res)
    for (r, w), verdict in got.items():
        assert verdict == _expected(cfg, r, w), (r, w, str(cfg.behaviour(w)), verdict)
    assert (0, 14) not in got and got[(1, 14)] == "accepted"  # late: from round 1 on
    assert {b.kind for b in byz.values()} >= set(BYZANTINE)
    assert [r["round"] for r in accepted_rounds(cfg.out)] == [0, 1]
    assert res.rounds[1].counted == [1, 14]
    _ledger_ok(cfg.out)


def test_baselines_take_everything_and_the_noise_hurts_them(tmp_path):
    kw = dict(workers=3, rounds=2, local_steps=24, byzantine=parse_byzantine("3:noise=3"))
    pol_run = run_inprocess(_config(tmp_path, "pol", **kw))
    mean = run_inprocess(_config(tmp_path, "mean", aggregate="mean", **kw))
    median = run_inprocess(_config(tmp_path, "median", aggregate="median", **kw))
    assert pol_run.rounds[-1].counted == [1, 2]
    assert mean.rounds[-1].counted == [1, 2, 3] and median.rounds[-1].counted == [1, 2, 3]
    assert mean.final_accuracy < pol_run.final_accuracy - 0.2


def test_a_run_directory_is_not_reused_unasked(tmp_path):
    cfg = _config(tmp_path, "once", workers=1, rounds=1)
    run_inprocess(cfg)
    with pytest.raises(ConfigError, match="--resume"):
        run_inprocess(cfg)
    with pytest.raises(ConfigError, match="other settings"):
        run_inprocess(cfg.with_(resume=True, seed=1))
    again = run_inprocess(cfg.with_(resume=True, rounds=2))  # one more round
    assert again.first_round == 1 and [r["round"] for r in accepted_rounds(cfg.out)] == [0, 1]


# ---------------------------------------------------------------------- real processes

def test_multiprocess_job_rejects_exactly_the_byzantine_updates(tmp_path):
    """A real job: 9 processes, gloo on 127.0.0.1, the store protocol; worker 6 dies in round 1
    and the round completes without it."""
    byz = parse_byzantine("2:noise,3:freerider,4:lazy,5:forge,6:crash=1,7:stale,8:otherdata")
    cfg = _config(tmp_path, "mp", workers=8, rounds=2, byzantine=byz)
    res = run_local(cfg)
    got = _verdicts(res)
    assert got == {(r, w): _expected(cfg, r, w) for r in range(2) for w in range(1, 9)}
    assert [s.counted for s in res.rounds] == [[1, 6, 7], [1]]
    assert "no heartbeat" in res.rounds[1].absent[6]
    _ledger_ok(cfg.out)


def test_killed_coordinator_restarts_from_the_last_accepted_round(tmp_path):
    """Killed after auditing round 1 (before its commit): the restarted job runs round 1 again,
    nothing accepted twice, and ends with the very model of an uninterrupted run."""
    kw = dict(workers=2, rounds=3, byzantine=parse_byzantine("2:noise"))
    cfg = _config(tmp_path, "killed", die_at="1:verified", resume=True, **kw)
    with pytest.raises(JobFailed):
        run_local(cfg)
    assert [r["round"] for r in accepted_rounds(cfg.out)] == [0]
    res = run_local(cfg.with_(die_at=""))
    assert res.first_round == 1
    rounds = accepted_rounds(cfg.out)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    digests = [d for r in rounds for _, d, _ in r["counted"]]
    assert len(digests) == len(set(digests)) == 3  # worker 1, once per round
    whole = run_inprocess(_config(tmp_path, "whole", **kw))
    assert rounds[-1]["model_sha256"] == whole.rounds[-1].model_sha256
    _ledger_ok(cfg.out)


def test_killed_after_commit_loses_nothing(tmp_path):
    cfg = _config(tmp_path, "k2", workers=1, rounds=2, die_at="0:committed", resume=True)
    with pytest.raises(SystemExit):  # in one process, the kill is an exit
        run_inprocess(cfg)
    res = run_inprocess(cfg.with_(die_at=""))
    assert res.first_round == 1 and [r["round"] for r in accepted_rounds(cfg.out)] == [0, 1]


def test_a_tampered_checkpoint_stops_the_restart(tmp_path):
    from pol.cluster.state import StateError
    cfg = _config(tmp_path, "t", workers=1, rounds=1, resume=True)
    run_inprocess(cfg)
    ck = tmp_path / "t" / "checkpoints" / "round_000000.safetensors"
    w = assign.weights_from_bytes(ck.read_bytes())
    next(iter(w.values())).add_(torch.ones(()))
    ck.write_bytes(assign.weights_bytes(w))
    with pytest.raises(StateError, match="does not match"):
        run_inprocess(cfg.with_(rounds=2))


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch):
    """README's `pol distributed` command: a real job (5 processes); the noisy and the
    free-riding workers are rejected in both rounds, the honest ones counted."""
    import re
    import shlex

    from click.testing import CliRunner

    from pol.cli import main
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Distributed training", 1)[1].split("\n## ", 1)[0]
    (cmd,) = re.findall(r"```bash\n(.*?)```", section, re.S)
    args = shlex.split(cmd.replace("\\\n", " "))
    assert args[:2] == ["pol", "distributed"]
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, args[1:])
    assert r.exit_code == 0, r.output
    assert "round 0: accepted [1, 2]" in r.output and "round 1: accepted [1, 2]" in r.output
    assert [p["round"] for p in accepted_rounds(tmp_path / "cluster-run")] == [0, 1]


TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which(
    "torchrun")


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="no torchrun next to this Python")
def test_pol_distributed_under_torchrun(tmp_path):
    """`torchrun -m pol.cli distributed`, 6 processes: torchrun's env rendezvous and agent store,
    rank 0 coordinates and alone prints the rounds; a noisy, a free-riding and a lazy worker
    are rejected in every round, a worker that stops responding in round 1 is left out of it
    (under torchrun a worker process that dies ends the job: its agent stops every rank; the
    spawn launcher's test has the crashing worker), the honest worker is aggregated."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out, jf = tmp_path / "run", tmp_path / "job.json"
    cmd = [TORCHRUN, "--nproc_per_node", "6", "--master-addr", "127.0.0.1", "--master-port",
           str(port), "-m", "pol.cli", "distributed", "--workers", "5", "--rounds", "2",
           "--model-arg", "hidden=[16]", "--local-steps", "8", "--batch-size", "8", "--budget",
           "0.625", "--heartbeat-timeout", "5", "--byzantine",
           "2:noise,3:freerider,4:lazy,5:hang=1", "--out", str(out), "--json", str(jf),
           # the hung worker's heartbeat lives on: round 1 waits the round timeout for it
           # (the default 300 s was most of the suite's time)
           "--round-timeout", "90"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("round 1: accepted [1]") == 1, r.stdout
    assert [sorted(c[0] for c in p["counted"]) for p in accepted_rounds(out)] == [[1, 5], [1]]
    verdicts = {(v["round"], v["worker"]): v["verdict"] for v in json.loads(jf.read_text())[
        "verdicts"]}
    for rnd in (0, 1):
        assert [verdicts[(rnd, w)] for w in (2, 3, 4)] == ["rejected"] * 3, verdicts
    assert verdicts[(1, 5)] == "absent" and verdicts[(0, 5)] == "accepted"
