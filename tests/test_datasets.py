"""Datasets: raw arrays, deterministic loaders, CIFAR binary readers, prepare and augment."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pol.datasets import (
    CIFAR_MEAN,
    CIFAR_STD,
    DATASETS,
    DEFAULT_PREPARE,
    ArrayDataset,
    DatasetNotFound,
    load_dataset,
)
from pol.step.data import AUGMENT, PREPARE

# --------------------------------------------------------------------------------------------------
# ArrayDataset
# --------------------------------------------------------------------------------------------------


def test_array_dataset_validation():
    ds = ArrayDataset(np.zeros((3, 2), np.float32), np.array([0, 1, 2], np.int64))
    assert len(ds) == 3
    with pytest.raises(ValueError):
        ArrayDataset(np.zeros((3, 2)), np.array([0, 1], np.int64))
    with pytest.raises(ValueError):
        ArrayDataset(np.zeros((3, 2)), np.array([0, 1, 2], np.int32))
    with pytest.raises(ValueError):  # labels need a sample axis
        ArrayDataset(np.zeros((3, 2)), np.array(1, np.int64))
    # per-sample target rows (a language model's next tokens) are allowed
    assert len(ArrayDataset(np.zeros((3, 2)), np.zeros((3, 4), np.int64))) == 3
    with pytest.raises(ValueError):
        ArrayDataset(np.array([None, None], dtype=object), np.array([0, 1], np.int64))
    fortran = ArrayDataset(np.asfortranarray(np.ones((4, 3))), np.zeros(4, np.int64))
    assert fortran.x.flags.c_contiguous


# --------------------------------------------------------------------------------------------------
# sklearn datasets
# --------------------------------------------------------------------------------------------------


def test_digits_shapes_and_determinism():
    tr, te = load_dataset("digits")
    assert tr.x.shape == (1437, 64) and te.x.shape == (360, 64)
    assert tr.x.dtype == np.float32 and tr.y.dtype == np.int64
    assert tr.x.min() == 0 and tr.x.max() == 16  # raw 0..16 values kept
    assert set(np.unique(tr.y)) == set(range(10))
    tr2, te2 = load_dataset("digits", {})
    assert tr.x.tobytes() == tr2.x.tobytes() and te.y.tobytes() == te2.y.tobytes()


@pytest.mark.parametrize("name, n, d, k", [("iris", 150, 4, 3), ("wine", 178, 13, 3),
                                            ("breast-cancer", 569, 30, 2)])
def test_tabular_standardized(name, n, d, k):
    tr, te = load_dataset(name)
    assert len(tr) == (n * 4) // 5 and len(te) == n - len(tr)
    assert tr.x.shape[1] == d and tr.x.dtype == np.float32
    assert np.allclose(tr.x.mean(0), 0, atol=1e-5) and np.allclose(tr.x.std(0), 1, atol=1e-4)
    assert set(np.unique(tr.y)) == set(range(k))
    again, _ = load_dataset(name)
    assert again.x.tobytes() == tr.x.tobytes()


def test_limit_and_unknown_params():
    tr, te = load_dataset("digits", {"limit": 100})
    full, full_te = load_dataset("digits")
    assert len(tr) == 100 and np.array_equal(tr.x, full.x[:100]) and len(te) == len(full_te)
    with pytest.raises(ValueError, match="unknown parameter"):
        load_dataset("iris", {"seed": 1})
    with pytest.raises(ValueError):
        load_dataset("digits", {"limit": 0})
    with pytest.raises(ValueError):
        load_dataset("digits", {"limit": True})
    with pytest.raises(ValueError):
        load_dataset("digits", [("limit", 3)])  # type: ignore[arg-type]


def test_unknown_dataset():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*known: .*digits"):
        load_dataset("mnist")


def test_default_prepare_covers_registry():
    assert set(DEFAULT_PREPARE) == set(DATASETS)
    assert set(DEFAULT_PREPARE.values()) <= set(PREPARE)


# --------------------------------------------------------------------------------------------------
# synthetic-cifar
# --------------------------------------------------------------------------------------------------


def test_synthetic_cifar_deterministic_and_fast():
    t0 = time.perf_counter()
    tr, te = load_dataset("synthetic-cifar")
    elapsed = time.perf_counter() - t0
    assert tr.x.shape == (2000, 32, 32, 3) and te.x.shape == (500, 32, 32, 3)
    assert tr.x.dtype == np.uint8 and tr.y.dtype == np.int64
    assert np.bincount(np.concatenate([tr.y, te.y])).tolist() == [250] * 10  # balanced
    assert elapsed < 3.0  # < 1 s on a normal machine; slack for loaded CI runners
    tr2, te2 = load_dataset("synthetic-cifar", {"seed": 0})
    assert tr.x.tobytes() == tr2.x.tobytes() and te.x.tobytes() == te2.x.tobytes()
    assert tr.y.tobytes() == tr2.y.tobytes()
    tr3, _ = load_dataset("synthetic-cifar", {"seed": 1, "n_train": 200, "n_test": 10})
    assert len(tr3) == 200 and tr3.x.tobytes() != tr.x[:200].tobytes()
    small, small_te = load_dataset("synthetic-cifar", {"n_train": 50, "n_test": 0,
                                                       "num_classes": 3})
    assert len(small) == 50 and len(small_te) == 0 and set(np.unique(small.y)) == {0, 1, 2}


def test_synthetic_cifar_learnable_but_not_trivial():
    tr, te = load_dataset("synthetic-cifar")
    xtr = tr.x.reshape(len(tr), -1).astype(np.float32)
    xte = te.x.reshape(len(te), -1).astype(np.float32)
    means = np.stack([xtr[tr.y == c].mean(0) for c in range(10)])
    d = (xte**2).sum(1)[:, None] - 2 * xte @ means.T + (means**2).sum(1)[None]
    acc = float((d.argmin(1) == te.y).mean())
    assert 0.3 < acc < 0.95, acc  # chance is 0.1; far from perfect for a raw-pixel model
    # not degenerate: uses the whole pixel range without saturating much
    assert 80 < tr.x.mean() < 180 and tr.x.std() > 30
    assert (tr.x == 0).mean() + (tr.x == 255).mean() < 0.15


@pytest.mark.parametrize("params", [{"n_train": 0}, {"n_train": 10**9}, {"seed": -1},
                                    {"num_classes": 1}, {"seed": 1.5}, {"shift": 3}])
def test_synthetic_cifar_bad_params(params):
    with pytest.raises(ValueError):
        load_dataset("synthetic-cifar", params)


# --------------------------------------------------------------------------------------------------
# CIFAR binary readers (tiny files written in the official format)
# --------------------------------------------------------------------------------------------------

C10_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]


def _records(rng: np.random.Generator, n: int, label_bytes: list[np.ndarray]):
    """n CIFAR records: label byte(s) + 3072 pixel bytes in CHW (R, G, B planes) order.
    Returns (file bytes, HWC images as the loader should return them)."""
    chw = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    rec = np.concatenate([*(lb[:, None] for lb in label_bytes), chw.reshape(n, -1)], axis=1)
    return rec.astype(np.uint8).tobytes(), chw.transpose(0, 2, 3, 1)


def _write_cifar10(folder: Path, n: int = 20):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    xs, ys = [], []
    for f in C10_TRAIN + ["test_batch.bin"]:
        y = rng.integers(0, 10, size=n).astype(np.uint8)
        data, hwc = _records(rng, n, [y])
        (folder / f).write_bytes(data)
        xs.append(hwc)
        ys.append(y.astype(np.int64))
    return np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


def _write_cifar100(folder: Path, n: int = 20):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    out = []
    for f in ["train.bin", "test.bin"]:
        coarse = rng.integers(0, 20, size=n).astype(np.uint8)
        fine = rng.integers(0, 100, size=n).astype(np.uint8)
        data, hwc = _records(rng, n, [coarse, fine])
        (folder / f).write_bytes(data)
        out += [hwc, fine.astype(np.int64)]
    return out


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_roundtrip(tmp_path, nested):
    folder = tmp_path / "cifar-10-batches-bin" if nested else tmp_path
    x, y, xt, yt = _write_cifar10(folder)
    tr, te = load_dataset("cifar10", data_dir=str(tmp_path))
    assert tr.x.shape == (100, 32, 32, 3) and tr.x.dtype == np.uint8
    assert np.array_equal(tr.x, x) and np.array_equal(tr.y, y)
    assert np.array_equal(te.x, xt) and np.array_equal(te.y, yt)
    assert tr.x.flags.c_contiguous
    # first training record, pixel (row 0, col 1): byte 1 of each plane
    raw = np.frombuffer((folder / "data_batch_1.bin").read_bytes(), np.uint8)
    assert tr.y[0] == raw[0]
    assert tr.x[0, 0, 1].tolist() == [raw[1 + 1], raw[1 + 1024 + 1], raw[1 + 2048 + 1]]
    lim, _ = load_dataset("cifar10", {"limit": 30}, data_dir=str(folder))
    assert np.array_equal(lim.x, x[:30])


def test_cifar10_threaded_copy_cuts_across_files(tmp_path, monkeypatch):
    """The CHW→HWC copy runs in ranges on threads; ranges that start and end inside different
    files give the same array as one copy (5 files of 20 records, ranges of at least 7)."""
    from pol import datasets
    x, y, _, _ = _write_cifar10(tmp_path)
    monkeypatch.setattr(datasets, "_CIFAR_COPY_MIN", 7)
    calls = []
    real = datasets.in_ranges
    monkeypatch.setattr(datasets, "in_ranges", lambda n, fn, **kw: calls.append(
        real(n, fn, workers=8, **kw)))
    tr, _ = load_dataset("cifar10", data_dir=str(tmp_path))
    assert calls and len(calls[0]) == 8  # 100 images in 8 ranges
    assert np.array_equal(tr.x, x) and np.array_equal(tr.y, y) and tr.x.flags.c_contiguous


def test_content_digest_changes_with_any_byte_dtype_or_shape():
    """The content key (8 MiB pieces hashed on threads) covers every byte, the dtype and the
    shape; empty arrays have one too."""
    from pol.proof import hashing
    monkey_chunk = hashing._DIGEST_CHUNK
    try:
        hashing._DIGEST_CHUNK = 1000  # many pieces for a small array
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
        y = rng.integers(0, 10, size=40)
        d = hashing.content_digest(x, y)
        assert hashing.content_digest(x.copy(), y.copy()) == d
        for i in (0, 999, 1000, x.size - 1):
            x2 = x.copy().reshape(-1)
            x2[i] ^= 1
            assert hashing.content_digest(x2.reshape(x.shape), y) != d
        assert hashing.content_digest(x.reshape(40, -1), y) != d
        assert hashing.content_digest(x.astype(np.int16), y) != d
        assert hashing.content_digest(x[:0], y[:0]) != hashing.content_digest(x[:1], y[:1])
    finally:
        hashing._DIGEST_CHUNK = monkey_chunk


def test_cifar100_roundtrip_fine_labels(tmp_path):
    x, y, xt, yt = _write_cifar100(tmp_path / "cifar-100-binary")
    tr, te = load_dataset("cifar100", data_dir=str(tmp_path))
    assert np.array_equal(tr.x, x) and np.array_equal(tr.y, y)
    assert np.array_equal(te.x, xt) and np.array_equal(te.y, yt)
    raw = np.frombuffer((tmp_path / "cifar-100-binary" / "train.bin").read_bytes(), np.uint8)
    assert tr.y[0] == raw[1]  # fine label is the second byte


def test_cifar_missing_files(tmp_path):
    with pytest.raises(DatasetNotFound) as ei:
        load_dataset("cifar10", data_dir=str(tmp_path))
    msg = str(ei.value)
    assert "data_batch_1.bin" in msg and "test_batch.bin" in msg and str(tmp_path) in msg
    assert "cifar-10-batches-bin" in msg and "cs.toronto.edu/~kriz/cifar.html" in msg
    assert "never downloads" in msg
    assert isinstance(ei.value, FileNotFoundError)
    with pytest.raises(DatasetNotFound, match="train.bin"):
        load_dataset("cifar100", data_dir=str(tmp_path))
    with pytest.raises(DatasetNotFound, match="data_dir"):
        load_dataset("cifar10")
    # partially present: names exactly the missing file
    _write_cifar10(tmp_path)
    (tmp_path / "data_batch_3.bin").unlink()
    with pytest.raises(DatasetNotFound, match="missing in .*: data_batch_3.bin"):
        load_dataset("cifar10", data_dir=str(tmp_path))


def test_cifar_truncated_file(tmp_path):
    _write_cifar10(tmp_path)
    p = tmp_path / "data_batch_2.bin"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(ValueError, match="data_batch_2.bin.*3073-byte record"):
        load_dataset("cifar10", data_dir=str(tmp_path))


def test_cifar_bad_label(tmp_path):
    _write_cifar10(tmp_path)
    p = tmp_path / "test_batch.bin"
    data = bytearray(p.read_bytes())
    data[0] = 200
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="out of range"):
        load_dataset("cifar10", data_dir=str(tmp_path))


# --------------------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------------------


def test_npz(tmp_path):
    x = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    y = np.arange(50) % 4
    np.savez(tmp_path / "a.npz", x=x, y=y)
    tr, te = load_dataset("npz", {"path": str(tmp_path / "a.npz")})
    assert len(tr) == 40 and len(te) == 10 and tr.y.dtype == np.int64
    assert sorted(np.concatenate([tr.x[:, 0], te.x[:, 0]]).tolist()) == x[:, 0].tolist()
    np.savez(tmp_path / "b.npz", x=x, y=y, x_test=x[:5], y_test=y[:5])
    tr, te = load_dataset("npz", {"path": "b.npz"}, data_dir=str(tmp_path))  # relative to data_dir
    assert np.array_equal(tr.x, x) and np.array_equal(te.y, y[:5])


def test_npz_errors(tmp_path):
    with pytest.raises(ValueError, match="path"):
        load_dataset("npz")
    with pytest.raises(DatasetNotFound):
        load_dataset("npz", {"path": str(tmp_path / "nope.npz")})
    np.savez(tmp_path / "nokey.npz", x=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="missing array.*y"):
        load_dataset("npz", {"path": str(tmp_path / "nokey.npz")})
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.zeros(2, int))
    with pytest.raises(ValueError, match="pickle"):
        load_dataset("npz", {"path": str(tmp_path / "obj.npz")})
    np.savez(tmp_path / "fy.npz", x=np.zeros((3, 2)), y=np.array([0.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match="integer"):
        load_dataset("npz", {"path": str(tmp_path / "fy.npz")})
    np.savez(tmp_path / "len.npz", x=np.zeros((3, 2)), y=np.zeros(4, int))
    with pytest.raises(ValueError, match="samples"):
        load_dataset("npz", {"path": str(tmp_path / "len.npz")})
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError):
        load_dataset("npz", {"path": str(tmp_path / "junk.npz")})
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(ValueError, match="not an .npz"):
        load_dataset("npz", {"path": str(tmp_path / "plain.npy")})


# --------------------------------------------------------------------------------------------------
# prepare / augment
# --------------------------------------------------------------------------------------------------


def test_prepare():
    x = torch.tensor([[0.0, 8.0, 16.0]])
    assert torch.equal(PREPARE["digits"](x), torch.tensor([[0.0, 0.5, 1.0]]))
    assert PREPARE["float"](torch.tensor([[1, 2]], dtype=torch.int32)).dtype == torch.float32
    img = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)
    img[1, 4, 5] = torch.tensor([255, 128, 0], dtype=torch.uint8)
    out = PREPARE["image-hwc-uint8"](img)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32 and out.is_contiguous()
    for c in range(3):
        assert out[0, c, 0, 0].item() == pytest.approx(-CIFAR_MEAN[c] / CIFAR_STD[c], rel=1e-6)
    assert out[1, 0, 4, 5].item() == pytest.approx((1 - CIFAR_MEAN[0]) / CIFAR_STD[0], rel=1e-6)
    assert out[1, 1, 4, 5].item() == pytest.approx((128 / 255 - CIFAR_MEAN[1]) / CIFAR_STD[1],
                                                   abs=1e-6)
    with pytest.raises(ValueError):
        PREPARE["image-hwc-uint8"](img.float())


def _batch() -> torch.Tensor:
    return torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["crop-flip", "flip"])
def test_augment_repeatable(name):
    x = _batch()
    a = AUGMENT[name](x, torch.Generator().manual_seed(11))
    b = AUGMENT[name](x, torch.Generator().manual_seed(11))
    c = AUGMENT[name](x, torch.Generator().manual_seed(12))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    before = torch.random.get_rng_state()
    AUGMENT[name](x, torch.Generator().manual_seed(11))
    assert torch.equal(torch.random.get_rng_state(), before)  # global RNG never used


def test_augment_none_identity():
    x = _batch()
    assert torch.equal(AUGMENT["none"](x, torch.Generator().manual_seed(0)), x)


def test_flip_is_flip_or_identity():
    x = _batch()
    out = AUGMENT["flip"](x, torch.Generator().manual_seed(3))
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(len(x))]
    same = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f or s for f, s in zip(flipped, same)) and any(flipped) and any(same)


def test_crop_flip_matches_reference():
    # Each output is a 32x32 window of the zero-padded input, possibly mirrored.
    x = _batch()
    out = AUGMENT["crop-flip"](x, torch.Generator().manual_seed(5))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    n_flipped = n_shifted = 0
    for i in range(len(x)):
        matches = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                   if torch.equal(out[i], (lambda w: w.flip(2) if f else w)(
                       padded[i, :, dy:dy + 32, dx:dx + 32]))]
        assert len(matches) == 1, i
        dy, dx, f = matches[0]
        n_flipped += f
        n_shifted += (dy, dx) != (4, 4)
    assert 0 < n_flipped < len(x) and n_shifted > 0


def test_augment_rejects_flat_input():
    with pytest.raises(ValueError):
        AUGMENT["crop-flip"](torch.zeros(4, 64), torch.Generator().manual_seed(0))
