"""The scikit-learn toy datasets read from pol's disk cache (`pol.datasets._sklearn_xy`): the same
arrays as scikit-learn's loader; a second process loads them without importing scikit-learn; a
damaged cache file is rebuilt; POL_CACHE_DIR="" turns the cache off."""

import os
import subprocess
import sys

import numpy as np
import pytest

from pol import datasets


@pytest.mark.parametrize("fn", ["load_digits", "load_iris", "load_wine", "load_breast_cancer"])
def test_cached_arrays_are_scikit_learns(fn, tmp_path, monkeypatch):
    import sklearn.datasets
    monkeypatch.setenv("POL_CACHE_DIR", str(tmp_path))
    want_x, want_y = getattr(sklearn.datasets, fn)(return_X_y=True)
    for _ in range(2):  # written, then read
        x, y = datasets._sklearn_xy(fn)
        assert x.dtype == want_x.dtype and y.dtype == want_y.dtype
        assert np.array_equal(x, want_x) and np.array_equal(y, want_y)
    assert len(os.listdir(tmp_path / "datasets")) == 1


def test_a_second_process_does_not_import_scikit_learn(tmp_path):
    env = {**os.environ, "POL_CACHE_DIR": str(tmp_path)}
    code = ("import sys; from pol.datasets import load_dataset; "
            "tr, te = load_dataset('digits', {}, None); "
            "print(len(tr) + len(te), 'sklearn' in sys.modules)")
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, check=True).stdout.split()
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True).stdout.split()
    assert first == ["1797", "True"]
    assert second == ["1797", "False"]


def test_a_damaged_cache_file_is_rebuilt_and_none_is_kept_when_off(tmp_path, monkeypatch):
    monkeypatch.setenv("POL_CACHE_DIR", str(tmp_path))
    x, y = datasets._sklearn_xy("load_iris")
    (f,) = (tmp_path / "datasets").iterdir()
    f.write_bytes(b"not an npz")
    x2, y2 = datasets._sklearn_xy("load_iris")
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert f.read_bytes()[:2] == b"PK"  # rewritten
    monkeypatch.setenv("POL_CACHE_DIR", "")
    off = tmp_path / "off"
    assert datasets._sklearn_xy("load_iris")[0].shape == x.shape
    assert not off.exists()
