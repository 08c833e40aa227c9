"""`pol experiment` as a long GPU job runs it (pol.experiments), tested at the tiny size on a CPU:
distances read once at the end instead of a host read per step, the KS test where the model is,
one data order per epoch, size fields changed with --set, an experiment that fails while the
others go on, runs.json written after every experiment, and the outputs of another directory
merged into the document. Also: every command of benchmarks/gpu_s6_experiments.sh parses."""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pol.errors import ConfigError
from pol.experiments import Config, Workspace, parse_names, run_experiments
from pol.experiments.common import command_line, distance_vector, distances, setup, train_run
from pol.experiments.document import merge_outputs, write_reproduction
from pol.experiments.sizes import parse_setting
from pol.verifier import METRICS, all_distances

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_s6_experiments.sh"


@pytest.fixture
def ws(tmp_path):
    w = Workspace(Config(size="tiny", out=tmp_path / "out"))
    yield w
    w.close()


def test_distance_vector_is_the_verifiers(tmp_path):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1000, generator=g, dtype=torch.float64)
    b = a + 1e-6 * torch.randn(1000, generator=g, dtype=torch.float64)
    z = torch.zeros(1000, dtype=torch.float64)
    for x, y in ((a, b), (a, a), (a, z), (z, z), (b, -a)):
        got = distances(x, y)
        assert got == all_distances(x, y), (got, all_distances(x, y))  # bitwise, every metric
    bad = b.clone()
    bad[3] = math.inf
    assert all(math.isnan(v) for v in distances(a, bad).values())
    assert distance_vector(a, b).shape == (len(METRICS),)


def test_discontinuity_probe_reads_once_what_it_measured(ws):
    """Fig. 5's probe keeps its norms where the model is; read at the end they are the norms."""
    from pol.experiments.common import flat
    from pol.experiments.reproduction import DiscontinuityProbe

    class Trace:
        def start(self, ctx):
            self.w = [flat(ctx.model)]

        def step(self, t, x, y, lrs, ctx, last):
            self.w.append(flat(ctx.model))

    from pol.step import build_context
    st = setup(ws, "digits-mlp", seed=1, epochs=1)
    n = flat(build_context(st.spec, ws.device).model).numel()
    target = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    probe, trace = DiscontinuityProbe(target), Trace()
    probe.every = 3
    train_run(ws, st, [probe, trace], max_steps=10)
    rows = probe.rows
    assert [s for s, _, _ in rows] == [3, 6, 9, 10]
    ups = [float(torch.linalg.vector_norm(b - a)) for a, b in zip(trace.w, trace.w[1:])]
    for s, disc, upd in rows:
        assert disc == float(torch.linalg.vector_norm(target - trace.w[s]))
        assert upd == max(ups[:s])


def test_one_data_order_per_epoch(ws, monkeypatch):
    import pol.step
    calls = []
    real = pol.step.epoch_order
    monkeypatch.setattr(pol.step, "epoch_order",
                        lambda seed, e, n: calls.append(e) or real(seed, e, n))
    st = setup(ws, "digits-mlp", seed=0, epochs=2)
    train_run(ws, st)
    assert calls == [0, 1]


def test_ks_probe_tests_where_the_model_is(ws, monkeypatch):
    """The KS statistics run on the model's device, from its own tensors (no copy to the host
    first): on a GPU a ResNet-50's weights are sorted there."""
    import pol.verifier
    from pol.experiments.ksinit import KSProbe
    seen = []
    real = pol.verifier.check_init

    def spy(model, strategy, w0, alpha=0.01, device="cpu"):
        params = dict(model.named_parameters())
        seen.append((device, all(w0[n].data_ptr() == p.data_ptr() for n, p in params.items())))
        return real(model, strategy, w0, alpha, device=device)
    monkeypatch.setattr(pol.verifier, "check_init", spy)
    st = setup(ws, "digits-mlp", seed=0, epochs=1)
    probe = KSProbe(st)
    train_run(ws, st, [probe], max_steps=2)
    assert seen == [(ws.device, True)] * 3 and len(probe.rows) == 3
    assert probe.rows[0]["min_p"] > probe.rows[-1]["min_p"] >= 0
    assert 0 <= probe.rows[-1]["accuracy"] <= 1


