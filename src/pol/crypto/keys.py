"""A party's long-term keys: Ed25519 for signing, X25519 for receiving sealed proofs.

Keys live as PEM files (PKCS#8 private keys, optionally passphrase-encrypted;
SubjectPublicKeyInfo public keys) so they interoperate with OpenSSL tooling.
Separate signing and encryption keys avoid using one key for two algorithms.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from pol.util import atomic_write

from .errors import (
    BadKeyFile,
    KeyFileExists,
    KeyFileNotFound,
    PassphraseError,
    PassphraseRequired,
    WrongKeyType,
    WrongPassphrase,
)

__all__ = [
    "SIGNING_KEY_FILE",
    "SIGNING_PUB_FILE",
    "ENCRYPTION_KEY_FILE",
    "ENCRYPTION_PUB_FILE",
    "KeyPaths",
    "generate_keys",
    "load_signing_key",
    "load_signing_key_env",
    "passphrase_from_env",
    "load_verify_key",
    "load_encryption_key",
    "load_encryption_pub",
    "key_id",
    "raw_public_bytes",
    "verify_key_from_raw",
]

SIGNING_KEY_FILE = "signing.key"
SIGNING_PUB_FILE = "signing.pub"
ENCRYPTION_KEY_FILE = "encryption.key"
ENCRYPTION_PUB_FILE = "encryption.pub"

PublicKey = Union[Ed25519PublicKey, X25519PublicKey]
PathLike = Union[str, "os.PathLike[str]"]

_MAX_KEY_FILE_BYTES = 64 * 1024  # a PEM key is < 1 KiB; refuse to slurp large files


@dataclass(frozen=True)
class KeyPaths:
    """Where :func:`generate_keys` wrote the four files."""

    signing_key: Path
    signing_pub: Path
    encryption_key: Path
    encryption_pub: Path


def raw_public_bytes(public_key: PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519/X25519 public key."""
    if not isinstance(public_key, (Ed25519PublicKey, X25519PublicKey)):
        raise WrongKeyType(f"expected an Ed25519 or X25519 public key, got {type(public_key).__name__}")
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: PublicKey) -> str:
    """Short stable identifier: hex of the first 16 bytes of SHA-256(raw public key)."""
    return hashlib.sha256(raw_public_bytes(public_key)).digest()[:16].hex()


def verify_key_from_raw(raw: bytes) -> Ed25519PublicKey:
    """Rebuild an Ed25519 public key from 32 raw bytes (as stored in headers and the ledger)."""
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise BadKeyFile("invalid raw Ed25519 public key") from exc


def generate_keys(out_dir: PathLike, passphrase: bytes | None = None, force: bool = False) -> KeyPaths:
    """Create ``signing.key/.pub`` (Ed25519) and ``encryption.key/.pub`` (X25519) in ``out_dir``.

    Private keys are written 0600 (optionally encrypted with ``passphrase``);
    existing files are never overwritten unless ``force``.  Each file is written
    to a temporary name and renamed so a crash never leaves a half-written key.
    """
    out = Path(out_dir)
    paths = KeyPaths(
        signing_key=out / SIGNING_KEY_FILE,
        signing_pub=out / SIGNING_PUB_FILE,
        encryption_key=out / ENCRYPTION_KEY_FILE,
        encryption_pub=out / ENCRYPTION_PUB_FILE,
    )
    all_paths = [paths.signing_key, paths.signing_pub, paths.encryption_key, paths.encryption_pub]
    if not force:
        existing = [str(p) for p in all_paths if os.path.lexists(p)]
        if existing:
            raise KeyFileExists("refusing to overwrite existing key file(s): " + ", ".join(existing))
    if passphrase is not None and not isinstance(passphrase, bytes):
        raise TypeError("passphrase must be bytes")
    if passphrase == b"":
        raise PassphraseRequired("empty passphrase; pass None for an unencrypted key")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)

    enc_alg: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    sk = Ed25519PrivateKey.generate()
    xk = X25519PrivateKey.generate()
    contents = [
        (paths.signing_key, _private_pem(sk, enc_alg), 0o600),
        (paths.signing_pub, _public_pem(sk.public_key()), 0o644),
        (paths.encryption_key, _private_pem(xk, enc_alg), 0o600),
        (paths.encryption_pub, _public_pem(xk.public_key()), 0o644),
    ]
    for path, data, mode in contents:
        _write_atomic(path, data, mode, overwrite=force)
    return paths


