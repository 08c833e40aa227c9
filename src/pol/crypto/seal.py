"""Seal a proof for one verifier: sign, encrypt, stream; and open it again.

A sealed file is the packed proof (:mod:`pol.crypto.archive`) encrypted to the
verifier's X25519 key, signed by the prover's Ed25519 key.  Layout (big-endian)::

    magic            8   b"POLSEAL\\0"
    version          u16 (1)
    header_len       u32
    header           canonical JSON (see SealHeader)
    enc              32  HPKE encapsulated key
    wrapped_key      48  HPKE(AES-256-GCM) ciphertext of the 32-byte data key
    signature        64  Ed25519 over SIG_CONTEXT || all bytes above
    chunks           repeated: flag u8 (0 more / 1 final) | pt_len u32 | AES-256-GCM(pt) (pt_len + 16)

Why this shape:

* The signature covers the header *and* the wrapped data key, so it is checked
  before any decryption and nobody can swap in another payload under the
  prover's signature (the data key decides what decrypts).
* HPKE (RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
  AES-256-GCM) wraps a random data key with ``info`` bound to the header.
* The stream key and nonce base are derived with HKDF from the data key,
  salted with SHA-256 of the signed prefix, so every chunk is bound to this
  exact header.  Chunk ``i`` uses nonce ``base XOR i`` and AAD
  ``CHUNK_CONTEXT || i || flag``: reordering, dropping, duplicating or
  appending chunks, or cutting the file, fails authentication or is seen as
  truncation.  Memory use is one chunk, whatever the proof's size.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import struct
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import archive as _archive
from . import hpke as _hpke
from pol.util import AtomicFile, canonical_json, loads_strict

from ._canon import HEX32, HEX64, parse_utc_timestamp, utc_timestamp
from .errors import (
    ArchiveError,
    BadSignature,
    DestinationError,
    DestinationExists,
    HPKEError,
    InvalidProofError,
    MalformedSeal,
    NotSealedError,
    RootDigestMismatch,
    SealedContentError,
    SealUnreadable,
    SignerMismatch,
    TamperedCiphertext,
    TruncatedSeal,
    UnsupportedVersion,
    WrongRecipient,
)
from .keys import key_id, raw_public_bytes, verify_key_from_raw

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "DEFAULT_CHUNK_SIZE",
    "SealHeader",
    "SealResult",
    "OpenedProof",
    "seal",
    "open_sealed",
    "read_header",
    "is_sealed",
    "manifest_root_digest",
]

MAGIC = b"POLSEAL\x00"
FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 1024 * 1024
MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_MANIFEST_BYTES = 64 * 1024 * 1024

SIG_CONTEXT = b"pol-seal/v1 signature\x00"
HPKE_INFO_CONTEXT = b"pol-seal/v1 data-key\x00"
STREAM_KDF_INFO = b"pol-seal/v1 stream\x00"
CHUNK_CONTEXT = b"pol-seal/v1 chunk\x00"

_PREFIX = struct.Struct(">8sHI")
_CHUNK_HDR = struct.Struct(">BI")
_U64 = struct.Struct(">Q")
_TAG = 16
_ENC = _hpke.N_ENC
_WRAPPED = 32 + _TAG
_SIG = 64
_FLAG_MORE = 0
_FLAG_FINAL = 1
_HPKE_SUITE = [_hpke.KEM_X25519_HKDF_SHA256, _hpke.KDF_HKDF_SHA256, _hpke.AEAD_AES_256_GCM]
_HEADER_KEYS = {
    "format",
    "version",
    "hpke_suite",
    "archive",
    "chunk_size",
    "recipient_key_id",
    "sender_key_id",
    "sender_public_key",
    "root_digest",
    "created",
    "nonce",
}

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class SealHeader:
    """The signed, cleartext header of a sealed proof."""

    version: int
    chunk_size: int
    recipient_key_id: str
    sender_key_id: str
    sender_public_key: str  # raw Ed25519 key, hex
    root_digest: str
    created: str  # UTC ISO-8601 with microseconds and 'Z'
    nonce: str  # 16 random bytes, hex: makes every header unique

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "pol-sealed-proof",
            "version": self.version,
            "hpke_suite": list(_HPKE_SUITE),
            "archive": _archive.MAGIC.decode("ascii").strip(),
            "chunk_size": self.chunk_size,
            "recipient_key_id": self.recipient_key_id,
            "sender_key_id": self.sender_key_id,
            "sender_public_key": self.sender_public_key,
            "root_digest": self.root_digest,
            "created": self.created,
            "nonce": self.nonce,
        }

    @classmethod
    def from_json(cls, obj: Any, version: int) -> "SealHeader":
        if not isinstance(obj, dict) or set(obj) != _HEADER_KEYS:
            raise MalformedSeal("sealed header has missing or unknown fields")
        if obj["format"] != "pol-sealed-proof" or obj["archive"] != _archive.MAGIC.decode("ascii").strip():
            raise MalformedSeal("sealed header names another format")
        if obj["version"] != version or type(obj["version"]) is not int:
            raise MalformedSeal("header version differs from the file's version field")
        if obj["hpke_suite"] != _HPKE_SUITE:
            raise UnsupportedVersion(f"unsupported HPKE suite {obj['hpke_suite']!r}")
        cs = obj["chunk_size"]
        if type(cs) is not int or not MIN_CHUNK_SIZE <= cs <= MAX_CHUNK_SIZE:
            raise MalformedSeal("chunk size out of range")
        for k, rx in (
            ("recipient_key_id", HEX32),
            ("sender_key_id", HEX32),
            ("sender_public_key", HEX64),
            ("root_digest", HEX64),
            ("nonce", HEX32),
        ):
            if not isinstance(obj[k], str) or rx.fullmatch(obj[k]) is None:
                raise MalformedSeal(f"header field {k} is not lowercase hex of the right length")
        try:
            parse_utc_timestamp(obj["created"])
        except ValueError as exc:
            raise MalformedSeal("header field created is not a UTC timestamp") from exc
        if hashlib.sha256(bytes.fromhex(obj["sender_public_key"])).digest()[:16].hex() != obj["sender_key_id"]:
            raise MalformedSeal("sender_key_id does not match sender_public_key")
        return cls(
            version=version,
            chunk_size=cs,
            recipient_key_id=obj["recipient_key_id"],
            sender_key_id=obj["sender_key_id"],
            sender_public_key=obj["sender_public_key"],
            root_digest=obj["root_digest"],
            created=obj["created"],
            nonce=obj["nonce"],
        )


@dataclass(frozen=True)
class SealResult:
    """What :func:`seal` produced."""

    path: Path
    root_digest: str
    sealed_sha256: str
    size: int
    entries: int
    data_bytes: int
    created: str
    sender_key_id: str
    recipient_key_id: str


@dataclass(frozen=True)
class OpenedProof:
    """What :func:`open_sealed` verified and extracted."""

    path: Path
    signer_key_id: str
    signer_public_key: Ed25519PublicKey = field(repr=False)
    recipient_key_id: str
    root_digest: str
    created: str
    entries: int
    data_bytes: int


# ------------------------------------------------------------------ helpers
def manifest_root_digest(proof_dir: PathLike) -> str:
    """The root digest of ``proof_dir/manifest.json``, recomputed from the manifest's content
    (``pol.proof.format.root_digest``); the manifest's own ``root_digest`` field must be 64
    lowercase hex and equal to it (a field that does not match the content is refused, so a
    sealed proof is never reported under a digest its manifest does not have)."""
    path = Path(proof_dir) / "manifest.json"
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size > MAX_MANIFEST_BYTES:
                raise InvalidProofError(f"{path} is too large")
            parts, got = [], 0
            while got <= MAX_MANIFEST_BYTES:  # read(n) would allocate n bytes up front
                piece = fh.read(1024 * 1024)
                if not piece:
                    break
                parts.append(piece)
                got += len(piece)
            data = b"".join(parts)
    except FileNotFoundError as exc:
        raise InvalidProofError(f"no manifest.json in {proof_dir}") from exc
    except OSError as exc:
        raise InvalidProofError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidProofError(f"{path} is too large")
    obj = loads_strict(data, str(path), max_bytes=None, error=InvalidProofError)
    digest = obj.get("root_digest") if isinstance(obj, dict) else None
    if not isinstance(digest, str) or HEX64.fullmatch(digest) is None:
        raise InvalidProofError(f"{path} has no valid root_digest (64 lowercase hex chars)")
    from pol.proof.format import root_digest as _recompute  # the one definition of the digest

    try:
        actual = _recompute(obj)
    except (TypeError, ValueError) as exc:
        raise InvalidProofError(f"{path}: cannot compute its root digest: {exc}") from exc
    if not hmac.compare_digest(actual.encode(), digest.encode()):
        raise InvalidProofError(
            f"{path} was modified: its content hashes to root digest {actual}, not to its root_digest field {digest}"
        )
    return actual


def _stream_keys(data_key: bytes, signed_prefix: bytes) -> tuple[AESGCM, bytes]:
    okm = HKDF(
        algorithm=hashes.SHA256(), length=32 + 12, salt=hashlib.sha256(signed_prefix).digest(), info=STREAM_KDF_INFO
    ).derive(data_key)
    return AESGCM(okm[:32]), okm[32:]


def _nonce(base: bytes, counter: int) -> bytes:
    return (int.from_bytes(base, "big") ^ counter).to_bytes(12, "big")


def _chunk_aad(counter: int, flag: int) -> bytes:
    return CHUNK_CONTEXT + _U64.pack(counter) + bytes([flag])


class _HashingWriter:
    """Forward writes to a file while hashing and counting them."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._fh.write(data)
        self.sha256.update(data)
        self.size += len(data)