def test_settings_change_the_size_and_are_recorded(tmp_path):
    from pol.cli import main
    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["experiment", "fig7", "--size", "tiny", "--out", str(out),
                                  "--set", "fig7_ks=15", "--set", "fig7_qs=[1]"])
    assert r.exit_code == 0, r.output
    rows = (out / "fig7.csv").read_text().splitlines()[1:]
    assert len(rows) == 1 and rows[0].startswith("15,1,")
    entry = json.loads((out / "runs.json").read_text())[0]
    assert entry["settings"] == {"fig7_ks": [15], "fig7_qs": [1]} and entry["epochs"] == 2
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("fig7.")) == ["runs.json"]
    assert "--set fig7_ks=[15]" in entry["command"].replace("'", "")
    text = write_reproduction(out, tmp_path / "R.md", ["fig7"]).read_text()
    assert "size fields changed for this run (`--set`): fig7_ks = [15], fig7_qs = [1]" in text
    r = CliRunner().invoke(main, ["experiment", "fig7", "--size", "tiny", "--set", "nope=1"])
    assert r.exit_code == 2 and "FIELD one of" in r.output


def test_set_values():
    assert parse_setting("fig7_ks=10,50,100") == ("fig7_ks", (10, 50, 100))
    assert parse_setting("fig3_lrs=1e-3,1") == ("fig3_lrs", (1e-3, 1.0))
    assert parse_setting('inverse_params={"n_train": 1280}') == ("inverse_params",
                                                                 {"n_train": 1280})
    assert parse_setting("inverse_batch=null") == ("inverse_batch", None)
    for bad in ("fig7_ks=a,b", "inverse_batch=1.5", "solver_lenet=1", "name=x", "fig3_k"):
        with pytest.raises(ConfigError):
            parse_setting(bad)
    cfg = Config(size="tiny", settings={"fig7_ks": (5,)}, out=Path("o"))
    assert "--set 'fig7_ks=[5]'" in command_line("fig7", cfg)


def test_a_failed_experiment_leaves_the_others_and_is_recorded(tmp_path, monkeypatch):
    import pol.experiments as ex
    real = ex.run_one
    calls = []

    def boom(ws):
        calls.append(1)
        raise RuntimeError("no GPU today")

    def run_one(name, ws):
        if name == "fig3":
            return ws.cached("reference", lambda: boom(ws))
        if name == "fig5":  # needs the same runs: fails at once, not a second time
            return ws.cached("reference", lambda: boom(ws))
        return real(name, ws)
    monkeypatch.setattr(ex, "run_one", run_one)
    errors = []
    cfg = Config(size="tiny", out=tmp_path)
    outs, _ = run_experiments("fig3,fig7,fig5", cfg, on_error=lambda n, e: errors.append(n))
    assert [o.name for o in outs] == ["fig7"] and errors == ["fig3", "fig5"] and calls == [1]
    entries = json.loads((tmp_path / "runs.json").read_text())
    assert len(entries) == 1  # one entry, rewritten after each experiment
    assert entries[0]["experiments"] == ["fig7"] and entries[0]["failed"] == ["fig3", "fig5"]
    with pytest.raises(RuntimeError, match="no GPU"):
        run_experiments("fig3", cfg)


