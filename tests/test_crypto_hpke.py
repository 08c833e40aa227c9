"""RFC 9180 known-answer tests for pol.crypto.hpke, and interop with cryptography's HPKE."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from pol.crypto import hpke
from pol.crypto.errors import HPKEError

H = bytes.fromhex
INFO = H("4f6465206f6e2061204772656369616e2055726e")  # "Ode on a Grecian Urn"
PT = H("4265617574792069732074727574682c20747275746820626561757479")  # "Beauty is truth, truth beauty"

# Test vector for mode_base, KEM 0x0020 DHKEM(X25519, HKDF-SHA256), KDF 0x0001 HKDF-SHA256,
# AEAD 0x0002 AES-256-GCM, from the RFC 9180 test-vector set (CFRG test-vectors.json, as
# carried in BoringSSL/AWS-LC crypto/hpke/hpke_test_vectors.txt).
V2 = {
    "skEm": "179d4b53b6365c45b600c4163b61d95cbc2f4d9e36f1695558dce265ab8bab11",
    "pkEm": "6c93e09869df3402d7bf231bf540fadd35cd56be14f97178f0954db94b7fc256",
    "skRm": "497b4502664cfea5d5af0b39934dac72242a74f8480451e1aee7d6a53320333d",
    "pkRm": "430f4b9859665145a6b1ba274024487bd66f03a2dd577d7753c68d7d7d00c00c",
    "encryptions": {
        0: ("436f756e742d30", "e5d84cd531cfb583096e7cfa9641bd3079cf3a91cda813c52deb5f512be9931980a41de125a925cdad859d5b7a"),
        1: ("436f756e742d31", "2c43aff25343fdbff864506f0818b9d87df84ea01b1a2144d23b4d40c26bf655fdf197fe40297a8aebeed5cc2d"),
        2: ("436f756e742d32", "e0a8f2cf92ff61215edbb8c55dc31fe9e2eb42a5685867bb6854211542099f9e940c4b41c192bc390835b1a5f7"),
        255: (
            "436f756e742d323535",
            "f6ad1823eb0b932d04b6e23010eea64f1fe5edd0583dae5ba27ca6363f4ea104bd217331460ef4208040423641",
        ),
        256: (
            "436f756e742d323536",
            "53624f4f9f173453b14e633b45390ff54cacaa4428d44baee1bff8133fab1ab3afe60f88e4634b525c54e92eda",
        ),
    },
    "exports": [
        ("", "ded6cffafaea6b812cbf3e241e88332adbc077aca81512914213810ee291770a"),
        ("00", "04d3cb6cc116b28ffd22ad5bc276c60d31fec71ceb87ae24db811c64b7507339"),
        ("54657374436f6e74657874", "7c5ded445732c14fe09727d29b4251c0fd38455fe8440571e687f0886aac94d2"),
    ],
}

# RFC 9180 Appendix A.1.1 (same KEM/KDF, AES-128-GCM): checks the shared KEM and key schedule
# against the vector printed in the RFC itself.
A11 = {
    "skEm": "52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736",
    "pkEm": "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431",
    "skRm": "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8",
    "pkRm": "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d",
    "ct0": "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c512a",
    "ct1": "af2d7e9ac9ae7e270f46ba1f975be53c09f8d875bdc8535458c2494e8a6eab251c03d0c22a56b8ca42c2063b84",
    "export0": "3853fe2b4035195a573ffc53856e77058e15d9ea064de3e59f4961d0095250ee",
}


def _key(hexstr: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(H(hexstr))


def test_rfc9180_x25519_sha256_aes256gcm_sender():
    sk_r, sk_e = _key(V2["skRm"]), _key(V2["skEm"])
    assert sk_r.public_key().public_bytes_raw().hex() == V2["pkRm"]
    enc, ctx = hpke.setup_base_s(sk_r.public_key(), INFO, aead_id=hpke.AEAD_AES_256_GCM, ephemeral_key=sk_e)
    assert enc.hex() == V2["pkEm"]
    for seq in range(257):
        aad = b"Count-" + str(seq).encode()
        ct = ctx.seal(aad, PT)
        if seq in V2["encryptions"]:
            exp_aad, exp_ct = V2["encryptions"][seq]
            assert aad.hex() == exp_aad
            assert ct.hex() == exp_ct, seq
    for exp_ctx, value in V2["exports"]:
        assert ctx.export(H(exp_ctx), 32).hex() == value


def test_rfc9180_x25519_sha256_aes256gcm_recipient():
    sk_r = _key(V2["skRm"])
    ctx = hpke.setup_base_r(H(V2["pkEm"]), sk_r, INFO, aead_id=hpke.AEAD_AES_256_GCM)
    for seq in (0, 1, 2):
        aad, ct = V2["encryptions"][seq]
        assert ctx.open(H(aad), H(ct)) == PT
    # wrong sequence number (skipping messages) fails authentication
    ctx.seq = 5
    with pytest.raises(HPKEError):
        ctx.open(H(V2["encryptions"][0][0]), H(V2["encryptions"][0][1]))
    # single-shot form == first message of the context
    blob = H(V2["pkEm"]) + H(V2["encryptions"][0][1])
    assert hpke.open_base(sk_r, blob, INFO, aad=H(V2["encryptions"][0][0]), backend="builtin") == PT


def test_rfc9180_appendix_a11_aes128():
    sk_r, sk_e = _key(A11["skRm"]), _key(A11["skEm"])
    assert sk_r.public_key().public_bytes_raw().hex() == A11["pkRm"]
    enc, ctx = hpke.setup_base_s(sk_r.public_key(), INFO, aead_id=hpke.AEAD_AES_128_GCM, ephemeral_key=sk_e)
    assert enc.hex() == A11["pkEm"]
    assert ctx.seal(b"Count-0", PT).hex() == A11["ct0"]
    assert ctx.seal(b"Count-1", PT).hex() == A11["ct1"]
    assert ctx.export(b"", 32).hex() == A11["export0"]


def test_builtin_round_trip_and_failures():
    sk = X25519PrivateKey.generate()
    other = X25519PrivateKey.generate()
    blob = hpke.seal_base(sk.public_key(), b"data key", b"info", backend="builtin")
    assert len(blob) == hpke.N_ENC + 8 + 16
    assert hpke.open_base(sk, blob, b"info", backend="builtin") == b"data key"
    with pytest.raises(HPKEError):
        hpke.open_base(other, blob, b"info", backend="builtin")
    with pytest.raises(HPKEError):
        hpke.open_base(sk, blob, b"other info", backend="builtin")
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(HPKEError):
            hpke.open_base(sk, bytes(bad), b"info", backend="builtin")
    with pytest.raises(HPKEError):
        hpke.open_base(sk, blob[:20], b"info", backend="builtin")


@pytest.mark.skipif(not hpke.HAVE_LIBRARY_HPKE, reason="installed cryptography has no HPKE module")
def test_interop_with_cryptography_hpke():
    sk = X25519PrivateKey.generate()
    a = hpke.seal_base(sk.public_key(), b"from library", b"ctx", backend="library")
    assert hpke.open_base(sk, a, b"ctx", backend="builtin") == b"from library"
    b = hpke.seal_base(sk.public_key(), b"from builtin", b"ctx", backend="builtin")
    assert hpke.open_base(sk, b, b"ctx", backend="library") == b"from builtin"
    with pytest.raises(HPKEError):
        hpke.open_base(X25519PrivateKey.generate(), a, b"ctx", backend="library")
