"""Click commands for keys, sealing and the ledger.

These are standalone commands, not an entry point: the main ``pol`` group
attaches them (``register(main)`` or ``main.add_command(...)``).

Exit codes: 0 success; 1 the input was checked and is invalid (bad signature,
tampered data, ledger problems); 2 the input is unusable (missing/corrupt
file, wrong key, bad option).  Errors print one ``error: ...`` line on
stderr, never a traceback.  Passphrases are read from the environment
variable named by ``--passphrase-env``, never from the command line.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any, Callable, NoReturn, TypeVar

import click

from .errors import CryptoError
from .keys import (
    generate_keys,
    key_id,
    load_encryption_key,
    load_encryption_pub,
    load_signing_key,
    load_verify_key,
)

__all__ = [
    "keygen_command",
    "seal_command",
    "open_command",
    "ledger_group",
    "COMMANDS",
    "register",
    "keygen",
    "seal",
    "open_cmd",
    "ledger",
]

F = TypeVar("F", bound=Callable[..., Any])


def _die(message: str, code: int) -> NoReturn:
    click.echo("error: " + " ".join(str(message).split()), err=True)
    raise click.exceptions.Exit(code)


def _handle_errors(fn: F) -> F:
    """Turn expected failures into one stderr line and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _interrupt_raises()
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            _die("interrupted", 130)
        except CryptoError as exc:
            _die(str(exc) or type(exc).__name__, exc.exit_code)
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            _die(f"{where}{exc.strerror or exc}", 2)
        except sqlite3.Error as exc:  # a damaged ledger file (the Ledger checks what it can)
            _die(f"the ledger database is not usable: {exc}", 2)

    return wrapper  # type: ignore[return-value]


def _interrupt_raises() -> None:
    """From here on Ctrl-C raises KeyboardInterrupt (so partial output files are removed), in
    place of the immediate exit that `pol` uses while it starts."""
    try:
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread
        pass


def _passphrase(env_var: str | None) -> bytes | None:
    if not env_var:
        return None
    value = os.environ.get(env_var)
    if value is None:
        _die(f"environment variable {env_var} (from --passphrase-env) is not set", 2)
    if value == "":
        _die(f"environment variable {env_var} is empty", 2)
    return value.encode("utf-8")


_passphrase_option = click.option(
    "--passphrase-env",
    metavar="VAR",
    default=None,
    help="Name of an environment variable holding the private key's passphrase.",
)


@click.command("keygen")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory for the key files.")
@_passphrase_option
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
@_handle_errors
def keygen_command(out_dir: str, passphrase_env: str | None, force: bool) -> None:
    """Create an Ed25519 signing key pair and an X25519 encryption key pair."""
    paths = generate_keys(out_dir, passphrase=_passphrase(passphrase_env), force=force)
    sid = key_id(load_verify_key(paths.signing_pub))
    eid = key_id(load_encryption_pub(paths.encryption_pub))
    click.echo(f"signing key     {paths.signing_key}  (public: {paths.signing_pub}, id {sid})")
    click.echo(f"encryption key  {paths.encryption_key}  (public: {paths.encryption_pub}, id {eid})")
    if passphrase_env is None:
        click.echo("note: private keys are NOT passphrase-protected (use --passphrase-env VAR)", err=True)


