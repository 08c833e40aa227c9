"""The KS test of W_0 in torch gives scipy's answer: statistic and p-value within 1e-9 of
`scipy.stats.kstest` for normal and uniform draws, fitting and not, in every float dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from pol.step.init import InitDist
from pol.verifier.initcheck import check_init, ks_pvalue, ks_statistic

DISTS = [InitDist("normal", 0.0, 0.02), InitDist("normal", 0.5, 3.0),
         InitDist("uniform", -0.1, 0.1), InitDist("uniform", 0.25, 2.0)]


def _draws(d: InitDist, n: int, seed: int, shift: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.empty(n)
    if d.kind == "normal":
        t.normal_(d.a, d.b, generator=g)
    else:
        t.uniform_(d.a, d.b, generator=g)
    return t + shift * (d.b if d.kind == "normal" else d.b - d.a)


@pytest.mark.parametrize("d", DISTS)
@pytest.mark.parametrize("n,shift", [(8, 0.0), (100, 0.0), (1000, 0.05), (20_000, 0.0),
                                     (20_000, 0.02), (300_000, 0.0), (5000, 0.5)])
def test_ks_equals_scipy(d, n, shift):
    t = _draws(d, n, seed=n, shift=shift)
    want = stats.kstest(t.double().numpy(), d.cdf().cdf)
    stat = ks_statistic(t, d)
    assert abs(stat - float(want.statistic)) <= 1e-12
    assert abs(ks_pvalue(stat, n) - float(want.pvalue)) <= 1e-9
    if shift >= 0.5:
        assert want.pvalue < 1e-6  # the case tests a rejection, not only fits


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_ks_other_dtypes(dtype):
    d = DISTS[0]
    t = _draws(d, 4000, seed=1, shift=0.0).to(dtype)
    want = stats.kstest(t.double().numpy(), d.cdf().cdf)
    stat = ks_statistic(t.reshape(40, 100), d, cache={})
    assert abs(stat - float(want.statistic)) <= 1e-12
    assert abs(ks_pvalue(stat, t.numel()) - float(want.pvalue)) <= 1e-9


def test_ks_nan_fails_like_scipy():
    d = DISTS[2]
    t = _draws(d, 100, seed=2, shift=0.0)
    t[7] = float("nan")
    assert np.isnan(stats.kstest(t.double().numpy(), d.cdf().cdf).pvalue)
    assert np.isnan(ks_pvalue(ks_statistic(t, d), 100))


def test_check_init_pvalues_are_scipys():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.LayerNorm(20),
                                torch.nn.Linear(20, 5))
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ok, layers, thr = check_init(model, "torch-default", w0)
    assert ok and thr == 0.01 / 3  # 2.bias: 5 values, too few to test
    from pol.step.init import expected_distributions
    dists = expected_distributions(model, "torch-default")
    for r in layers:
        if r.kind != "const":
            want = stats.kstest(w0[r.name].double().flatten().numpy(), dists[r.name].cdf().cdf)
            assert abs(r.pvalue - want.pvalue) <= 1e-9 and r.n == w0[r.name].numel()
    w0["0.weight"] *= 3  # not the declared distribution
    assert not check_init(model, "torch-default", w0)[0]
    if torch.cuda.is_available():  # the same statistics on a GPU
        on_gpu = check_init(model, "torch-default", w0, device="cuda")[1]
        assert all(abs(a.pvalue - b.pvalue) <= 1e-9 for a, b in
                   zip(on_gpu, check_init(model, "torch-default", w0)[1]))


def test_pvalue_helper_gives_this_process_values_bit_for_bit(monkeypatch):
    """The helper process (a GPU verification's, while it has not imported scipy.stats) answers
    with the very floats computed here, NaN included; check_init through it gives the same
    layers."""
    import sys

    from pol.verifier import initcheck
    d = DISTS[1]
    pairs = [(ks_statistic(_draws(d, n, seed=n, shift=s), d), n)
             for n, s in [(8, 0.0), (1000, 0.05), (20_000, 0.0), (5000, 0.5)]]
    pairs.append((float("nan"), 100))
    want = [ks_pvalue(stat, n) for stat, n in pairs]
    monkeypatch.delitem(sys.modules, "scipy.stats")  # as if not imported: the helper answers
    helper = initcheck.PvalueHelper()
    got = initcheck.ks_pvalues(pairs, helper)
    assert got[:-1] == want[:-1] and np.isnan(got[-1]) and np.isnan(want[-1])
    assert helper.pvalues(pairs) is None  # one question per helper
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.LayerNorm(20),
                                torch.nn.Linear(20, 5))
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    helper = initcheck.PvalueHelper()
    calls = []
    real = helper.pvalues
    monkeypatch.setattr(helper, "pvalues", lambda p: calls.append(p) or real(p))
    assert check_init(model, "torch-default", w0, helper=helper) == check_init(model,
                                                                               "torch-default", w0)
    assert len(calls) == 1 and len(calls[0]) == 3  # the KS-tested layers, in one question


@pytest.mark.parametrize("how", ["no interpreter", "not python", "crash", "wrong answer",
                                 "closed"])
def test_pvalue_helper_failure_falls_back_to_this_process(monkeypatch, how):
    """A helper that cannot answer (no interpreter to start, a program that is not Python, an exit
    with an error, an answer of the wrong length or range, closed before the question) gives
    None, and the p-values are computed here."""
    import sys

    from pol import pvalues
    from pol.verifier import initcheck
    pairs = [(0.05, 400), (0.3, 50)]
    want = [ks_pvalue(stat, n) for stat, n in pairs]
    if how == "no interpreter":
        monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    elif how == "not python":  # Python embedded in another program: never run that program
        monkeypatch.setattr(sys, "executable", "/bin/false")
    elif how == "crash":
        monkeypatch.setattr(pvalues, "_HELPER_CODE", "import sys; sys.exit(3)")
    elif how == "wrong answer":
        monkeypatch.setattr(pvalues, "_HELPER_CODE",
                            "import sys; sys.stdin.read(); sys.stdout.write('[0.5, 2.0]')")
    helper = initcheck.PvalueHelper()
    if how == "closed":
        helper.close()
    if how == "not python":
        assert helper._proc is None  # not started
    assert helper.pvalues(pairs) is None
    monkeypatch.delitem(sys.modules, "scipy.stats")
    helper = initcheck.PvalueHelper()
    assert initcheck.ks_pvalues(pairs, helper) == want


def test_a_helper_started_early_answers_the_first_question(monkeypatch):
    """`pol verify` starts a helper before it imports torch (`pol.pvalues.start_early`): the
    first p-values asked without a helper come from it, bit for bit; it answers once."""
    import sys

    from pol import pvalues
    from pol.verifier import initcheck
    pairs = [(0.05, 400), (0.3, 50), (0.01, 20_000)]
    want = [ks_pvalue(stat, n) for stat, n in pairs]
    monkeypatch.delitem(sys.modules, "scipy.stats")
    monkeypatch.setattr(pvalues, "_early", None)
    pvalues.start_early()
    pvalues.start_early()  # once
    early = pvalues._early
    assert early is not None and early._proc is not None
    asked = []
    real = early.pvalues
    monkeypatch.setattr(early, "pvalues", lambda p: asked.append(p) or real(p))
    assert initcheck.ks_pvalues(pairs) == want and len(asked) == 1
    assert pvalues.take_early() is None and initcheck.ks_pvalues(pairs) == want
    assert len(asked) == 1  # the second question was answered here
