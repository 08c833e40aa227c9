"""`pol calibrate` measures replay noise and recommends a δ that accepts the proof."""

import json

from click.testing import CliRunner

from pol.cli import main
from pol.prover.trainer import train_task
from pol.verifier import verify
from pol.verifier.calibrate import calibrate


def test_calibrate_recommends_a_delta_that_accepts_the_proof(tmp_path):
    p = tmp_path / "p"
    # replay not bitwise: fp16 trained on from its unrounded state
    train_task("digits-mlp", p, epochs=1, k=15, precision="fp16", continue_from_stored=False)
    cal = calibrate(p)
    assert cal.segments == 3 and cal.exact_segments == 0
    assert all(v > 0 for v in cal.recommended.values())
    assert all(cal.separable.values())
    r = verify(p, all_segments=True, delta=cal.recommended, policy="paper")
    assert r.valid, r.render()


def test_calibrate_on_an_exact_proof_recommends_zero(tmp_path):
    p = tmp_path / "p"
    train_task("iris-logreg", p, epochs=2, k=5)
    out = tmp_path / "cal.json"
    res = CliRunner().invoke(main, ["calibrate", str(p), "--json", str(out)])
    assert res.exit_code == 0, res.output
    cal = json.loads(out.read_text())
    assert cal["exact_segments"] == cal["segments"] > 0
    assert set(cal["recommended"].values()) == {0.0}


def test_calibrate_on_missing_proof_exits_2(tmp_path):
    res = CliRunner().invoke(main, ["calibrate", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "Traceback" not in res.output