class _EncryptingWriter:
    """File-like sink: fills one chunk-sized buffer, emits authenticated chunks.

    A full buffer is only emitted once more data arrives, so the final chunk
    is never empty unless the whole stream is.
    """

    def __init__(self, out: _HashingWriter, aead: AESGCM, nonce_base: bytes, chunk_size: int) -> None:
        self._out, self._aead, self._base, self._cs = out, aead, nonce_base, chunk_size
        self._buf = bytearray(chunk_size)
        self._fill = 0
        self._counter = 0

    def write(self, data: bytes | memoryview) -> None:
        mv = memoryview(data).cast("B")
        cs = self._cs
        while len(mv):
            if self._fill == cs:
                self._emit(self._buf, _FLAG_MORE)
                self._fill = 0
            n = min(cs - self._fill, len(mv))
            self._buf[self._fill : self._fill + n] = mv[:n]
            self._fill += n
            mv = mv[n:]

    def close(self) -> None:
        self._emit(memoryview(self._buf)[: self._fill], _FLAG_FINAL)
        self._fill = 0

    def _emit(self, pt: bytes | bytearray | memoryview, flag: int) -> None:
        ct = self._aead.encrypt(_nonce(self._base, self._counter), pt, _chunk_aad(self._counter, flag))
        self._out.write(_CHUNK_HDR.pack(flag, len(pt)))
        self._out.write(ct)
        self._counter += 1