def _private_pem(key: Ed25519PrivateKey | X25519PrivateKey, enc: serialization.KeySerializationEncryption) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _write_atomic(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    try:
        atomic_write(path, data, durable=True, mode=mode, overwrite=overwrite)
    except FileExistsError as exc:
        raise KeyFileExists(f"refusing to overwrite existing key file: {path}") from exc


def _read_key_file(path: PathLike) -> bytes:
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            data = fh.read(_MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError as exc:
        raise KeyFileNotFound(f"key file not found: {p}") from exc
    except IsADirectoryError as exc:
        raise KeyFileNotFound(f"key path is a directory: {p}") from exc
    except OSError as exc:
        raise KeyFileNotFound(f"cannot read key file {p}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise BadKeyFile(f"{p}: too large to be a PEM key")
    if b"-----BEGIN " not in data:
        raise BadKeyFile(f"{p}: not a PEM file")
    return data


def _load_private(path: PathLike, passphrase: bytes | None) -> object:
    data = _read_key_file(path)
    if b"PRIVATE KEY-----" not in data:
        raise WrongKeyType(f"{path}: expected a private key, found a public key or other PEM")
    try:
        return serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError as exc:
        # cryptography: encrypted key without password, or password for a plain key
        if passphrase:
            raise PassphraseError(f"{path}: key is not encrypted but a passphrase was given") from exc
        raise PassphraseRequired(
            f"{path}: key is encrypted; a passphrase is required (pass --passphrase-env VAR)"
        ) from exc
    except ValueError as exc:
        if b"ENCRYPTED PRIVATE KEY" in data:
            raise WrongPassphrase(f"{path}: wrong passphrase (or corrupt encrypted key)") from exc
        raise BadKeyFile(f"{path}: malformed private key") from exc
    except Exception as exc:  # unsupported algorithm etc.
        raise BadKeyFile(f"{path}: cannot load private key ({type(exc).__name__})") from exc


def _load_public(path: PathLike) -> object:
    data = _read_key_file(path)
    if b"PRIVATE KEY-----" in data:
        raise WrongKeyType(f"{path}: expected a public key, found a private key")
    try:
        return serialization.load_pem_public_key(data)
    except Exception as exc:
        raise BadKeyFile(f"{path}: malformed public key") from exc


def load_signing_key(path: PathLike, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """Load an Ed25519 private key (the prover's or any signer's)."""
    key = _load_private(path, passphrase)
    if not isinstance(key, Ed25519PrivateKey):
        raise WrongKeyType(f"{path}: expected an Ed25519 signing key, got {_kind(key)}")
    return key


def passphrase_from_env(env_var: str | None) -> bytes | None:
    """The passphrase held by the environment variable ``env_var`` (``--passphrase-env VAR``).

    ``None`` when no variable is named; an unset or empty variable raises
    :class:`PassphraseRequired` (exit 2).  Passphrases never come from the command line.
    """
    if not env_var:
        return None
    value = os.environ.get(env_var)
    if value is None:
        raise PassphraseRequired(f"environment variable {env_var} (from --passphrase-env) is not set")
    if value == "":
        raise PassphraseRequired(f"environment variable {env_var} (from --passphrase-env) is empty")
    return value.encode("utf-8")


def load_signing_key_env(path: PathLike, passphrase_env: str | None = None) -> Ed25519PrivateKey:
    """:func:`load_signing_key` with the passphrase read from the variable ``passphrase_env``."""
    return load_signing_key(path, passphrase_from_env(passphrase_env))


def load_verify_key(path: PathLike) -> Ed25519PublicKey:
    """Load an Ed25519 public key."""
    key = _load_public(path)
    if not isinstance(key, Ed25519PublicKey):
        raise WrongKeyType(f"{path}: expected an Ed25519 public (verify) key, got {_kind(key)}")
    return key


def load_encryption_key(path: PathLike, passphrase: bytes | None = None) -> X25519PrivateKey:
    """Load an X25519 private key (the verifier's decryption key)."""
    key = _load_private(path, passphrase)
    if not isinstance(key, X25519PrivateKey):
        raise WrongKeyType(f"{path}: expected an X25519 encryption key, got {_kind(key)}")
    return key


def load_encryption_pub(path: PathLike) -> X25519PublicKey:
    """Load an X25519 public key (the verifier's, to seal to)."""
    key = _load_public(path)
    if not isinstance(key, X25519PublicKey):
        raise WrongKeyType(f"{path}: expected an X25519 encryption public key, got {_kind(key)}")
    return key


def _kind(key: object) -> str:
    name = type(key).__name__
    for prefix in ("_", "Rust"):
        name = name.removeprefix(prefix)
    return name
