"""The one error tree (`pol.errors`) and the torch-free helpers (`pol.util`).

Every error pol raises on purpose is a `PolError` on exactly one branch: unusable input (exit 2) or
invalid (exit 1); the CLI exits with `exit_code`. The crypto errors are members of that tree under
their old names and import paths. `pol.util.canonical_json` gives the bytes both former encoders
gave (the proof manifest's ASCII form and the crypto UTF-8 form), so every existing root digest,
signature and ledger hash still verifies.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import stat
import subprocess
import sys

import pytest

import pol.crypto.errors as cerr
from pol import errors, util
from pol.errors import (ConfigError, IncompleteProofError, IntegrityError, LimitExceeded, PolError,
                        ProofFormatError, ProofWriteError, UnusableInputError,
                        UntrustedFactoryError, VerificationError)

UNUSABLE = [ProofFormatError, IncompleteProofError, UntrustedFactoryError, LimitExceeded,
            ConfigError, ProofWriteError]
INVALID = [IntegrityError]

# the exit code of every crypto error class before the tree (the CLI tests check them too)
CRYPTO_EXIT = {
    "KeyFileError": 2, "KeyFileExists": 2, "KeyFileNotFound": 2, "BadKeyFile": 2, "WrongKeyType": 2,
    "PassphraseError": 2, "WrongPassphrase": 2, "PassphraseRequired": 2,
    "ArchiveError": 2, "UnsafeEntryError": 2, "ArchiveLimitError": 2, "ArchiveTruncated": 2,
    "ArchiveTrailingData": 2, "ArchiveFormatError": 2, "ArchiveCorrupt": 2, "DestinationError": 2,
    "DestinationExists": 2,
    "SealUnreadable": 2, "InvalidProofError": 2, "NotSealedError": 2, "UnsupportedVersion": 2,
    "MalformedSeal": 2, "TruncatedSeal": 2, "WrongRecipient": 2,
    "BadSignature": 1, "SignerMismatch": 1, "TamperedCiphertext": 1, "SealedContentError": 1,
    "RootDigestMismatch": 1, "ReplayedSeal": 1, "RevokedSeal": 1,
    "HPKEError": 2, "LedgerUnusable": 2, "LedgerInvalid": 1,
}
FAMILIES = {"CryptoError", "SealError", "LedgerError", "VerificationError"}


# ------------------------------------------------------------------------------ the tree

def test_branches_and_exit_codes():
    assert PolError.exit_code == 2
    assert UnusableInputError.exit_code == 2 and VerificationError.exit_code == 1
    for cls in UNUSABLE:
        assert issubclass(cls, UnusableInputError) and cls.exit_code == 2, cls
        assert not issubclass(cls, VerificationError), cls
    for cls in INVALID:
        assert issubclass(cls, VerificationError) and cls.exit_code == 1, cls
        assert not issubclass(cls, UnusableInputError), cls
    assert issubclass(IncompleteProofError, ProofFormatError)
    assert issubclass(UntrustedFactoryError, ProofFormatError)
    assert issubclass(LimitExceeded, ProofFormatError)


def test_every_crypto_error_is_a_pol_error_on_one_branch():
    names = set(cerr.__all__)
    assert names == set(CRYPTO_EXIT) | FAMILIES, names ^ (set(CRYPTO_EXIT) | FAMILIES)
    for name, code in CRYPTO_EXIT.items():
        cls = getattr(cerr, name)
        assert issubclass(cls, cerr.CryptoError) and issubclass(cls, PolError), name
        assert cls.exit_code == code, name
        branch, other = ((VerificationError, UnusableInputError) if code == 1 else
                         (UnusableInputError, VerificationError))
        assert issubclass(cls, branch) and not issubclass(cls, other), name
    # old families still catch their members; the re-exported VerificationError is the tree's
    assert cerr.VerificationError is VerificationError
    assert issubclass(cerr.BadSignature, cerr.SealError)
    assert issubclass(cerr.LedgerInvalid, cerr.LedgerError)
    assert issubclass(cerr.LedgerUnusable, cerr.LedgerError)
    assert issubclass(cerr.SealUnreadable, cerr.SealError)
    assert cerr.CryptoError.exit_code == 2  # what a directly raised family base exits with
    import pol.crypto as crypto
    assert crypto.CryptoError is cerr.CryptoError and crypto.VerificationError is VerificationError


def test_crypto_package_raises_no_bare_family_base():
    """A family base holds both branches, so raising it directly would say nothing about the
    verdict: the package raises only concrete classes."""
    import re
    from pathlib import Path
    root = Path(cerr.__file__).parent
    pat = re.compile(r"raise (CryptoError|SealError|LedgerError|VerificationError)\(")
    hits = [f"{p.name}:{i}" for p in root.glob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pat.search(line)]
    assert not hits, hits


def test_limit_exceeded_message_and_pickle():
    e = LimitExceeded("the proof claims 9 checkpoints", "max_checkpoints", 5)
    assert e.field == "max_checkpoints" and e.limit == 5
    assert "max_checkpoints = 5" in str(e) and "pol verify --max-checkpoints N" in str(e)
    assert "1 GiB" in str(LimitExceeded("big", "max_file_bytes", 2**30))
    back = pickle.loads(pickle.dumps(e))  # crosses worker processes
    assert type(back) is LimitExceeded and str(back) == str(e) and back.limit == 5


def test_within_names_the_input_and_keeps_the_class():
    e = cerr.WrongPassphrase("wrong passphrase for k.pem")
    same = e.within("--sign-with")
    assert same is e and type(e) is cerr.WrongPassphrase and e.exit_code == 2
    assert str(e) == "--sign-with: wrong passphrase for k.pem"


def test_errors_and_util_import_no_torch():
    code = ("import sys, pol.errors, pol.util; "
            "bad = [m for m in sys.modules if m == 'torch' or m == 'numpy' or "
            "(m.startswith('pol.') and m not in ('pol.errors', 'pol.util', 'pol.spec', 'pol._version'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------------------ canonical JSON

def _old_proof_encoder(obj):  # pol.proof.format.canonical_json before pol.util
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()


def _old_crypto_encoder(obj):  # pol.crypto._canon.canonical_json before pol.util
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


SAMPLES = [
    {},
    [],
    {"b": 1, "a": [1, 2.5, None, True, False], "c": {"z": -0.0, "y": 1e-7, "x": 1e300}},
    {"big": 10**40, "neg": -3, "f": 0.1 + 0.2, "s": "q\"\\\n\t\x00\x7f"},
    {"unicode": "é€😀 ß", "ключ": ["данные", "∑"]},
    {"format": "pol-proof", "version": 1, "spec": {"seed": 0, "lr": 0.05, "betas": [0.9, 0.999]},
     "files": {"indices.npy": {"sha256": "0" * 64, "size": 128}}, "checkpoints": [0, 3, 6]},
]


@pytest.mark.parametrize("obj", SAMPLES)
def test_canonical_json_bytes_equal_the_old_encoders(obj):
    assert util.canonical_json(obj) == _old_crypto_encoder(obj)
    assert util.canonical_json(obj, ascii_only=True) == _old_proof_encoder(obj)


def test_canonical_json_forms_agree_on_ascii_and_differ_only_on_other_text():
    ascii_obj = SAMPLES[5]
    assert util.canonical_json(ascii_obj) == util.canonical_json(ascii_obj, ascii_only=True)
    assert util.canonical_json({"a": "é"}) == '{"a":"é"}'.encode()
    assert util.canonical_json({"a": "é"}, ascii_only=True) == b'{"a":"\\u00e9"}'


def test_canonical_json_is_what_the_manifest_root_digest_hashes():
    import hashlib
    from pol.proof import format as fmt
    body = SAMPLES[5]
    want = hashlib.sha256(b"pol.manifest.v1\x00" + _old_proof_encoder(body)).hexdigest()
    assert fmt.root_digest(dict(body, root_digest="f" * 64)) == want


@pytest.mark.parametrize("bad", [{"x": math.nan}, {"x": math.inf}, [-math.inf], {1: "a"},
                                 {"x": {2, 3}}, {"x": b"bytes"}, {"x": object()}])
def test_canonical_json_refuses_what_has_no_single_form(bad):
    with pytest.raises(ValueError):
        util.canonical_json(bad)
    with pytest.raises(ValueError):
        util.canonical_json(bad, ascii_only=True)


def test_canonical_json_tuple_is_its_list():
    assert util.canonical_json({"b": (1, 2)}) == util.canonical_json({"b": [1, 2]})


# ------------------------------------------------------------------------------ strict parsing

def test_loads_strict_accepts_json():
    assert util.loads_strict(b'{"a": [1, 2.5, "\\u00e9", null]}', "x") == {"a": [1, 2.5, "é", None]}
    assert util.loads_strict('{"a": 1}', "x") == {"a": 1}


@pytest.mark.parametrize("data,why", [
    (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
    (b'{"a": NaN}', "contains NaN"),
    (b'[Infinity]', "contains Infinity"),
    (b'[-Infinity]', "contains -Infinity"),
    (b'{"a": ', "not valid JSON"),
    (b'"\xff"', "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
])
def test_loads_strict_refuses(data, why):
    with pytest.raises(ProofFormatError, match=why) as e:
        util.loads_strict(data, "thing.json")
    assert str(e.value).startswith("thing.json")


def test_loads_strict_size_bound_and_error_class():
    with pytest.raises(ProofFormatError, match="larger than the limit of 4 bytes"):
        util.loads_strict(b"[1, 2]", "x", max_bytes=4)
    assert util.loads_strict(b"[1, 2]", "x", max_bytes=None) == [1, 2]
    with pytest.raises(cerr.MalformedSeal, match="hdr: duplicate"):
        util.loads_strict(b'{"a":1,"a":1}', "hdr", error=cerr.MalformedSeal)
    with pytest.raises(ValueError):
        util.loads_strict(b'{"a":1,"a":1}', "hdr", error=ValueError)


# ------------------------------------------------------------------------------ files

def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "f.json"
    util.atomic_write(p, b"one")
    util.atomic_write(p, b"two", durable=False)
    assert p.read_bytes() == b"two" and os.listdir(tmp_path) == ["f.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def test_atomic_write_mode_and_no_overwrite(tmp_path):
    p = tmp_path / "key"
    util.atomic_write(p, b"secret", mode=0o600)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        util.atomic_write(p, b"other", overwrite=False)
    assert p.read_bytes() == b"secret" and os.listdir(tmp_path) == ["key"]


def test_atomic_file_failure_keeps_the_old_file(tmp_path):
    p = tmp_path / "out"
    p.write_bytes(b"old")
    with pytest.raises(KeyError):
        af = util.AtomicFile(p)
        with af as f:
            f.write(b"half")
            tmp = af.tmp
            assert tmp.name.startswith(".out.tmp") and tmp.exists()
            raise KeyError
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["out"]
    with pytest.raises(OSError):
        util.AtomicFile(tmp_path / "missing-dir" / "x")


def test_sha256_file(tmp_path):
    import hashlib
    data = os.urandom(3 * 1024 + 7)
    (tmp_path / "f").write_bytes(data)
    assert util.sha256_file(tmp_path / "f", chunk=1024) == (hashlib.sha256(data).hexdigest(),
                                                            len(data))
    (tmp_path / "e").write_bytes(b"")
    assert util.sha256_file(tmp_path / "e") == (hashlib.sha256(b"").hexdigest(), 0)
    assert errors.EXIT_INVALID == 1 and errors.EXIT_UNUSABLE == 2