class _DecryptingReader:
    """File-like source: yields plaintext only after each chunk authenticated."""

    def __init__(self, fh: BinaryIO, aead: AESGCM, nonce_base: bytes, chunk_size: int) -> None:
        self._fh, self._aead, self._base, self._cs = fh, aead, nonce_base, chunk_size
        self._buf = memoryview(b"")
        self._pos = 0
        self._counter = 0
        self._final = False
        self._eof_checked = False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            raise ValueError("_DecryptingReader.read needs a size")
        while self._pos >= len(self._buf):
            if self._final:
                self._check_eof()
                return b""
            self._next_chunk()
        out = self._buf[self._pos : self._pos + n]
        self._pos += len(out)
        return bytes(out)

    def _read_exact(self, n: int, what: str) -> bytes:
        data = self._fh.read(n)
        if len(data) != n:
            raise TruncatedSeal(f"sealed file is truncated ({what} of chunk {self._counter} incomplete)")
        return data

    def _next_chunk(self) -> None:
        hdr = self._fh.read(_CHUNK_HDR.size)
        if not hdr:
            raise TruncatedSeal(f"sealed file is truncated (ends after chunk {self._counter - 1}, before the final chunk)")
        if len(hdr) != _CHUNK_HDR.size:
            raise TruncatedSeal(f"sealed file is truncated (inside the header of chunk {self._counter})")
        flag, length = _CHUNK_HDR.unpack(hdr)
        if flag not in (_FLAG_MORE, _FLAG_FINAL):
            raise TamperedCiphertext(f"chunk {self._counter}: invalid flag byte")
        if length > self._cs or (flag == _FLAG_MORE and length != self._cs):
            raise TamperedCiphertext(f"chunk {self._counter}: invalid length field")
        ct = self._read_exact(length + _TAG, "ciphertext")
        try:
            pt = self._aead.decrypt(_nonce(self._base, self._counter), ct, _chunk_aad(self._counter, flag))
        except InvalidTag as exc:
            raise TamperedCiphertext(
                f"chunk {self._counter} failed authentication (modified, reordered, dropped or duplicated data)"
            ) from exc
        self._counter += 1
        self._final = flag == _FLAG_FINAL
        self._buf = memoryview(pt)
        self._pos = 0

    def _check_eof(self) -> None:
        if not self._eof_checked:
            if self._fh.read(1):
                raise TamperedCiphertext("data after the final chunk")
            self._eof_checked = True

    def ensure_complete(self) -> None:
        """Raise unless the final chunk was fully consumed and nothing follows it."""
        if not self._final:
            raise TruncatedSeal("the archive ended before the final chunk")
        if self._pos < len(self._buf):
            raise SealedContentError("decrypted data continues after the archive's end")
        self._check_eof()


