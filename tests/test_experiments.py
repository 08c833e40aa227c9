"""`pol experiment` at the tiny size (pol.experiments): every experiment runs, writes a CSV with
its columns, a valid PNG and a markdown fragment, and the measured quantities have the shape the
paper's claims need (a replay without noise is bitwise, k = 1 ≪ k = E·S, the concatenation's
discontinuity ≫ honest updates, Algorithm 2's cost is Q·k/S). One workspace for the module: the
experiments share their training runs, as `pol experiment all` does."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pol.errors import ConfigError
from pol.experiments import EXPERIMENTS, Config, Workspace, parse_names, run_one
from pol.experiments.common import Shadow, setup, train_run
from pol.experiments.document import record_invocation, write_reproduction

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

COLUMNS = {
    "table1": ["condition", "metric", "ours_mean", "ours_std", "paper_mean", "paper_std", "runs",
               "noise"],
    "table5": ["metric", "ours_mean", "ours_std", "paper_cifar10_mean", "paper_cifar10_std",
               "paper_cifar100_mean", "paper_cifar100_std", "params"],
    "fig1": ["k", "metric", "eps_mean", "eps_std", "eps_fp16_mean", "eps_fp16_std", "S", "T"],
    "fig2": ["k", "overhead", "checkpoints", "mb_fp32", "mb_fp16", "mb_codec", "eps_l2_fp32",
             "eps_l2_fp16", "eps_cos_fp32"],
    "fig3": ["lr", "metric", "k", "eps_mean", "eps_std", "default_lr"],
    "table2": ["task", "label", "runs", "step_mean", "step_std", "accuracy_mean", "accuracy_std",
               "never_dropped", "window", "paper_column", "paper_step_mean", "paper_step_std",
               "paper_accuracy_mean", "paper_accuracy_std", "chance"],
    "fig4": ["task", "run", "step", "min_p", "mean_p", "layers_below_alpha", "layers",
             "bonferroni", "accuracy"],
    "table3": ["metric", "inverse", "honest_k1", "paper_mean", "paper_std", "paper_honest_k1",
               "d_ref", "steps", "calls"],
    "fig5": ["run", "s", "discontinuity", "max_update", "ratio"],
    "fig7": ["k", "q", "S", "analytic", "measured", "verify_seconds", "train_seconds",
             "time_ratio", "verdict"],
    "appendix-d": ["part", "model", "solver", "lr", "step", "iteration", "residual_linf", "calls",
                   "repr_l2", "repr_linf"],
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    w = Workspace(Config(size="tiny", out=tmp_path_factory.mktemp("experiments")))
    yield w
    w.close()


@pytest.fixture(scope="module")
def outputs(ws) -> dict:
    return {name: run_one(name, ws) for name in EXPERIMENTS}


def test_every_experiment_is_tested():
    assert set(COLUMNS) == set(EXPERIMENTS)


@pytest.mark.parametrize("name", list(COLUMNS))
def test_csv_png_and_fragment(outputs, name):
    out = outputs[name]
    with open(out.csv, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS[name]
    assert rows and len(rows) == len(out.rows)
    png = out.png.read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 8000
    from PIL import Image
    with Image.open(out.png) as img:
        assert img.size[0] > 300 and img.size[1] > 200
        lo, hi = img.convert("L").getextrema()
        assert hi - lo > 100  # something is drawn
    md = out.md.read_text()
    assert md.startswith("### ") and f"]({out.png.name})" in md


def _value(out, **match) -> float:
    row = next(r for r in out.rows if all(r[k] == v for k, v in match.items()))
    return row


def test_table1_shape(outputs):
    t1 = outputs["table1"]
    for m in ("l1", "l2", "linf"):
        one = _value(t1, condition="k=1", metric=m)["ours_mean"]
        full = _value(t1, condition="k=E·S", metric=m)["ours_mean"]
        assert 0 < one < full, (m, one, full)
        # on a CPU a replay without emulated noise is bitwise, and so is pol's verifier
        assert _value(t1, condition="deterministic k=E·S", metric=m)["ours_mean"] == 0
        exact = _value(t1, condition="pol exact mode (verify)", metric=m)
        assert exact["ours_mean"] == 0
        assert exact["noise"] == "2 of 2 segment(s) bitwise"  # top-1 of each of E = 2 epochs
        assert _value(t1, condition="k=E·S", metric=m)["paper_mean"] > 0.3


def test_d_ref_and_fig1_are_consistent(outputs):
    d = {r["metric"]: r["ours_mean"] for r in outputs["table5"].rows}
    assert d["l1"] > d["l2"] > d["linf"] > 0 and 0 < d["cos"] < 2
    f1 = outputs["fig1"].rows
    T = f1[0]["T"]
    assert {r["k"] for r in f1} >= {1, T}
    fp16 = _value(outputs["fig1"], k=1, metric="l2")["eps_fp16_mean"]
    assert fp16 > _value(outputs["fig1"], k=1, metric="l2")["eps_mean"]  # fp16 rounding shows


def test_fig2_sizes(outputs):
    for r in outputs["fig2"].rows:
        assert r["mb_codec"] < r["mb_fp32"] and r["mb_fp16"] == pytest.approx(r["mb_fp32"] / 2)
        assert r["checkpoints"] == -(-outputs["fig1"].rows[0]["T"] // r["k"]) + 1


def test_ks_collapses_and_inverse_gradient_is_costly(outputs):
    t2 = outputs["table2"].rows[0]
    assert t2["step_mean"] >= 1 and t2["never_dropped"] == 0
    f4 = outputs["fig4"].rows
    assert f4[0]["min_p"] > f4[-1]["min_p"]
    t3 = outputs["table3"].rows[0]
    assert t3["calls"] > 2 * t3["steps"]  # inverting costs more than training's 1 per step


def test_fig5_discontinuity_dominates(outputs):
    out = outputs["fig5"]
    assert min(r["ratio"] for r in out.rows) > 3
    assert all(0.3 < r["discontinuity"] < 3 for r in out.rows)
    conc = out.summary["concatenate"]
    assert conc is not None and conc["paper"] == "invalid" and conc["hardened"] == "invalid"


def test_fig7_measured_cost_is_the_analytic_one(outputs):
    for r in outputs["fig7"].rows:
        assert r["S"] % r["k"] == 0 and r["measured"] == pytest.approx(r["analytic"])
        assert r["verdict"] == "valid"


def test_appendix_d_newton_krylov_converges(outputs):
    conv = [r for r in outputs["appendix-d"].rows if r["part"] == "convergence"]
    final = {}
    for r in conv:
        final[r["solver"]] = r["residual_linf"]
    assert final["newton_krylov"] < 1e-10
    calls = [r for r in outputs["appendix-d"].rows if r["part"] == "lr"]
    assert all(r["calls"] > r["step"] for r in calls)


def test_a_noise_free_shadow_replays_bitwise(ws):
    """The Shadow (the experiments' verifier replay) copies the optimizer state instead of
    sharing it: without noise it lands bitwise at every k; with noise it does not."""
    st = setup(ws, "digits-mlp", seed=3, epochs=1)
    clean, noisy = Shadow(st.spec, ws.device, 4), Shadow(st.spec, ws.device, 4, noise=2.0 ** -24)
    before = torch.random.get_rng_state()
    train_run(ws, st, [clean, noisy], max_steps=12)
    assert torch.equal(before, torch.random.get_rng_state())  # the caller's RNG untouched
    assert [t for t, _ in clean.errors] == [0, 4, 8]
    assert all(e["l2"] == 0 for _, e in clean.errors)
    assert all(e["l2"] > 0 for _, e in noisy.errors)


def test_reproduction_document(ws, outputs, tmp_path):
    record_invocation(ws, list(outputs), "pol x")
    doc = write_reproduction(ws.out, tmp_path / "docs" / "R.md", list(EXPERIMENTS))
    text = doc.read_text()
    assert "CPU-small stand-ins" in text and "`pol x`" in text
    for out in outputs.values():
        rel = Path(os.path.relpath(out.png, doc.parent)).as_posix()
        assert f"]({rel})" in text
    assert text.index("### Table I") < text.index("### Appendix D")


def test_reproduction_document_notes_and_caveats(tmp_path):
    """A paper-size run without --data and with fewer epochs than the paper's says so (and not
    "CPU-small"); hand-written notes go after the header and after their experiment's fragment."""
    out = tmp_path / "out"
    out.mkdir()
    entry = {"experiments": ["table1", "fig1"], "command": "pol x", "machine": "cuda (GPU)",
             "size": "paper", "note": "n", "epochs": 1, "runs": 1, "noise": "hardware",
             "device": "cuda", "data": None, "wall_minutes": 1.0, "cpu_minutes": 1.0,
             "date": "2026-01-01"}
    (out / "runs.json").write_text(json.dumps([entry]))
    (out / "table1.md").write_text("### Table I\n\n![Table I](table1.png)\n")
    (out / "fig1.md").write_text("### Fig. 1\n")
    (out / "notes.md").write_text("GENERAL NOTE\n\n")
    (out / "table1.notes.md").write_text("TABLE1 NOTE")
    text = write_reproduction(out, tmp_path / "R.md", list(EXPERIMENTS)).read_text()
    assert "CPU-small" not in text and "synthetic set, not CIFAR-10/100" in text
    assert "**E = 1 epoch, where the paper trains 200.**" in text
    order = ["`pol x`", "E = 1 epoch", "GENERAL NOTE", "### Table I", "](out/table1.png)",
             "TABLE1 NOTE\n", "### Fig. 1"]
    assert [text.index(o) for o in order] == sorted(text.index(o) for o in order)
    (out / "runs.json").write_text(json.dumps([{**entry, "epochs": 200, "data": "/cifar"}]))
    text = write_reproduction(out, tmp_path / "R.md", ["fig1"]).read_text()
    assert "paper trains" not in text and "synthetic" not in text and "NOTE" in text
    (out / "notes.md").unlink()
    assert "NOTE" not in write_reproduction(out, tmp_path / "R.md", ["fig1"]).read_text()
    with pytest.raises(ConfigError, match="no experiment fragments"):
        write_reproduction(out, tmp_path / "R.md", ["table5"])