@click.command("seal")
@click.argument("proof", type=click.Path())
@click.option("--to", "to_pub", required=True, metavar="VERIFIER_PUB", help="Verifier's encryption.pub.")
@click.option("--sign-with", "sign_key", required=True, metavar="PROVER_KEY", help="Prover's signing.key.")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="Sealed file to write.")
@click.option("--ledger", "ledger_db", default=None, metavar="DB", help="Also publish the seal to this ledger.")
@_passphrase_option
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@_handle_errors
def seal_command(
    proof: str,
    to_pub: str,
    sign_key: str,
    out_file: str,
    ledger_db: str | None,
    passphrase_env: str | None,
    force: bool,
) -> None:
    """Sign and encrypt the proof directory PROOF for one verifier."""
    from .seal import seal

    if not Path(proof).is_dir():
        _die(f"proof directory not found: {proof}", 2)
    recipient = load_encryption_pub(to_pub)
    signer = load_signing_key(sign_key, _passphrase(passphrase_env))
    result = seal(proof, recipient, signer, out_file, overwrite=force)
    click.echo(f"sealed {result.entries} files ({result.data_bytes} bytes) -> {result.path}")
    click.echo(f"root digest   {result.root_digest}")
    click.echo(f"sealed sha256 {result.sealed_sha256}")
    click.echo(f"signer        {result.sender_key_id}")
    click.echo(f"recipient     {result.recipient_key_id}")
    if ledger_db:
        from .ledger import Ledger

        with Ledger(ledger_db) as led:
            entry = led.append(
                "proof", {"root_digest": result.root_digest, "sealed_file_sha256": result.sealed_sha256}, signer
            )
        click.echo(f"ledger        {ledger_db}: appended seq {entry.seq} ({entry.entry_hash})")


@click.command("open")
@click.argument("sealed_file", metavar="FILE", type=click.Path())
@click.option("--key", "key_file", required=True, metavar="VERIFIER_KEY", help="Verifier's encryption.key.")
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Directory to create with the proof.")
@click.option("--from", "from_pub", default=None, metavar="SIGNER_PUB", help="Require this prover's signing.pub.")
@click.option(
    "--ledger",
    "ledger_db",
    default=None,
    metavar="DB",
    help="Require FILE to be the signer's latest, unrevoked publication on this ledger (rejects replays).",
)
@_passphrase_option
@_handle_errors
def open_command(
    sealed_file: str, key_file: str, out_dir: str, from_pub: str | None, ledger_db: str | None, passphrase_env: str | None
) -> None:
    """Verify and decrypt a sealed proof FILE into a new directory."""
    from .replay import open_checked

    if not Path(sealed_file).is_file():
        _die(f"sealed file not found: {sealed_file}", 2)
    expected = load_verify_key(from_pub) if from_pub else None
    key = load_encryption_key(key_file, _passphrase(passphrase_env))
    opened = open_checked(sealed_file, key, out_dir, expected, ledger=ledger_db)
    click.echo(f"opened {opened.entries} files ({opened.data_bytes} bytes) -> {opened.path}")
    click.echo(f"root digest {opened.root_digest}")
    click.echo(f"signed by   {opened.signer_key_id}" + ("" if expected else " (NOT pinned)"))
    click.echo(f"created     {opened.created}")
    if opened.publication is not None:
        click.echo(
            f"ledger      latest publication, seq {opened.publication.seq} ({opened.publication.timestamp}), "
            "not revoked"
        )
    if expected is None:
        click.echo(
            f"warning: signer not pinned; the signature is from key {opened.signer_key_id}, "
            "pass --from PROVER_PUB to require a specific prover",
            err=True,
        )


@click.group("ledger")
def ledger_group() -> None:
    """Inspect and verify a signed, hash-chained ledger."""


