"""RFC 9180 HPKE, base mode, for DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-GCM.

Why this module exists: ``cryptography`` only ships HPKE (``hazmat.primitives.hpke``)
in recent releases, and only as a single-shot API without AAD, sequence numbers
or exporters.  ``pol`` declares ``cryptography>=44``, so we carry a small,
test-vector-checked implementation built from ``cryptography`` primitives
(X25519, HMAC-SHA256, AESGCM) and use the library's implementation when it is
present.  Both produce the same wire format (``enc || ciphertext``); the tests
check them against the RFC 9180 vectors and against each other.

Only what ``pol`` needs is implemented: mode_base (0x00), KEM 0x0020,
KDF 0x0001, AEAD 0x0001 (AES-128-GCM, for the RFC's A.1 vector) and
0x0002 (AES-256-GCM, what ``pol`` uses).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import HPKEError

try:  # cryptography >= 46 or so
    from cryptography.hazmat.primitives import hpke as _lib_hpke

    _LIB_SUITE = _lib_hpke.Suite(_lib_hpke.KEM.X25519, _lib_hpke.KDF.HKDF_SHA256, _lib_hpke.AEAD.AES_256_GCM)
except (ImportError, AttributeError):  # pragma: no cover - depends on the installed cryptography
    _LIB_SUITE = None

__all__ = [
    "KEM_X25519_HKDF_SHA256",
    "KDF_HKDF_SHA256",
    "AEAD_AES_128_GCM",
    "AEAD_AES_256_GCM",
    "MODE_BASE",
    "N_ENC",
    "HAVE_LIBRARY_HPKE",
    "Context",
    "setup_base_s",
    "setup_base_r",
    "seal_base",
    "open_base",
]

MODE_BASE = 0x00
KEM_X25519_HKDF_SHA256 = 0x0020
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_128_GCM = 0x0001
AEAD_AES_256_GCM = 0x0002

N_ENC = 32  # X25519 public key
_N_SECRET = 32
_N_H = 32
_N_N = 12
_N_T = 16
_NK = {AEAD_AES_128_GCM: 16, AEAD_AES_256_GCM: 32}
_VERSION_LABEL = b"HPKE-v1"
_KEM_SUITE_ID = b"KEM" + KEM_X25519_HKDF_SHA256.to_bytes(2, "big")

HAVE_LIBRARY_HPKE: bool = _LIB_SUITE is not None


def _suite_id(aead_id: int) -> bytes:
    return b"HPKE" + b"".join(i.to_bytes(2, "big") for i in (KEM_X25519_HKDF_SHA256, KDF_HKDF_SHA256, aead_id))


def _extract(salt: bytes, ikm: bytes) -> bytes:
    # HKDF-Extract; an empty salt equals HashLen zero bytes under HMAC's key padding.
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    if length > 255 * _N_H:
        raise ValueError("HKDF-Expand length too large")
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, _VERSION_LABEL + suite_id + label + ikm)


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled_info = length.to_bytes(2, "big") + _VERSION_LABEL + suite_id + label + info
    return _expand(prk, labeled_info, length)


def _raw_public(pk: X25519PublicKey) -> bytes:
    return pk.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _dh(sk: X25519PrivateKey, pk: X25519PublicKey) -> bytes:
    try:
        return sk.exchange(pk)
    except ValueError as exc:  # low-order point / all-zero shared secret
        raise HPKEError("invalid X25519 public key in HPKE encapsulation") from exc


def _extract_and_expand(dh: bytes, kem_context: bytes) -> bytes:
    eae_prk = _labeled_extract(_KEM_SUITE_ID, b"", b"eae_prk", dh)
    return _labeled_expand(_KEM_SUITE_ID, eae_prk, b"shared_secret", kem_context, _N_SECRET)


def _encap(pk_r: X25519PublicKey, sk_e: X25519PrivateKey | None) -> tuple[bytes, bytes]:
    sk_e = sk_e if sk_e is not None else X25519PrivateKey.generate()
    enc = _raw_public(sk_e.public_key())
    dh = _dh(sk_e, pk_r)
    return _extract_and_expand(dh, enc + _raw_public(pk_r)), enc


def _decap(enc: bytes, sk_r: X25519PrivateKey) -> bytes:
    if len(enc) != N_ENC:
        raise HPKEError("bad HPKE encapsulated key length")
    try:
        pk_e = X25519PublicKey.from_public_bytes(enc)
    except ValueError as exc:
        raise HPKEError("bad HPKE encapsulated key") from exc
    dh = _dh(sk_r, pk_e)
    return _extract_and_expand(dh, enc + _raw_public(sk_r.public_key()))


@dataclass
class Context:
    """An HPKE encryption context (RFC 9180 §5.2): key, base nonce, sequence number, exporter."""

    aead_id: int
    key: bytes
    base_nonce: bytes
    exporter_secret: bytes
    seq: int = 0
    _aead: AESGCM = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._aead = AESGCM(self.key)

    def _next_nonce(self) -> bytes:
        if self.seq >= (1 << (8 * _N_N)) - 1:
            raise HPKEError("HPKE message limit reached")
        nonce = bytes(a ^ b for a, b in zip(self.base_nonce, self.seq.to_bytes(_N_N, "big")))
        return nonce

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        """Encrypt the next message of this context."""
        ct = self._aead.encrypt(self._next_nonce(), plaintext, aad)
        self.seq += 1
        return ct

    def open(self, aad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt the next message; the sequence number only advances on success."""
        try:
            pt = self._aead.decrypt(self._next_nonce(), ciphertext, aad)
        except InvalidTag as exc:
            raise HPKEError("HPKE decryption failed") from exc
        self.seq += 1
        return pt

    def export(self, exporter_context: bytes, length: int) -> bytes:
        """Secret export interface (RFC 9180 §5.3)."""
        return _labeled_expand(_suite_id(self.aead_id), self.exporter_secret, b"sec", exporter_context, length)