def test_names():
    assert parse_names("table1, fig6,table1") == ["table1", "fig2"]
    assert parse_names("all")[-1] == "doc" and len(parse_names("all")) == len(EXPERIMENTS) + 1
    with pytest.raises(ConfigError, match="nope"):
        parse_names("table1,nope")


def test_cli(tmp_path):
    from pol.cli import main
    r = CliRunner().invoke(main, ["experiment", "fig7", "--size", "tiny", "--out",
                                  str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "fig7.csv").exists() and "fig7:" in r.output
    r = CliRunner().invoke(main, ["experiment", "nope", "--size", "tiny"])
    assert r.exit_code == 2 and "unknown experiment" in r.output
    r = CliRunner().invoke(main, ["experiment", "doc", "--out", str(tmp_path), "--doc",
                                  str(tmp_path / "R.md")])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "R.md").read_text()
    assert "### Fig. 7" in text and "](fig7.png)" in text and "experiment fig7" in text


def test_paper_size_setups(tmp_path):
    """The paper size's setups by review's eye: the 100-class ResNet-50 variant on a CIFAR-shaped
    synthetic set (labelled so), and --data switching to the real CIFAR tasks."""
    ws = Workspace(Config(size="paper", out=tmp_path))
    try:
        st = setup(ws, "synthetic-resnet50", dataset_params={"n_train": 64, "n_test": 8})
        assert st.spec.model.arch == "resnet50" and st.spec.model.kwargs["num_classes"] == 100
        assert st.spec.data.params["num_classes"] == 100 and st.paper_column == "cifar100"
        assert st.synthetic and "synthetic set, not CIFAR" in st.label
        assert st.spec.batch_size == 128 and st.spec.epochs == 200
        real = Workspace(Config(size="paper", out=tmp_path, data_dir=str(tmp_path / "none")))
        with pytest.raises(ConfigError, match="cifar"):
            setup(real, "synthetic-resnet20")
        real.close()
    finally:
        ws.close()
