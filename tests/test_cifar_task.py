"""The CIFAR tasks train and verify from a local directory in the standard binary format
(tiny files written here), and say where to put the files when they are absent."""

import numpy as np
from click.testing import CliRunner

from pol.cli import main


def write_tiny_cifar10(folder, n=12):
    """CIFAR-10 binary version: records of 1 label byte + 3072 pixel bytes (CHW planes)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, size=(n, 1), dtype=np.uint8)
        pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        (folder / name).write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())


def test_cifar10_task_trains_and_verifies_from_a_local_directory(tmp_path):
    data = tmp_path / "cifar-10-batches-bin"
    write_tiny_cifar10(data)
    r = CliRunner()
    res = r.invoke(main, ["train", "--task", "cifar10-resnet20", "--data", str(tmp_path),
                          "--epochs", "1", "--batch-size", "20", "--k", "2",
                          "--out", str(tmp_path / "proof")])
    assert res.exit_code == 0, res.output
    ok = r.invoke(main, ["verify", str(tmp_path / "proof"), "--data", str(tmp_path), "--all"])
    assert ok.exit_code == 0, ok.output
    # without the data the verifier says what it needs, no traceback
    missing = r.invoke(main, ["verify", str(tmp_path / "proof")])
    assert missing.exit_code == 2 and "Traceback" not in missing.output


def test_cifar_task_without_files_says_where_to_put_them(tmp_path):
    res = CliRunner().invoke(main, ["train", "--task", "cifar10-resnet20", "--data",
                                    str(tmp_path / "nowhere"), "--out", str(tmp_path / "p")])
    assert res.exit_code == 2
    assert "cifar" in res.output.lower() and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["train", "--task", "cifar100-resnet50",
                                    "--out", str(tmp_path / "p2")])
    assert res.exit_code == 2 and "--data" in res.output