def _key_schedule(aead_id: int, shared_secret: bytes, info: bytes) -> Context:
    if aead_id not in _NK:
        raise ValueError(f"unsupported HPKE AEAD id {aead_id:#06x}")
    sid = _suite_id(aead_id)
    psk_id_hash = _labeled_extract(sid, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(sid, b"", b"info_hash", info)
    ks_context = bytes([MODE_BASE]) + psk_id_hash + info_hash
    secret = _labeled_extract(sid, shared_secret, b"secret", b"")
    return Context(
        aead_id=aead_id,
        key=_labeled_expand(sid, secret, b"key", ks_context, _NK[aead_id]),
        base_nonce=_labeled_expand(sid, secret, b"base_nonce", ks_context, _N_N),
        exporter_secret=_labeled_expand(sid, secret, b"exp", ks_context, _N_H),
    )


def setup_base_s(
    pk_r: X25519PublicKey,
    info: bytes = b"",
    *,
    aead_id: int = AEAD_AES_256_GCM,
    ephemeral_key: X25519PrivateKey | None = None,
) -> tuple[bytes, Context]:
    """Sender setup; ``ephemeral_key`` exists only for known-answer tests."""
    shared_secret, enc = _encap(pk_r, ephemeral_key)
    return enc, _key_schedule(aead_id, shared_secret, info)


def setup_base_r(
    enc: bytes, sk_r: X25519PrivateKey, info: bytes = b"", *, aead_id: int = AEAD_AES_256_GCM
) -> Context:
    """Recipient setup."""
    return _key_schedule(aead_id, _decap(enc, sk_r), info)


def seal_base(
    pk_r: X25519PublicKey,
    plaintext: bytes,
    info: bytes = b"",
    aad: bytes = b"",
    *,
    backend: str = "auto",
) -> bytes:
    """Single-shot HPKE seal with AES-256-GCM; returns ``enc || ciphertext``.

    ``backend``: ``"auto"`` (library when available and ``aad`` is empty),
    ``"library"`` or ``"builtin"``.
    """
    if _use_library(backend, aad):
        return bytes(_LIB_SUITE.encrypt(plaintext, pk_r, info=info))  # type: ignore[union-attr]
    enc, ctx = setup_base_s(pk_r, info)
    return enc + ctx.seal(aad, plaintext)


def open_base(
    sk_r: X25519PrivateKey,
    data: bytes,
    info: bytes = b"",
    aad: bytes = b"",
    *,
    backend: str = "auto",
) -> bytes:
    """Single-shot HPKE open of ``enc || ciphertext``; raises :class:`HPKEError` on any failure."""
    if len(data) < N_ENC + _N_T:
        raise HPKEError("HPKE message too short")
    if _use_library(backend, aad):
        try:
            return bytes(_LIB_SUITE.decrypt(data, sk_r, info=info))  # type: ignore[union-attr]
        except Exception as exc:  # InvalidTag, ValueError (bad enc), ...: all mean "does not open"
            raise HPKEError("HPKE decryption failed") from exc
    ctx = setup_base_r(data[:N_ENC], sk_r, info)
    return ctx.open(aad, data[N_ENC:])


def _use_library(backend: str, aad: bytes) -> bool:
    if backend == "builtin":
        return False
    if backend == "library":
        if _LIB_SUITE is None:
            raise HPKEError("cryptography.hazmat.primitives.hpke is not available")
        if aad:
            raise ValueError("the library HPKE backend does not take AAD")
        return True
    if backend != "auto":
        raise ValueError(f"unknown HPKE backend {backend!r}")
    return _LIB_SUITE is not None and not aad