def _fragment(out: Path, name: str, text: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(f"### {text}\n\n![x]({name}.png)\n")
    (out / f"{name}.csv").write_text("a\n1\n")
    (out / f"{name}.png").write_bytes(b"png " + text.encode())


def _entry(names: list[str], command: str) -> dict:
    return {"experiments": names, "command": command, "machine": "cuda (H200)", "size": "paper",
            "note": "n", "epochs": 1, "runs": 1, "noise": "hardware", "device": "cuda",
            "data": None, "wall_minutes": 1.0, "cpu_minutes": 1.0, "date": "2026-12-03"}


def test_merge_keeps_the_old_adds_the_new_and_names_what_is_superseded(tmp_path):
    docs, new = tmp_path / "docs" / "gpu", tmp_path / "new"
    for n in ("table1", "fig1"):
        _fragment(docs, n, f"old {n}")
    (docs / "table1.notes.md").write_text("NOTE ON OLD TABLE1")
    (docs / "runs.json").write_text(json.dumps([_entry(["table1", "fig1"], "pol old")]))
    _fragment(new, "table1", "new table1")
    _fragment(new, "fig3", "new fig3")
    (new / "runs.json").write_text(json.dumps([_entry(["table1", "fig3"], "pol new")]))
    assert merge_outputs(new, docs, list(parse_names("all")[:-1])) == ["table1"]
    assert merge_outputs(new, docs, ["table1", "fig3"]) == ["table1"]  # twice: nothing doubled
    assert len(json.loads((docs / "runs.json").read_text())) == 2
    text = write_reproduction(docs, tmp_path / "docs" / "R.md", ["table1", "fig1", "fig3"]
                              ).read_text()
    assert "### new table1" in text and "### old fig1" in text and "### new fig3" in text
    assert "old table1" not in text and "](gpu/fig3.png)" in text
    assert "`pol old` (fig1; superseded by a later run: table1)" in text
    assert "`pol new` (table1, fig3)" in text
    with pytest.raises(ConfigError, match="nothing to merge"):
        merge_outputs(tmp_path / "docs", new, ["table1"])  # R.md only, no fragments there


def test_doc_merge_on_the_command_line(tmp_path):
    from pol.cli import main
    docs, new = tmp_path / "docs", tmp_path / "new"
    _fragment(docs, "table1", "old table1")
    (docs / "table1.notes.md").write_text("NOTE")
    _fragment(new, "table1", "new table1")
    (new / "runs.json").write_text(json.dumps([_entry(["table1"], "pol new")]))
    with pytest.warns(UserWarning, match="notes on table1"):
        r = CliRunner().invoke(main, ["experiment", "doc", "--out", str(docs), "--doc",
                                      str(tmp_path / "R.md"), "--merge", str(new)])
    assert r.exit_code == 0, r.output
    assert "### new table1" in (tmp_path / "R.md").read_text()
    r = CliRunner().invoke(main, ["experiment", "fig7", "--size", "tiny", "--out", str(docs),
                                  "--merge", str(new)])
    assert r.exit_code == 2 and "needs doc" in r.output


def _script_commands() -> list[list[str]]:
    text = SCRIPT.read_text().replace("\\\n", " ")
    cmds = []
    for line in text.splitlines():
        m = re.search(r"python -m pol\s+(experiment .*?)(?:&\s*$|$)", line.split("#")[0])
        if m:
            cmds.append([a.replace("$R", "/tmp/x/res") for a in shlex.split(m.group(1))])
    return cmds


def test_the_gpu_script_commands_parse():
    """Every `pol experiment` command of benchmarks/gpu_s6_experiments.sh parses: its names, its
    options, its --set values (a typo would waste a GPU call)."""
    from pol.cli.experiment import experiment
    cmds = _script_commands()
    names = set()
    assert len(cmds) >= 4
    for args in cmds:
        ctx = experiment.make_context("experiment", args[1:])
        p = ctx.params
        names.update(parse_names(p["name"]))
        for s in p["settings"]:
            parse_setting(s)
        if p["name"] != "doc":
            assert p["size"] == "paper" and p["out"].startswith("/tmp/x/res/")
    assert names >= {"fig3", "table2", "fig4", "table3", "fig5", "fig7", "appendix-d", "table1"}


def test_a_recorded_run_with_a_schedule_replays_bitwise(ws):
    """The proof a training run records holds each step's own lr (the Recorder reads it at
    record_batch, before the step): with a multistep schedule every segment replays bitwise.
    Recorded one step late, the steps at the milestones replayed with the old lr (Table I's
    exact-mode row on the GPU, ResNet-20's multistep schedule: INVALID)."""
    from dataclasses import replace

    from pol.proof.reader import open_proof
    from pol.step import lrs_at
    from pol.tasks import make_schedule
    st = setup(ws, "digits-mlp", seed=0, epochs=2, k=4)
    st.spec = replace(st.spec, schedule=make_schedule("multistep", st.T))
    res = train_run(ws, st, record_to=ws.runs_dir / "scheduled")
    lrs = [lrs_at(st.spec.schedule, [st.spec.optimizer.lr], t, st.T)[0] for t in range(st.T)]
    assert len(set(lrs)) == 3
    assert open_proof(res.proof).lrs[:, 0].tolist() == lrs
    rep = ws.verify(res.proof, all_segments=True)
    assert rep.verdict == "valid" and all(s.exact for s in rep.segments), rep.verdict


def test_the_header_names_E_only_where_it_was_used(ws):
    from pol.experiments.document import record_invocation
    record_invocation(ws, ["appendix-d"], "pol a")
    ws.record_index = None
    record_invocation(ws, ["table3"], "pol b")  # the tiny size trains its target E epochs
    entries = json.loads((ws.out / "runs.json").read_text())
    assert [e["epochs"] for e in entries] == [None, 2]
    (ws.out / "fig7.md").write_text("### Fig. 7\n")
    text = write_reproduction(ws.out, ws.out / "R.md", ["fig7"]).read_text()
    head_a = text[text.index("`pol a`"):text.index("`pol b`")]
    assert "E = " not in head_a and "E = 2, " in text[text.index("`pol b`"):]
