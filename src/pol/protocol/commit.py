"""Commitment before training, on a signed hash-chained ledger (DESIGN §5).

Before training, the prover appends a signed "commitment" entry:
    {"spec_digest": sha256(canonical spec JSON), "seed_commitment": sha256("pol.seed.v1|" + seed +
     "|" + salt hex), "data_root": spec.data.root, "prover": key id}
and after training a "proof" entry {"root_digest", "commitment_seq"}. The salt (and the entry's
seq) are kept in a sidecar `commitment.json` in the proof directory, outside the manifest (the
proof format is unchanged; the verifier ignores this one extra file).

The verifier (`--ledger DB`) checks: the ledger verifies (hashes, signatures, chain); a "proof"
entry names this root digest and a "commitment" entry that precedes it, signed by the same key,
for this spec (digest) and data root; the commitment is not a replay (the first entry with its
seed commitment); and, when the sidecar is there, the salt opens the seed commitment to the
proof's seed.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

from pol.errors import ConfigError
from pol.protocol import COMMITMENT_FILE
from pol.util import atomic_write, canonical_json, loads_strict


def spec_digest(spec) -> str:
    """SHA-256 of the spec's canonical JSON, in the ASCII-escaped byte form of the manifest's root
    digest (the form every existing commitment was made with)."""
    return hashlib.sha256(canonical_json(spec.to_dict(), ascii_only=True)).hexdigest()


def seed_commitment(seed: int, salt_hex: str) -> str:
    return hashlib.sha256(f"pol.seed.v1|{seed}|{salt_hex}".encode()).hexdigest()


def _open_ledger(db: str, create: bool):
    """The ledger `db`; a LedgerError (exit 2) says `--ledger DB: why` if it is not usable."""
    from pol.crypto import CryptoError, Ledger
    if not create and not Path(db).is_file():
        raise ConfigError(f"--ledger {db}: no such file")
    try:
        return Ledger(db, create=create)
    except CryptoError as e:
        raise e.within(f"--ledger {db}") from None


def load_key(path: str, passphrase_env: str | None = None):
    """The Ed25519 signing key at `path`, decrypted with the passphrase held by the environment
    variable `passphrase_env` (`--passphrase-env VAR`; never from the command line). A key that
    cannot be used raises pol.crypto's KeyFileError (exit 2), which names the file."""
    from pol.crypto import CryptoError
    from pol.crypto.keys import load_signing_key_env
    try:
        return load_signing_key_env(path, passphrase_env)
    except CryptoError as e:
        raise e.within("--sign-with") from None


def commit(db: str, key, spec) -> dict[str, Any]:
    """Append the commitment; returns the sidecar content (salt, seq, entry hash)."""
    from pol.crypto import CryptoError, key_id
    salt = secrets.token_hex(32)
    payload = {"spec_digest": spec_digest(spec), "seed_commitment": seed_commitment(spec.seed, salt),
               "data_root": spec.data.root, "prover": key_id(key.public_key())}
    with _open_ledger(db, True) as led:
        try:
            e = led.append("commitment", payload, key)
        except CryptoError as err:
            raise err.within(f"--ledger {db}") from None
    return {"format": "pol-commitment/1", "ledger_seq": e.seq, "entry_hash": e.entry_hash,
            "timestamp": e.timestamp, "seed": spec.seed, "salt": salt, **payload}


def publish(db: str, key, root_digest: str, side: dict, proof_dir: str | Path) -> Any:
    """Append the "proof" entry and write the sidecar into the proof directory."""
    from pol.crypto import CryptoError
    with _open_ledger(db, True) as led:
        try:
            e = led.append("proof", {"root_digest": root_digest,
                                     "commitment_seq": side["ledger_seq"]}, key)
        except CryptoError as err:
            raise err.within(f"--ledger {db}") from None
    side = dict(side, proof_seq=e.seq, root_digest=root_digest)
    atomic_write(Path(proof_dir) / COMMITMENT_FILE,
                 json.dumps(side, indent=1, sort_keys=True).encode())
    return e


