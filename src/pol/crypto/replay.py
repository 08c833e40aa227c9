"""Opening a sealed proof against the ledger: reject replayed (old), unpublished or revoked seals.

``pol seal ... --ledger DB`` publishes a signed "proof" entry
``{"root_digest", "sealed_file_sha256"}``.  A prover who re-seals a proof (new
verifier key, fixed metadata, a mistake) publishes again; ``pol ledger revoke``
appends a signed "revoke" entry ``{"root_digest"}``.  :func:`open_checked`
opens a sealed file as :func:`pol.crypto.seal.open_sealed` does and, given a
ledger, also requires that

* the ledger verifies (hashes, signatures, chain);
* the file's SHA-256 is the **latest** "proof" publication (with a
  ``sealed_file_sha256``) for its root digest by the file's signer: an older
  publication is a replayed sealed proof, superseded by the newer one;
* no "revoke" entry by that signer for that root digest follows that publication.

Only entries signed by the sealed file's own signer count, so nobody else can
supersede or revoke a prover's proof.  Failures are :class:`ReplayedSeal` /
:class:`RevokedSeal` / :class:`LedgerInvalid` (exit 1); a missing ledger is a
:class:`LedgerError` (exit 2).  Nothing is left at ``dest`` when a check fails.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from pol.util import sha256_file

from ._canon import HEX64
from .errors import LedgerInvalid, LedgerUnusable, ReplayedSeal, RevokedSeal, SealUnreadable
from .keys import key_id, load_encryption_key, load_verify_key, raw_public_bytes
from .ledger import Entry, Ledger
from .seal import OpenedProof, open_sealed

__all__ = ["CheckedProof", "open_checked", "check_publication", "sealed_file_sha256", "revoke"]

PathLike = Union[str, "os.PathLike[str]"]
PUBLICATION_KIND = "proof"
REVOKE_KIND = "revoke"


@dataclass(frozen=True)
class CheckedProof(OpenedProof):
    """An :class:`OpenedProof` plus the ledger publication it was matched with (if any)."""

    sealed_sha256: str = ""
    publication: Entry | None = None


def sealed_file_sha256(path: PathLike) -> str:
    try:
        return sha256_file(path)[0]
    except OSError as exc:
        raise SealUnreadable(f"cannot read {path}: {exc.strerror or exc}") from exc


def _payload(e: Entry) -> dict[str, Any]:
    try:
        p = e.payload
    except ValueError:
        return {}
    return p if isinstance(p, dict) else {}


def _open_ledger(ledger: PathLike) -> Ledger:
    if not Path(ledger).is_file():
        raise LedgerUnusable(f"ledger not found: {ledger}")
    return Ledger(ledger, create=False)


def check_publication(ledger: PathLike, root_digest: str, signer: Ed25519PublicKey, sealed_sha256: str) -> Entry:
    """The ledger entry publishing exactly this sealed file, if it is the signer's latest and
    not revoked; otherwise raise (see the module docstring)."""
    pub_hex = raw_public_bytes(signer).hex()
    kid = key_id(signer)
    short = root_digest[:16] + "…"
    with _open_ledger(ledger) as led:
        rep = led.verify()
        if not rep.ok:
            raise LedgerInvalid(
                f"ledger {ledger} does not verify ({len(rep.problems)} problem(s), first: {rep.problems[0]})"
            )
        pubs = [
            e
            for e in led.entries(PUBLICATION_KIND)
            if e.signer_public_key == pub_hex
            and _payload(e).get("root_digest") == root_digest
            and isinstance(_payload(e).get("sealed_file_sha256"), str)
        ]
        revokes = [
            e
            for e in led.entries(REVOKE_KIND)
            if e.signer_public_key == pub_hex and _payload(e).get("root_digest") == root_digest
        ]
    if not pubs:
        raise ReplayedSeal(
            f"sealed proof not published: ledger {ledger} has no sealed publication of root digest {short} by key {kid}"
        )
    latest = pubs[-1]
    mine = [e for e in pubs if _payload(e)["sealed_file_sha256"] == sealed_sha256]
    if not mine:
        raise ReplayedSeal(
            f"sealed file (sha256 {sealed_sha256[:16]}…) is not the one published for root digest {short} by key "
            f"{kid} (latest publication: ledger seq {latest.seq})"
        )
    if mine[-1].seq != latest.seq:
        raise ReplayedSeal(
            f"a replayed (old) sealed proof: this file was published at ledger seq {mine[-1].seq} and superseded "
            f"by seq {latest.seq} ({latest.timestamp}) for root digest {short}"
        )
    later = [r for r in revokes if r.seq > latest.seq]
    if later:
        r = later[-1]
        reason = _payload(r).get("reason")
        raise RevokedSeal(
            f"proof {short} was revoked by its signer {kid} at ledger seq {r.seq} ({r.timestamp})"
            + (f": {reason}" if isinstance(reason, str) and reason else "")
        )
    return latest


def open_checked(
    path: PathLike,
    key: X25519PrivateKey | PathLike,
    dest: PathLike,
    expected_signer: Ed25519PublicKey | PathLike | None = None,
    ledger: PathLike | None = None,
    *,
    passphrase: bytes | None = None,
    **open_kwargs: Any,
) -> CheckedProof:
    """Open a sealed proof (:func:`open_sealed`) and, with ``ledger``, refuse a replayed (old,
    superseded), unpublished or revoked sealed file.

    ``key``: the verifier's X25519 private key or its key file (``passphrase`` decrypts it);
    ``expected_signer``: the prover's Ed25519 public key or signing.pub file, or None.
    Raises :class:`pol.crypto.CryptoError` subclasses (``exit_code`` 1 invalid / 2 unusable);
    nothing is left at ``dest`` on failure.
    """
    if not isinstance(key, X25519PrivateKey):
        key = load_encryption_key(key, passphrase)
    if expected_signer is not None and not isinstance(expected_signer, Ed25519PublicKey):
        expected_signer = load_verify_key(expected_signer)
    if ledger is not None and not Path(ledger).is_file():
        raise LedgerUnusable(f"ledger not found: {ledger}")
    sha = sealed_file_sha256(path) if ledger is not None else ""
    opened = open_sealed(path, key, dest, expected_signer, **open_kwargs)
    publication = None
    if ledger is not None:
        try:
            if HEX64.fullmatch(opened.root_digest) is None:  # pragma: no cover - header validated
                raise ReplayedSeal("sealed header has no valid root digest")
            publication = check_publication(ledger, opened.root_digest, opened.signer_public_key, sha)
            if sealed_file_sha256(path) != sha:
                raise ReplayedSeal(f"{path} changed while it was being opened")
        except BaseException:
            shutil.rmtree(opened.path, ignore_errors=True)
            raise
    fields = {f: getattr(opened, f) for f in OpenedProof.__dataclass_fields__}
    return CheckedProof(**fields, sealed_sha256=sha, publication=publication)


def revoke(ledger: PathLike, root_digest: str, signing_key: Any, reason: str | None = None) -> Entry:
    """Append a signed "revoke" entry for ``root_digest``: the signer's sealed publications of it
    (up to now) are no longer accepted by :func:`open_checked`."""
    if not isinstance(root_digest, str) or HEX64.fullmatch(root_digest) is None:
        raise LedgerUnusable(f"--root-digest {root_digest!r} is not 64 lowercase hex characters")
    pub_hex = raw_public_bytes(signing_key.public_key()).hex()
    with _open_ledger(ledger) as led:
        published = any(
            e.signer_public_key == pub_hex and _payload(e).get("root_digest") == root_digest
            for e in led.entries(PUBLICATION_KIND)
        )
        if not published:
            raise LedgerUnusable(
                f"key {key_id(signing_key.public_key())} has published no proof with root digest "
                f"{root_digest[:16]}… on {ledger}: nothing to revoke"
            )
        payload: dict[str, Any] = {"root_digest": root_digest}
        if reason:
            payload["reason"] = reason
        return led.append(REVOKE_KIND, payload, signing_key)