# --------------------------------------------------------------------- seal
def seal(
    proof_dir: PathLike,
    recipient_pub: X25519PublicKey,
    signing_key: Ed25519PrivateKey,
    out_path: PathLike,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    root_digest: str | None = None,
    created: datetime | None = None,
    overwrite: bool = False,
) -> SealResult:
    """Pack, sign and encrypt ``proof_dir`` for ``recipient_pub`` into ``out_path``.

    ``root_digest`` defaults to the manifest's field; if given it must agree
    with it (the verifier compares the two).  The file is written under a
    temporary name and renamed at the end, so ``out_path`` is either complete
    or absent.
    """
    if not isinstance(recipient_pub, X25519PublicKey):
        raise TypeError("recipient_pub must be an X25519PublicKey")
    if not isinstance(signing_key, Ed25519PrivateKey):
        raise TypeError("signing_key must be an Ed25519PrivateKey")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be within [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]")
    manifest_digest = manifest_root_digest(proof_dir)
    if root_digest is not None and root_digest != manifest_digest:
        raise InvalidProofError("root_digest argument differs from the manifest's root_digest")
    out = Path(out_path)
    if not overwrite and os.path.lexists(out):
        raise DestinationExists(f"output file already exists: {out}")

    sender_pub = signing_key.public_key()
    header = SealHeader(
        version=FORMAT_VERSION,
        chunk_size=chunk_size,
        recipient_key_id=key_id(recipient_pub),
        sender_key_id=key_id(sender_pub),
        sender_public_key=raw_public_bytes(sender_pub).hex(),
        root_digest=manifest_digest,
        created=utc_timestamp(created),
        nonce=secrets.token_hex(16),
    )
    header_bytes = canonical_json(header.to_json())
    head = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)) + header_bytes
    data_key = secrets.token_bytes(32)
    wrapped = _hpke.seal_base(recipient_pub, data_key, info=HPKE_INFO_CONTEXT + hashlib.sha256(head).digest())
    assert len(wrapped) == _ENC + _WRAPPED
    signed_prefix = head + wrapped
    signature = signing_key.sign(SIG_CONTEXT + signed_prefix)
    aead, nonce_base = _stream_keys(data_key, signed_prefix)

    try:
        partial = AtomicFile(out, durable=True, mode=0o644, overwrite=overwrite)
    except OSError as exc:
        raise DestinationError(f"cannot create {out}: {exc.strerror or exc}") from exc
    try:
        with partial as fh:
            sink = _HashingWriter(fh)
            sink.write(signed_prefix + signature)
            writer = _EncryptingWriter(sink, aead, nonce_base, chunk_size)
            stats = _archive.pack(proof_dir, writer)
            writer.close()
    except FileExistsError as exc:
        raise DestinationExists(f"output file already exists: {out}") from exc
    return SealResult(
        path=out,
        root_digest=manifest_digest,
        sealed_sha256=sink.sha256.hexdigest(),
        size=sink.size,
        entries=stats.entries,
        data_bytes=stats.data_bytes,
        created=header.created,
        sender_key_id=header.sender_key_id,
        recipient_key_id=header.recipient_key_id,
    )