def read_sidecar(proof_dir: str | Path) -> dict | None:
    p = Path(proof_dir) / COMMITMENT_FILE
    if not p.is_file():
        return None
    try:
        d = loads_strict(p.read_bytes(), COMMITMENT_FILE, error=ValueError)
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def find_commitment(db: str, root_digest: str, spec, sidecar: dict | None = None
                    ) -> tuple[bool | None, str, dict]:
    """(ok, reason, info) for the "commitment" check. info has seq, timestamp, key id.

    ok is None (the check is skipped, with the reason) for a proof that is published on the ledger
    (`pol seal --ledger`) but whose training made no commitment there and that claims none (no
    sidecar): nothing was committed, so there is nothing to check, and the report says so instead
    of failing a proof for a commitment its prover never made. Such a proof has no place in time
    on the ledger (a dispute does not rank it)."""
    with _open_ledger(db, False) as led:
        rep = led.verify()
        if not rep.ok:
            return False, (f"the ledger does not verify ({len(rep.problems)} problem(s), first: "
                           f"{rep.problems[0]})"), {}
        proofs = [e for e in led.find("proof", root_digest=root_digest)
                  if isinstance(e.payload.get("commitment_seq"), int)]
        if not proofs:
            published = [e for e in led.find("proof", root_digest=root_digest)
                         if "commitment_seq" not in e.payload]
            if published and sidecar is None:
                p = published[-1]
                return None, (f"no training commitment: the proof is published on the ledger (seq "
                              f"{p.seq}, {p.timestamp}, by {p.signer_key_id}) but its training "
                              "made no commitment there (pol train --ledger or pol commit), so "
                              "nothing orders its training in time"), {}
            if published:
                return False, (f"{COMMITMENT_FILE} claims a commitment (seq "
                               f"{sidecar.get('ledger_seq')}), but the ledger has no proof entry "
                               "naming a commitment for this root digest"), {}
            return False, ("this proof is not on the ledger: no proof entry for its root digest "
                           "(neither published after a commitment by pol train --ledger nor by "
                           "pol seal --ledger)"), {}
        sd = spec_digest(spec)
        first_by_sc: dict[str, Any] = {}
        for c in led.entries("commitment"):
            sc = c.payload.get("seed_commitment")
            if isinstance(sc, str) and sc not in first_by_sc:
                first_by_sc[sc] = c
        problems = []
        for p in proofs:
            c = led.get(p.payload["commitment_seq"])
            if c is None or c.kind != "commitment":
                problems.append(f"proof entry seq {p.seq} names no commitment entry")
                continue
            cp = c.payload
            if c.seq >= p.seq or c.timestamp > p.timestamp:
                problems.append(f"commitment seq {c.seq} does not precede the proof entry seq "
                                f"{p.seq}")
                continue
            if c.signer_public_key != p.signer_public_key:
                problems.append(f"commitment seq {c.seq} was signed by {c.signer_key_id}, the "
                                f"proof entry seq {p.seq} by {p.signer_key_id}")
                continue
            if cp.get("spec_digest") != sd or cp.get("data_root") != spec.data.root:
                problems.append(f"commitment seq {c.seq} is for another spec or dataset")
                continue
            first = first_by_sc.get(cp.get("seed_commitment"))
            if first is not None and first.seq != c.seq:
                problems.append(f"commitment seq {c.seq} replays seq {first.seq} (signed by "
                                f"{first.signer_key_id})")
                continue
            info = {"commitment_seq": c.seq, "proof_seq": p.seq, "timestamp": c.timestamp,
                    "prover": c.signer_key_id, "seed_opened": False}
            note = ""
            if sidecar is not None and sidecar.get("ledger_seq") == c.seq:
                salt = sidecar.get("salt")
                if not (isinstance(salt, str) and seed_commitment(spec.seed, salt)
                        == cp.get("seed_commitment")):
                    problems.append(f"the salt in {COMMITMENT_FILE} does not open the seed "
                                    f"commitment of seq {c.seq} to the proof's seed {spec.seed}")
                    continue
                info["seed_opened"] = True
                note = "; the seed commitment opens to the proof's seed"
            else:
                note = f"; seed not opened (no matching {COMMITMENT_FILE})"
            return True, (f"committed at seq {c.seq} ({c.timestamp}) by {c.signer_key_id}, "
                          f"before the proof entry seq {p.seq}{note}"), info
        return False, "; ".join(problems), {}


