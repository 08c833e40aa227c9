"""TF32 is part of the spec: pol's GPU tasks record it off, the Recorder records what is in force,
and the verifier replays with the recorded setting and restores the caller's afterwards."""

import pytest
import torch

from pol.errors import ProofFormatError
from pol.prover.trainer import train_task
from pol.spec import TrainingSpec, current_tf32, set_tf32
from pol.tasks import build_spec
from pol.verifier import verify


@pytest.fixture(autouse=True)
def _restore_tf32():
    prev = current_tf32()
    yield
    set_tf32(prev)


def test_set_and_read_back():
    for mode in ("off", "conv", "matmul", "on"):
        set_tf32(mode)
        assert current_tf32() == mode
    before = current_tf32()
    assert set_tf32("") == before and current_tf32() == before  # "" leaves torch alone


def test_build_spec_records_tf32_on_cuda_only():
    cpu, _, _ = build_spec("iris-logreg")
    assert cpu.tf32 == "" and "tf32" not in cpu.to_dict()  # old proofs' bytes unchanged
    gpu, _, _ = build_spec("iris-logreg", device="cuda")
    assert gpu.tf32 == "off"
    assert build_spec("iris-logreg", device="cuda", tf32=True)[0].tf32 == "on"
    assert TrainingSpec.from_dict(gpu.to_dict()) == gpu


def test_bad_tf32_value_is_a_format_error():
    d = build_spec("iris-logreg", device="cuda")[0].to_dict()
    d["tf32"] = "sometimes"
    with pytest.raises(ProofFormatError, match="tf32"):
        TrainingSpec.from_dict(d)


def test_verifier_restores_callers_setting(tmp_path):
    p = tmp_path / "iris"
    train_task("iris-logreg", p, epochs=1, k=5)
    set_tf32("conv")
    assert verify(p).valid
    assert current_tf32() == "conv"
    assert torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


def test_augmentation_draws_on_the_cpu_for_new_proofs():
    """CUDA's and the CPU's generators give different numbers for one seed: new proofs draw
    augmentation on the CPU so a GPU proof replays with the same crops and flips on a CPU."""
    from pol.step import build_context
    spec, _, _ = build_spec("synthetic-resnet20", dataset_params={"n_train": 64, "n_test": 16})
    assert spec.augment_rng == "cpu"
    d = spec.to_dict()
    assert TrainingSpec.from_dict(d).augment_rng == "cpu"
    del d["augment_rng"]  # a proof made before the field existed: drawn on the training device
    legacy = TrainingSpec.from_dict(d)
    assert legacy.augment_rng == "" and "augment_rng" not in legacy.to_dict()
    ctx = build_context(spec, torch.device("cpu"))
    assert ctx.rng_device == torch.device("cpu") and ctx.generator(3).device.type == "cpu"
    assert build_context(legacy, torch.device("cpu")).rng_device is None
    x = torch.rand(4, 3, 32, 32)
    a = ctx.augment(x, ctx.generator(5))
    b = ctx.augment(x, ctx.generator(5))
    c = ctx.augment(x, ctx.generator(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_deterministic_is_the_default_on_a_gpu_only():
    from pol.prover.trainer import default_deterministic
    assert default_deterministic(None, "cuda") is True
    assert default_deterministic(None, "cpu") is False
    assert default_deterministic(False, "cuda") is False  # --no-deterministic
    assert default_deterministic(True, "cpu") is True


def test_cli_train_on_cpu_records_not_deterministic(tmp_path):
    from click.testing import CliRunner

    from pol.cli import main
    from pol.proof.reader import read_manifest
    r = CliRunner().invoke(main, ["train", "--task", "iris-logreg", "--epochs", "1", "--out",
                                  str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    assert read_manifest(tmp_path / "p").spec.deterministic is False
