"""The protocol commands: keys (`keygen`), sealed proofs (`seal`, `open`), the signed ledger
(`ledger show|verify|head|revoke`) and lazy verification's prover side (`reveal`).
(`dispute` runs the verifier: pol.cli.verify.)

Keys, seal, open and ledger never need torch (`handle_errors(imports_torch=False)`), and this
module imports neither torch nor pol.crypto at import time. Passphrases come from the environment
variable named by --passphrase-env, never from the command line.
"""

from __future__ import annotations

from pathlib import Path

import click

from pol.cli import options as opt
from pol.cli import render
from pol.cli.exits import handle_errors


@click.command("keygen")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the key files.")
@opt.passphrase_env()
@opt.force("Overwrite existing key files.")
@handle_errors(imports_torch=False)
def keygen(out_dir, passphrase_env, force):
    """Create an Ed25519 signing key pair and an X25519 encryption key pair."""
    from pol.crypto.keys import (generate_keys, key_id, load_encryption_pub, load_verify_key,
                                 passphrase_from_env)
    paths = generate_keys(out_dir, passphrase=passphrase_from_env(passphrase_env), force=force)
    render.keys_made(paths, key_id(load_verify_key(paths.signing_pub)),
                     key_id(load_encryption_pub(paths.encryption_pub)), passphrase_env is not None)


@click.command("seal")
@click.argument("proof", type=click.Path())
@click.option("--to", "to_pub", required=True, metavar="VERIFIER_PUB",
              help="Verifier's encryption.pub.")
@opt.sign_with("Prover's signing.key.", required=True)
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False),
              help="Sealed file to write.")
@opt.ledger("Also publish the seal to this ledger.")
@opt.passphrase_env()
@opt.force("Overwrite --out if it exists.")
@handle_errors(imports_torch=False)
def seal(proof, to_pub, sign_with, out_file, ledger_db, passphrase_env, force):
    """Sign and encrypt the proof directory PROOF for one verifier."""
    from pol.crypto.keys import load_encryption_pub, load_signing_key_env
    from pol.crypto.seal import seal as _seal
    from pol.errors import ConfigError
    if not Path(proof).is_dir():
        raise ConfigError(f"proof directory not found: {proof}")
    recipient = load_encryption_pub(to_pub)
    signer = load_signing_key_env(sign_with, passphrase_env)
    result = _seal(proof, recipient, signer, out_file, overwrite=force)
    render.sealed(result)
    if ledger_db:
        from pol.crypto.ledger import Ledger
        with Ledger(ledger_db) as led:
            entry = led.append("proof", {"root_digest": result.root_digest,
                                         "sealed_file_sha256": result.sealed_sha256}, signer)
        render.ledger_appended(ledger_db, entry)


@click.command("open")
@click.argument("sealed_file", metavar="FILE", type=click.Path())
@click.option("--key", "key_file", required=True, metavar="VERIFIER_KEY",
              help="Verifier's encryption.key.")
@click.option("--out", "out_dir", required=True, type=click.Path(),
              help="Directory to create with the proof.")
@click.option("--from", "from_pub", default=None, metavar="SIGNER_PUB",
              help="Require this prover's signing.pub.")
@opt.ledger("Require FILE to be the signer's latest, unrevoked publication on this ledger "
            "(rejects replays).")
@opt.passphrase_env()
@handle_errors(imports_torch=False)
def open_(sealed_file, key_file, out_dir, from_pub, ledger_db, passphrase_env):
    """Verify and decrypt a sealed proof FILE into a new directory."""
    from pol.crypto.keys import load_encryption_key, passphrase_from_env
    from pol.crypto.replay import open_checked
    from pol.errors import ConfigError
    if not Path(sealed_file).is_file():
        raise ConfigError(f"sealed file not found: {sealed_file}")
    key = load_encryption_key(key_file, passphrase_from_env(passphrase_env))
    opened = open_checked(sealed_file, key, out_dir, from_pub, ledger=ledger_db)
    render.opened(opened, pinned=from_pub is not None)


@click.group("ledger")
def ledger():
    """Inspect and verify a signed, hash-chained ledger."""


@ledger.command("show")
@click.argument("db", type=click.Path())
@opt.json_flag("Print a JSON array of entries.")
@click.option("--kind", default=None, help="Only entries of this kind.")
@handle_errors(imports_torch=False)
def ledger_show(db, as_json, kind):
    """List ledger entries (not verified: use `ledger verify`)."""
    from pol.crypto.ledger import Ledger
    with Ledger(db, create=False) as led:
        render.ledger_entries(led.entries(kind), as_json)


@ledger.command("verify")
@click.argument("db", type=click.Path())
@click.option("--anchor", "anchors", multiple=True, metavar="SEQ:HASH",
              help="A head remembered earlier.")
@click.option("--trust", "trust", multiple=True, metavar="PUB",
              help="Only these signing.pub keys may sign.")
@handle_errors(imports_torch=False)
def ledger_verify(db, anchors, trust):
    """Verify hashes, signatures, chain, seq continuity and time order."""
    from pol.crypto.keys import load_verify_key
    from pol.crypto.ledger import Ledger
    parsed = opt.parse_anchors(anchors)
    trusted = list(map(load_verify_key, trust)) if trust else None
    with Ledger(db, create=False) as led:
        render.ledger_verified(led.verify(anchors=parsed, trusted_keys=trusted))


@ledger.command("head")
@click.argument("db", type=click.Path())
@handle_errors(imports_torch=False)
def ledger_head(db):
    """Print SEQ:HASH of the last entry, to pass later as `verify --anchor`."""
    from pol.crypto.ledger import Ledger
    with Ledger(db, create=False) as led:
        render.ledger_head(*led.export_head())


@ledger.command("revoke")
@click.argument("db", type=click.Path())
@click.option("--root-digest", "root_digest", required=True, metavar="D",
              help="Root digest of the proof to revoke.")
@opt.sign_with("The publishing prover's signing.key.", required=True)
@click.option("--reason", default=None, help="Free text recorded in the entry.")
@opt.passphrase_env()
@handle_errors(imports_torch=False)
def ledger_revoke(db, root_digest, sign_with, reason, passphrase_env):
    """Append a signed "revoke" entry: sealed publications of this proof by this key are no
    longer accepted by `pol open --ledger` (nor by verification of sealed files with a ledger)."""
    from pol.crypto.keys import load_signing_key_env
    from pol.crypto.replay import revoke
    signer = load_signing_key_env(sign_with, passphrase_env)
    entry = revoke(db, root_digest.strip().lower(), signer, reason)
    render.revoked(root_digest, db, entry)


@click.command()
@click.option("--request", "request", required=True, type=click.Path(dir_okay=False),
              help="The verifier's data request (pol verify --request-data).")
@click.option("--proof", "proof", required=True, type=click.Path(), help="The proof directory.")
@click.option("--data", "data", required=True, type=click.Path(dir_okay=False),
              help="The private dataset: .npz with arrays x and y.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Reveal file to write (.npz).")
@handle_errors
def reveal(request, proof, data, out):
    """Lazy verification, prover side: reveal only the requested samples, with Merkle paths."""
    from pol.protocol.lazy import make_reveal, read_request
    render.revealed(make_reveal(read_request(request), proof, data, out), out)