# ------------------------------------------------------------- standalone commitment (pol commit)

SIDECAR_FORMAT = "pol-commitment/1"
_SIDECAR_KEYS = {"format", "ledger_seq", "entry_hash", "timestamp", "seed", "salt", "spec_digest",
                 "seed_commitment", "data_root", "prover"}


def write_commitment_file(path: str | Path, side: dict, overwrite: bool = False) -> Path:
    """Write the salt/commitment sidecar to `path`, mode 0600 (it holds the secret salt),
    atomically; an existing file is kept unless `overwrite`."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise ConfigError(f"--out {p} exists (pass --force to overwrite)")
    if p.is_dir():
        raise ConfigError(f"--out {p} is a directory")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"--out {p}: directory {parent} does not exist")
    try:
        atomic_write(p, json.dumps(side, indent=1, sort_keys=True).encode(), mode=0o600,
                     overwrite=overwrite)
    except FileExistsError:  # appeared since the check above
        raise ConfigError(f"--out {p} exists (pass --force to overwrite)") from None
    return p


def read_commitment_file(path: str | Path) -> dict:
    """The sidecar written by `pol commit --out` (ConfigError, exit 2, if unusable)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--commitment {p}: no such file")
    try:
        d = loads_strict(p.read_bytes(), str(p), error=ValueError)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--commitment {p}: not a commitment file ({e})") from None
    if not isinstance(d, dict) or d.get("format") != SIDECAR_FORMAT or not _SIDECAR_KEYS <= set(d):
        raise ConfigError(f"--commitment {p}: not a pol commitment file (format {SIDECAR_FORMAT})")
    if not isinstance(d["ledger_seq"], int) or not isinstance(d["salt"], str):
        raise ConfigError(f"--commitment {p}: malformed (ledger_seq/salt)")
    return d


def check_commitment(db: str, key, spec, side: dict, where: str = "--commitment") -> dict:
    """Check that the existing commitment `side` (from `pol commit`) is usable for training
    `spec` with `key` and publishing on ledger `db`; returns `side`. Every failure is a
    ConfigError (exit 2) with the reason."""
    from pol.crypto import key_id
    want = spec_digest(spec)
    if side["spec_digest"] != want:
        raise ConfigError(f"{where}: spec digest mismatch: committed {side['spec_digest'][:16]}…, "
                          f"this training's spec is {want[:16]}… (different task/options than "
                          "`pol commit` was given)")
    if side["data_root"] != spec.data.root:
        raise ConfigError(f"{where}: the committed data root differs from this dataset's")
    if seed_commitment(spec.seed, side["salt"]) != side["seed_commitment"]:
        raise ConfigError(f"{where}: the salt does not open the seed commitment to seed {spec.seed}")
    kid = key_id(key.public_key())
    if side["prover"] != kid:
        raise ConfigError(f"{where}: committed by key {side['prover']}, but --sign-with is key {kid}")
    with _open_ledger(db, False) as led:
        e = led.get(side["ledger_seq"])
        if e is None or e.kind != "commitment" or e.entry_hash != side["entry_hash"]:
            raise ConfigError(f"{where}: ledger {db} has no such commitment entry at seq "
                              f"{side['ledger_seq']} (another ledger?)")
        payload = {k: side[k] for k in ("spec_digest", "seed_commitment", "data_root", "prover")}
        if e.payload != payload or e.signer_key_id != kid:
            raise ConfigError(f"{where}: the ledger's commitment seq {e.seq} differs from the file")
        for p in led.entries("proof"):
            if p.payload.get("commitment_seq") == e.seq:
                raise ConfigError(f"{where}: commitment seq {e.seq} was already used by the proof "
                                  f"published at seq {p.seq}; commit again for a new run")
    return side
