"""What the Recorder and `pol.attach` take as `data=`, beyond in-memory arrays (issue 12).

- A map-style `torch.utils.data.Dataset` whose items are (input tensor or array, integer label or
  label array), with the factory that rebuilds it::

      rec = Recorder(..., data=ds, data_params={"factory": "mydata:make_dataset",
                                                "kwargs": {"split": "train"}})

  The spec's data is `torch-dataset` with those params; the verifier rebuilds the dataset from a
  factory it names itself (`pol verify --data mydata:make_dataset`: pol imports only code its
  user names), called with the recorded kwargs, and the dataset commitment holds it to the
  prover's bytes. A dataset with a `pol_content_key` (a string naming its content, e.g. a digest
  of its files) has its leaves cached on disk.
- A Hugging Face `datasets.Dataset` (`pol.datasets.HFDatasetSource`: sample i is row i of an
  input column and a label column, as the Arrow data holds them; `data_params={"columns": [input,
  label]}` where `pol.datasets.hf_columns` cannot tell, and optionally the `factory` (and
  `kwargs`) that rebuilds it). The spec's data is `hf-dataset` with the columns; the verifier is
  given the dataset (`pol verify --data DIR`, a directory written by `Dataset.save_to_disk`, or
  `--data module:callable`).
- A token file (`pol.datasets.TokenFile(path, block_size)`: nanoGPT's `np.memmap` of uint16
  tokens, as non-overlapping windows of block_size + 1 tokens; the spec's data is `token-file`
  with the file's sha256, the block size and the dtype; the verifier is given the file
  (`--data FILE`) and checks its digest before reading it).

Either way the dataset is read on demand (`pol.datasets.LazyDataset`): its per-sample leaves are
hashed in one streaming pass before training starts (the root is in the spec from step 0), over
the same bytes as an ArrayDataset of the same rows, so the same data gives the same root.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from pol.datasets import (FACTORY_FORM, ArrayDataset, HFDatasetSource, LazyDataset, TokenFile,
                          TorchDatasetSource, hf_dataset_from, is_hf_dataset,
                          torch_dataset_from_factory)
from pol.errors import ConfigError

__all__ = ["resolve_data", "is_torch_dataset"]

_FACTORY_RE = re.compile(FACTORY_FORM)


def is_torch_dataset(data: Any) -> bool:
    from torch.utils.data import Dataset
    return isinstance(data, Dataset)


def _refuse_loader(data: Any) -> None:
    from torch.utils.data import DataLoader
    if isinstance(data, DataLoader):
        raise ConfigError("data is a DataLoader: pol draws the batch order from the seed itself "
                          "(the verifier replays that order); pass its dataset and workers "
                          "instead: data=loader.dataset (with data_params' factory), and to "
                          "pol.attach num_workers=loader.num_workers")


def _torch_dataset(data: Any, data_name: str, data_params: dict | None) -> tuple[Any, str, dict]:
    if data_name not in ("user", "torch-dataset"):
        raise ConfigError(f"data_name={data_name!r} with a torch Dataset: its data is "
                          "'torch-dataset'")
    params = dict(data_params or {})
    ref = params.get("factory")
    if not isinstance(ref, str) or not _FACTORY_RE.match(ref):
        raise ConfigError("a torch Dataset as data needs the factory that rebuilds it, for the "
                          "verifier: pass data_params={'factory': 'module:callable'} (and "
                          "'kwargs': {...} its JSON arguments) to pol.attach or the Recorder; "
                          "the factory must live in a module of its own, importable without "
                          "training")
    extra = set(params) - {"factory", "kwargs"}
    if extra:
        raise ConfigError(f"torch-dataset data_params: unknown key(s) {', '.join(sorted(extra))} "
                          "(factory, kwargs)")
    if not isinstance(params.get("kwargs", {}), dict):
        raise ConfigError("torch-dataset data_params: kwargs must be a dict of JSON values")
    _check_module(ref)
    ds = LazyDataset(TorchDatasetSource(data))
    _check_factory(ds, torch_dataset_from_factory(ref, params.get("kwargs", {})), ref)
    return ds, "torch-dataset", params


def _hf_dataset(data: Any, data_name: str, data_params: dict | None) -> tuple[Any, str, dict]:
    """A datasets.Dataset: read on demand through `HFDatasetSource`; the spec's params are its
    columns, and the factory that rebuilds it if one is given (checked as a torch Dataset's)."""
    if data_name not in ("user", "hf-dataset"):
        raise ConfigError(f"data_name={data_name!r} with a datasets.Dataset: its data is "
                          "'hf-dataset'")
    params = dict(data_params or {})
    extra = set(params) - {"columns", "factory", "kwargs"}
    if extra:
        raise ConfigError(f"hf-dataset data_params: unknown key(s) {', '.join(sorted(extra))} "
                          "(columns, factory, kwargs)")
    source = HFDatasetSource(data, params.get("columns"))
    ds = LazyDataset(source)
    out: dict[str, Any] = {"columns": list(source.columns)}
    ref = params.get("factory")
    if ref is not None:
        if not isinstance(ref, str) or not _FACTORY_RE.match(ref):
            raise ConfigError(f"hf-dataset data_params: factory {ref!r} is not module:callable")
        kwargs = params.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise ConfigError("hf-dataset data_params: kwargs must be a dict of JSON values")
        _check_module(ref)
        _check_factory(ds, LazyDataset(HFDatasetSource(hf_dataset_from(ref, kwargs),
                                                       source.columns)), ref)
        out.update(factory=ref, kwargs=kwargs)
    elif "kwargs" in params:
        raise ConfigError("hf-dataset data_params: kwargs without a factory")
    return ds, "hf-dataset", out


def _check_module(ref: str) -> None:
    """Refuse, as for model factories, a dataset factory in the running script or in a module
    that trains when imported (the verifier imports it)."""
    from pol.registry import check_factory_module
    try:
        check_factory_module(ref.split(":")[0], ref)
    except ConfigError as e:
        raise ConfigError(str(e).replace("model factory", "dataset factory")
                          .replace("the model class", "the dataset factory")) from None


def _check_factory(ds: LazyDataset, rebuilt: LazyDataset, ref: str) -> None:
    """The factory the verifier will call must build this dataset (`rebuilt`, what it built):
    same length and the same first, last and 14 evenly spaced items (a spot check before
    training; the full check is the verifier's dataset commitment)."""
    n = len(ds)
    same = len(rebuilt) == n
    if same:
        spots = np.unique(np.linspace(0, n - 1, 16).astype(np.int64))
        same = all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in
                   zip(rebuilt.source.batch(spots), ds.source.batch(spots)))
    if not same:
        raise ConfigError(f"the dataset factory {ref} builds a dataset that differs from the one "
                          f"given ({len(rebuilt)} items vs {n}, or some item differs): the "
                          "verifier rebuilds the data from it")


def resolve_data(data: Any, data_name: str = "user",
                 data_params: dict | None = None) -> tuple[Any, str, dict]:
    """(dataset, spec data name, spec data params) for what a caller passes as `data=`: arrays and
    ArrayDatasets as they are (returned unchanged, with the caller's name and params), a torch
    Dataset, a datasets.Dataset or a TokenFile read on demand (see the module's docstring)."""
    _refuse_loader(data)
    if isinstance(data, TokenFile):
        if data_name not in ("user", "token-file") or data_params:
            raise ConfigError("a TokenFile's spec data is 'token-file' with the file's digest: "
                              "leave data_name and data_params out")
        return LazyDataset(data), "token-file", data.params
    if isinstance(data, LazyDataset):
        raise ConfigError("pass the torch Dataset or the TokenFile itself as data")
    if is_hf_dataset(data) or type(data).__module__.startswith("datasets."):
        return _hf_dataset(data, data_name, data_params)
    if isinstance(data, (ArrayDataset, tuple, list)) or not is_torch_dataset(data):
        return data, data_name, dict(data_params or {})
    return _torch_dataset(data, data_name, data_params)