@ledger_group.command("show")
@click.argument("db", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of entries.")
@click.option("--kind", default=None, help="Only entries of this kind.")
@_handle_errors
def ledger_show(db: str, as_json: bool, kind: str | None) -> None:
    """List ledger entries (not verified: use `ledger verify`)."""
    from .ledger import Ledger

    with Ledger(db, create=False) as led:
        if as_json:
            # collected first: a damaged entry must not leave half a JSON array on stdout
            items = [json.dumps(_entry_json(e), sort_keys=True) for e in led.entries(kind)]
            click.echo("[" + ("\n" + ",\n".join(items) + "\n" if items else "") + "]")
        else:
            for e in led.entries(kind):
                click.echo(f"{e.seq!s:>6}  {e.timestamp!s}  {e.kind!s:<12} {e.signer_key_id!s}  {e.payload_json!s}")


def _entry_json(e: Any) -> dict[str, Any]:
    """An entry as JSON; a payload or token that does not decode (a damaged or tampered ledger,
    which `ledger verify` reports) is shown raw, with the reason, instead of stopping the listing."""
    out = {f: getattr(e, f) for f in ("seq", "kind", "timestamp", "signer_key_id", "signer_public_key",
                                      "prev_hash", "entry_hash", "signature", "ts_authority")}
    out = {k: v if isinstance(v, (str, int, float, type(None))) else repr(v) for k, v in out.items()}
    try:
        out["payload"] = e.payload
    except (ValueError, UnicodeError) as exc:
        out["payload"] = None
        out["payload_raw"] = e.payload_json if isinstance(e.payload_json, str) else repr(e.payload_json)
        out["payload_error"] = f"not JSON: {exc}"
    tok = e.ts_token
    out["ts_token"] = tok.hex() if isinstance(tok, (bytes, bytearray, memoryview)) else (
        None if tok is None else repr(tok))
    return out


def _parse_anchor(text: str) -> tuple[int, str]:
    seq, sep, digest = text.partition(":")
    if not sep or not seq.isdigit() or len(digest) != 64:
        _die(f"bad --anchor {text!r}; expected SEQ:HASH as printed by `ledger head`", 2)
    return int(seq), digest.lower()


@ledger_group.command("verify")
@click.argument("db", type=click.Path())
@click.option("--anchor", "anchors", multiple=True, metavar="SEQ:HASH", help="A head remembered earlier.")
@click.option("--trust", "trust", multiple=True, metavar="PUB", help="Only these signing.pub keys may sign.")
@_handle_errors
def ledger_verify(db: str, anchors: tuple[str, ...], trust: tuple[str, ...]) -> None:
    """Verify hashes, signatures, chain, seq continuity and time order."""
    from .ledger import Ledger

    parsed = [_parse_anchor(a) for a in anchors]
    trusted = [load_verify_key(p) for p in trust] if trust else None
    with Ledger(db, create=False) as led:
        report = led.verify(anchors=parsed, trusted_keys=trusted)
    if report.ok:
        click.echo(report.summary())
        return
    for problem in report.problems:
        click.echo(str(problem))
    _die(f"ledger verification failed: {len(report.problems)} problem(s) in {report.entries} entries", 1)


@ledger_group.command("head")
@click.argument("db", type=click.Path())
@_handle_errors
def ledger_head(db: str) -> None:
    """Print SEQ:HASH of the last entry, to pass later as `verify --anchor`."""
    from .ledger import Ledger

    with Ledger(db, create=False) as led:
        seq, digest = led.export_head()
    click.echo(f"{seq}:{digest}")


@ledger_group.command("revoke")
@click.argument("db", type=click.Path())
@click.option("--root-digest", "root_digest", required=True, metavar="D", help="Root digest of the proof to revoke.")
@click.option("--sign-with", "sign_key", required=True, metavar="KEY", help="The publishing prover's signing.key.")
@click.option("--reason", default=None, help="Free text recorded in the entry.")
@_passphrase_option
@_handle_errors
def ledger_revoke(db: str, root_digest: str, sign_key: str, reason: str | None, passphrase_env: str | None) -> None:
    """Append a signed "revoke" entry: sealed publications of this proof by this key are no
    longer accepted by `pol open --ledger` (nor by verification of sealed files with a ledger)."""
    from .replay import revoke

    signer = load_signing_key(sign_key, _passphrase(passphrase_env))
    entry = revoke(db, root_digest.strip().lower(), signer, reason)
    click.echo(f"revoked {root_digest} on {db}: appended seq {entry.seq} ({entry.entry_hash})")


COMMANDS: list[click.Command] = [keygen_command, seal_command, open_command, ledger_group]

# Short aliases looked up by name by the main CLI (``pol.cli._register_optional``).
keygen = keygen_command
seal = seal_command
open_cmd = open_command
ledger = ledger_group


def register(group: click.Group) -> None:
    """Attach every command of this module to ``group`` (the main ``pol`` CLI)."""
    for cmd in COMMANDS:
        group.add_command(cmd)
