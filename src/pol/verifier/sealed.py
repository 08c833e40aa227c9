"""Verifying what a verifier was handed: a proof directory, or a sealed proof file.

A sealed proof (`pol seal`, pol.crypto.seal) is signed and encrypted for one verifier. To verify
it, it is opened with the verifier's key into a private temporary directory (checking the signer
when one is pinned, and with a ledger that it is the signer's latest, unrevoked publication), the
directory is verified like any proof, and removed afterwards, whatever happened. `opened_proof` is
that lifetime as a context manager, so that a caller can do more with the opened proof while it
exists (`pol verify --record-to` signs a verdict about it); `verify_sealed` is the one-call form.

Kept out of pol.verifier.core: opening needs pol.crypto (and the `cryptography` package), which
verifying a plain directory does not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pol.errors import ConfigError

__all__ = ["ProofSource", "is_sealed_file", "opened_proof", "verify_sealed"]


@dataclass(frozen=True)
class ProofSource:
    """The proof directory to verify. `sealed`: it was opened from a sealed file, signed by
    `signer_key_id` (`pinned`: the caller required that signer)."""

    path: str
    sealed: bool = False
    signer_key_id: str | None = None
    pinned: bool = False


def is_sealed_file(path: str | os.PathLike) -> bool:
    """True for a file that starts like a sealed proof (other files get the reader's message)."""
    if not os.path.isfile(path):
        return False
    from pol.crypto.seal import is_sealed  # needs `cryptography`; only for files
    return is_sealed(path)


@contextlib.contextmanager
def opened_proof(proof: str | os.PathLike, key: str | os.PathLike | None = None,
                 signer: str | os.PathLike | None = None,
                 ledger: str | os.PathLike | None = None) -> Iterator[ProofSource]:
    """`proof` as a directory to verify, for the duration of the `with` block.

    A directory (or any file that is not sealed) is given as is. A sealed file needs `key` (the
    verifier's encryption.key, else ConfigError, exit 2); `signer` (the prover's signing.pub)
    pins who must have signed it; with `ledger`, an old (superseded) or revoked sealed file is
    refused. Opening errors are pol.crypto errors (exit 1 invalid / 2 unusable). The opened
    directory is removed when the block ends."""
    if not is_sealed_file(proof):
        yield ProofSource(str(proof))
        return
    if not key:
        raise ConfigError(f"{proof} is a sealed proof: pass --key VERIFIER_KEY to open it")
    from pol.crypto import open_checked
    tmp = Path(tempfile.mkdtemp(prefix="pol-sealed-"))
    try:
        opened = open_checked(proof, key, tmp / "proof", signer, ledger=ledger)
        yield ProofSource(str(tmp / "proof"), sealed=True, signer_key_id=opened.signer_key_id,
                          pinned=signer is not None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def verify_sealed(proof: str | os.PathLike, options: Any = None, *, key: str | os.PathLike,
                  signer: str | os.PathLike | None = None,
                  ledger: str | os.PathLike | None = None, **kw: Any) -> Any:
    """Open the sealed proof file `proof` (see `opened_proof`), verify it with
    `pol.verifier.verify(path, options, **kw)`, and remove the opened copy; returns the Report.
    A proof directory is verified as is."""
    from pol.verifier import verify
    with opened_proof(proof, key, signer, ledger) as source:
        return verify(source.path, options, **kw)
