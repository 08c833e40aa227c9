"""The distributed job in pol's exact mode (`pol distributed --exact`): every worker's proof is an
exact-mode proof (float64 steps with a rounding log, bitwise on any hardware); the coordinator's
audits replay it bitwise; a Byzantine update is still rejected; a model exact mode cannot replay
is refused before any round."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pol.cluster import ClusterConfig, parse_byzantine, run_inprocess
from pol.cluster import assign
from pol.errors import ConfigError

TINY = dict(model_kwargs={"hidden": [16], "dropout": 0.0}, local_steps=8, batch_size=8,
            segment=1, budget=5 / 8, q=1, heartbeat_timeout=3.0, round_timeout=60.0,
            keep_proofs="all")


def test_an_exact_job_records_exact_proofs_and_rejects_the_noisy_worker(tmp_path):
    cfg = ClusterConfig(out=str(tmp_path / "run"), workers=2, rounds=1, exact=True,
                        byzantine=parse_byzantine("2:noise"), **TINY)
    assert assign.base_spec(cfg).step.exact
    res = run_inprocess(cfg)
    got = {v["worker"]: v for v in res.verdicts}
    assert got[1]["verdict"] == "accepted" and got[2]["verdict"] == "rejected", got
    assert "exact" in cfg.identity() and "exact" not in cfg.with_(exact=False).identity()


def test_exact_mode_refuses_dropout_before_any_round(tmp_path):
    cfg = ClusterConfig(out=str(tmp_path / "run"), workers=1, rounds=1, exact=True,
                        **{**TINY, "model_kwargs": {"hidden": [16], "dropout": 0.1}})
    with pytest.raises(ConfigError, match="[Dd]ropout"):
        assign.base_spec(cfg)


def test_the_cli_takes_exact(tmp_path):
    from pol.cli import main
    r = CliRunner().invoke(main, ["distributed", "--workers", "1", "--rounds", "1", "--exact",
                                  "--launcher", "inprocess", "--local-steps", "4",
                                  "--model-arg", "hidden=[8]", "--model-arg", "dropout=0.0",
                                  "--out", str(tmp_path / "cli")])
    assert r.exit_code == 0, r.output
    assert "accepted" in r.output
