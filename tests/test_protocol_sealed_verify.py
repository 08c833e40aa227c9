"""`pol verify` accepts a sealed proof file directly (opened with the verifier's key)."""

from click.testing import CliRunner

from pol.cli import main
from pol.prover.trainer import train_task


def test_verify_opens_and_verifies_a_sealed_proof(tmp_path):
    r = CliRunner()
    for who in ("verifier", "prover"):
        assert r.invoke(main, ["keygen", "--out", str(tmp_path / who)]).exit_code == 0
    train_task("iris-logreg", tmp_path / "proof", epochs=2, k=5)
    sealed = tmp_path / "proof.pol"
    res = r.invoke(main, ["seal", str(tmp_path / "proof"), "--to",
                          str(tmp_path / "verifier/encryption.pub"), "--sign-with",
                          str(tmp_path / "prover/signing.key"), "--out", str(sealed)])
    assert res.exit_code == 0, res.output
    ok = r.invoke(main, ["verify", str(sealed), "--key", str(tmp_path / "verifier/encryption.key"),
                         "--from", str(tmp_path / "prover/signing.pub")])
    assert ok.exit_code == 0, ok.output
    assert "verdict: VALID" in ok.output
    # the prover's own key cannot open it; an unpinned other signer is refused when pinned
    wrong = r.invoke(main, ["verify", str(sealed), "--key",
                            str(tmp_path / "prover/encryption.key")])
    assert wrong.exit_code == 2
    other = r.invoke(main, ["verify", str(sealed), "--key",
                            str(tmp_path / "verifier/encryption.key"), "--from",
                            str(tmp_path / "verifier/signing.pub")])
    assert other.exit_code in (1, 2) and "VALID" not in other.output
    # a flipped bit anywhere is rejected
    data = bytearray(sealed.read_bytes())
    data[len(data) // 2] ^= 1
    sealed.write_bytes(bytes(data))
    bad = r.invoke(main, ["verify", str(sealed), "--key", str(tmp_path / "verifier/encryption.key")])
    assert bad.exit_code in (1, 2) and "VALID" not in bad.output
    assert not any(p.name.startswith("pol-sealed-") for p in tmp_path.iterdir())


def test_verify_sealed_is_the_library_side(tmp_path, monkeypatch):
    import tempfile

    import pytest

    from pol.crypto import generate_keys, load_encryption_pub, load_signing_key
    from pol.crypto.seal import seal
    from pol.errors import ConfigError
    from pol.verifier.sealed import opened_proof, verify_sealed
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the opened copy goes here
    v, p = generate_keys(tmp_path / "v"), generate_keys(tmp_path / "p")
    train_task("iris-logreg", tmp_path / "proof", epochs=2, k=5)
    seal(tmp_path / "proof", load_encryption_pub(v.encryption_pub),
         load_signing_key(p.signing_key), tmp_path / "proof.pol")
    report = verify_sealed(tmp_path / "proof.pol", key=v.encryption_key, signer=p.signing_pub)
    assert report.valid
    assert not any(x.name.startswith("pol-sealed-") for x in tmp_path.iterdir())
    with opened_proof(tmp_path / "proof") as src:  # a directory is given as is
        assert src.path == str(tmp_path / "proof") and not src.sealed
    with pytest.raises(ConfigError, match="--key"), opened_proof(tmp_path / "proof.pol"):
        pass