# --------------------------------------------------------------------- open
@dataclass(frozen=True)
class _Parsed:
    header: SealHeader
    signed_prefix: bytes
    head: bytes
    wrapped: bytes
    signature: bytes


def _read_exact(fh: BinaryIO, n: int, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise TruncatedSeal(f"sealed file is truncated (inside the {what})")
    return data


def _parse_prefix(fh: BinaryIO) -> _Parsed:
    first = fh.read(_PREFIX.size)
    if len(first) < len(MAGIC):
        if first and MAGIC.startswith(first):
            raise TruncatedSeal("sealed file is truncated (inside the magic)")
        raise NotSealedError("not a sealed pol proof (empty or bad magic)")
    if first[: len(MAGIC)] != MAGIC:
        raise NotSealedError("not a sealed pol proof (bad magic)")
    if len(first) != _PREFIX.size:
        raise TruncatedSeal("sealed file is truncated (inside the fixed header)")
    _, version, header_len = _PREFIX.unpack(first)
    if version != FORMAT_VERSION:
        raise UnsupportedVersion(f"unsupported sealed-file version {version} (this code reads {FORMAT_VERSION})")
    if not 2 <= header_len <= MAX_HEADER_BYTES:
        raise MalformedSeal(f"header length {header_len} out of range")
    header_bytes = _read_exact(fh, header_len, "header")
    try:
        obj = loads_strict(header_bytes, "sealed header", max_bytes=None, error=ValueError)
    except ValueError as exc:
        raise MalformedSeal("sealed header is not valid JSON") from exc
    try:
        canonical = canonical_json(obj) == header_bytes
    except ValueError:
        canonical = False
    if not canonical:
        raise MalformedSeal("sealed header is not in canonical form")
    header = SealHeader.from_json(obj, version)
    wrapped = _read_exact(fh, _ENC + _WRAPPED, "wrapped key")
    signature = _read_exact(fh, _SIG, "signature")
    head = first + header_bytes
    return _Parsed(header=header, signed_prefix=head + wrapped, head=head, wrapped=wrapped, signature=signature)


def read_header(path: PathLike) -> SealHeader:
    """Parse a sealed file's header WITHOUT verifying its signature (for display/routing only)."""
    try:
        with open(path, "rb") as fh:
            return _parse_prefix(fh).header
    except OSError as exc:
        raise SealUnreadable(f"cannot read {path}: {exc.strerror or exc}") from exc


def is_sealed(path: PathLike) -> bool:
    """True if ``path`` is a readable file starting with the sealed-proof magic."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def open_sealed(
    path: PathLike,
    recipient_key: X25519PrivateKey,
    dest_dir: PathLike,
    expected_signer: Ed25519PublicKey | None = None,
    *,
    max_total_bytes: int = _archive.DEFAULT_MAX_TOTAL_BYTES,
    max_entry_bytes: int = _archive.DEFAULT_MAX_ENTRY_BYTES,
    max_entries: int = _archive.DEFAULT_MAX_ENTRIES,
    compute_root_digest: Callable[[Path], str] | None = None,
) -> OpenedProof:
    # long: opening an untrusted sealed file: each check gates the next read, in order
    """Verify, decrypt and unpack a sealed proof into ``dest_dir`` (which must not exist).

    Order: parse header → verify the prover's signature (and, if
    ``expected_signer`` is given, that it is that key) → check the file is
    for ``recipient_key`` → unwrap the data key → decrypt/unpack chunk by
    chunk → compare the root digest (``compute_root_digest(dir)``, default:
    the unpacked manifest's ``root_digest`` field) with the signed header.
    Nothing is left at ``dest_dir`` unless every step succeeded.

    Without ``expected_signer`` the signature only proves integrity; check
    ``result.signer_key_id`` against a key you trust.
    """
    if not isinstance(recipient_key, X25519PrivateKey):
        raise TypeError("recipient_key must be an X25519PrivateKey")
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise SealUnreadable(f"cannot read {path}: {exc.strerror or exc}") from exc
    with fh:
        parsed = _parse_prefix(fh)
        header = parsed.header
        signer = verify_key_from_raw(bytes.fromhex(header.sender_public_key))
        try:
            signer.verify(parsed.signature, SIG_CONTEXT + parsed.signed_prefix)
        except InvalidSignature as exc:
            raise BadSignature("the prover's signature over the sealed header does not verify") from exc
        if expected_signer is not None and key_id(expected_signer) != header.sender_key_id:
            raise SignerMismatch(
                f"signed by key {header.sender_key_id}, expected {key_id(expected_signer)}"
            )
        my_id = key_id(recipient_key.public_key())
        if my_id != header.recipient_key_id:
            raise WrongRecipient(f"sealed for key {header.recipient_key_id}, but the given key is {my_id}")
        try:
            data_key = _hpke.open_base(
                recipient_key, parsed.wrapped, info=HPKE_INFO_CONTEXT + hashlib.sha256(parsed.head).digest()
            )
        except HPKEError as exc:
            raise TamperedCiphertext("cannot unwrap the data key") from exc
        if len(data_key) != 32:
            raise TamperedCiphertext("unwrapped data key has the wrong length")
        aead, nonce_base = _stream_keys(data_key, parsed.signed_prefix)
        reader = _DecryptingReader(fh, aead, nonce_base, header.chunk_size)

        def check(tmp: Path) -> None:
            reader.ensure_complete()
            if compute_root_digest is not None:
                actual = compute_root_digest(tmp)
            else:
                try:
                    actual = manifest_root_digest(tmp)
                except InvalidProofError as exc:
                    raise SealedContentError(f"sealed proof has no usable manifest: {exc}") from exc
            if not hmac.compare_digest(actual.encode(), header.root_digest.encode()):
                raise RootDigestMismatch(
                    f"root digest of the unpacked proof ({actual}) differs from the signed header ({header.root_digest})"
                )

        try:
            stats = _archive.unpack(
                reader,
                dest_dir,
                max_total_bytes=max_total_bytes,
                max_entry_bytes=max_entry_bytes,
                max_entries=max_entries,
                check=check,
            )
        except DestinationError:
            raise
        except ArchiveError as exc:
            raise SealedContentError(f"sealed payload is not a valid proof archive: {exc}") from exc
    return OpenedProof(
        path=Path(dest_dir),
        signer_key_id=header.sender_key_id,
        signer_public_key=signer,
        recipient_key_id=header.recipient_key_id,
        root_digest=header.root_digest,
        created=header.created,
        entries=stats.entries,
        data_bytes=stats.data_bytes,
    )
