"""The end of a replayed segment, computed in place and on the replay's device, gives the same bits
as the published measures: `flat_params` + `all_distances`, and the optimizer state's distances
over `soundness.flat_optimizer` vectors; a checkpoint goes to a device in one copy per dtype."""

from __future__ import annotations

import pytest
import torch

from pol.verifier import parallel as par
from pol.verifier import soundness
from pol.verifier.distances import METRICS, all_distances, flat_params


def _state(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"model.w": torch.randn(7, 5, generator=g) * scale,
           "model.b": torch.randn(5, generator=g).half(),
           "model.s": torch.randn((), generator=g)}
    for i in range(2):
        out[f"optim.{i}.exp_avg"] = torch.randn(9, generator=g) * scale
        out[f"optim.{i}.step"] = torch.tensor(3.0)
    return out


@pytest.mark.parametrize("metrics", [METRICS, ("l2",), ("cos", "l1"), ("linf",), ("cos",)])
def test_consuming_distances_bitwise(metrics):
    names = ["model.w", "model.b", "model.s"]
    for mine, end in [(_state(0), _state(1)), (_state(0), _state(0)), (_state(0), _state(2, 0.0))]:
        want = all_distances(flat_params(mine, names), flat_params(end, names), metrics)
        work = (torch.full((50,), 7.0, dtype=torch.float64), torch.empty(41, dtype=torch.float64))
        got = par._consuming_distances(par._flat64(mine, names, work[0]),
                                       par._flat64(end, names, work[1]), metrics)
        assert got == want and list(got) == list(want)
    with pytest.raises(ValueError, match="unknown metric"):
        par._consuming_distances(work[0][:3], work[1][:3], ("l3",))


def test_state_distances_bitwise():
    mine, start, end = _state(0), _state(1), _state(2)
    keys = soundness.float_state_keys(end)
    assert keys == ["optim.0.exp_avg", "optim.1.exp_avg"]
    claimed = soundness.flat_optimizer(end, keys)
    want = (float(torch.linalg.vector_norm(soundness.flat_optimizer(mine, keys) - claimed)),
            float(torch.linalg.vector_norm(claimed - soundness.flat_optimizer(start, keys))))
    work = tuple(torch.empty(18, dtype=torch.float64) for _ in range(2))
    assert par._state_distances(mine, start, end, keys, work) == want
    no_state = {k: v for k, v in start.items() if not k.startswith("optim.")}
    assert par._state_distances(mine, no_state, end, keys, work)[1] == \
        float(torch.linalg.vector_norm(claimed - torch.zeros_like(claimed)))


def test_checkpoint_to_device_in_one_copy_per_dtype():
    ck = _state(0)
    assert par._on_device(ck, torch.device("cpu")) is ck
    moved = par._on_device(ck, torch.device("meta"))
    assert list(moved) == list(ck)
    for k, v in ck.items():
        assert moved[k].shape == v.shape and moved[k].dtype == v.dtype
        # 0-d entries (step counters, a scaler's scale) stay where load_state keeps them
        assert moved[k].device.type == ("cpu" if v.dim() == 0 else "meta")
    base = moved["model.w"]._base  # the float32 entries are views of one device buffer
    assert base is not None and moved["optim.1.exp_avg"]._base is base
    assert moved["model.b"]._base is not base


def test_workspace_kept_with_the_model():
    from types import SimpleNamespace
    import gc
    gc.collect()  # a model an earlier test let go of, not yet collected, is not counted
    ctx = SimpleNamespace(model=torch.nn.Linear(2, 2), device=torch.device("cpu"))
    held = len(par._WORKSPACE)
    a, b = par._workspace(ctx, 10)
    assert a.numel() >= 10 and a.dtype == torch.float64 and a.data_ptr() != b.data_ptr()
    assert par._workspace(ctx, 5)[0] is a  # reused: no fresh pages to fault in
    assert par._workspace(ctx, 11)[0].numel() >= 11
    del ctx
    gc.collect()
    assert len(par._WORKSPACE) == held  # freed with the model


def test_workspace_on_the_host_where_a_gpu_lacks_room(monkeypatch):
    from types import SimpleNamespace
    monkeypatch.setattr(par, "_cuda_free", lambda device: 0)
    ctx = SimpleNamespace(model=torch.nn.Linear(2, 2), device=torch.device("cuda"))
    a, b = par._workspace(ctx, 10)  # no room on the GPU: compared on the host
    assert a.device.type == b.device.type == "cpu" and a.numel() >= 10
    assert par._workspace(ctx, 10)[0] is a
