"""Key generation, loading and error reporting of pol.crypto.keys."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from pol.crypto import errors
from pol.crypto.keys import (
    generate_keys,
    key_id,
    load_encryption_key,
    load_encryption_pub,
    load_signing_key,
    load_verify_key,
)


def test_generate_and_load_round_trip(tmp_path):
    paths = generate_keys(tmp_path / "alice")
    sk = load_signing_key(paths.signing_key)
    vk = load_verify_key(paths.signing_pub)
    xk = load_encryption_key(paths.encryption_key)
    xp = load_encryption_pub(paths.encryption_pub)
    assert isinstance(sk, Ed25519PrivateKey) and isinstance(vk, Ed25519PublicKey)
    assert isinstance(xk, X25519PrivateKey) and isinstance(xp, X25519PublicKey)
    assert key_id(sk.public_key()) == key_id(vk)
    assert key_id(xk.public_key()) == key_id(xp)
    sig = sk.sign(b"msg")
    vk.verify(sig, b"msg")
    for p in (paths.signing_key, paths.encryption_key):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    for p in (paths.signing_pub, paths.encryption_pub):
        assert b"PUBLIC KEY" in p.read_bytes()


def test_key_id_format_and_uniqueness():
    a = Ed25519PrivateKey.generate().public_key()
    b = Ed25519PrivateKey.generate().public_key()
    assert len(key_id(a)) == 32 and int(key_id(a), 16) >= 0
    assert key_id(a) == key_id(a) != key_id(b)
    with pytest.raises(errors.WrongKeyType):
        key_id(Ed25519PrivateKey.generate())  # type: ignore[arg-type]


def test_passphrase_protection(tmp_path):
    paths = generate_keys(tmp_path / "k", passphrase=b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in paths.signing_key.read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in paths.encryption_key.read_bytes()
    load_signing_key(paths.signing_key, b"correct horse")
    load_encryption_key(paths.encryption_key, b"correct horse")
    with pytest.raises(errors.PassphraseRequired):
        load_signing_key(paths.signing_key)
    with pytest.raises(errors.WrongPassphrase):
        load_signing_key(paths.signing_key, b"wrong")
    with pytest.raises(errors.WrongPassphrase):
        load_encryption_key(paths.encryption_key, b"wrong")


def test_passphrase_given_for_plain_key(tmp_path):
    paths = generate_keys(tmp_path / "k")
    with pytest.raises(errors.PassphraseError):
        load_signing_key(paths.signing_key, b"unexpected")


def test_refuses_overwrite_without_force(tmp_path):
    paths = generate_keys(tmp_path / "k")
    before = paths.signing_key.read_bytes()
    with pytest.raises(errors.KeyFileExists):
        generate_keys(tmp_path / "k")
    assert paths.signing_key.read_bytes() == before
    # one existing file is enough to refuse, and nothing else gets written
    other = tmp_path / "partial"
    other.mkdir()
    (other / "encryption.pub").write_text("keep me")
    with pytest.raises(errors.KeyFileExists):
        generate_keys(other)
    assert sorted(os.listdir(other)) == ["encryption.pub"]
    assert (other / "encryption.pub").read_text() == "keep me"
    # force replaces
    generate_keys(tmp_path / "k", force=True)
    assert paths.signing_key.read_bytes() != before
    assert stat.S_IMODE(os.stat(paths.signing_key).st_mode) == 0o600
    assert not [n for n in os.listdir(tmp_path / "k") if n.startswith(".")]


def test_wrong_key_types(tmp_path):
    paths = generate_keys(tmp_path / "k")
    with pytest.raises(errors.WrongKeyType):
        load_signing_key(paths.encryption_key)
    with pytest.raises(errors.WrongKeyType):
        load_signing_key(paths.signing_pub)
    with pytest.raises(errors.WrongKeyType):
        load_verify_key(paths.encryption_pub)
    with pytest.raises(errors.WrongKeyType):
        load_verify_key(paths.signing_key)
    with pytest.raises(errors.WrongKeyType):
        load_encryption_key(paths.signing_key)
    with pytest.raises(errors.WrongKeyType):
        load_encryption_pub(paths.signing_pub)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a key at all",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n",
        os.urandom(2000),
    ],
)
def test_bad_pem(tmp_path, content):
    p = tmp_path / "bad.pem"
    p.write_bytes(content)
    with pytest.raises(errors.KeyFileError) as ei:
        load_signing_key(p)
    assert isinstance(ei.value, errors.CryptoError)
    with pytest.raises(errors.KeyFileError):
        load_verify_key(p)


def test_missing_file(tmp_path):
    with pytest.raises(errors.KeyFileNotFound):
        load_verify_key(tmp_path / "nope.pub")
    with pytest.raises(errors.KeyFileNotFound):
        load_signing_key(tmp_path)  # a directory
