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


def spec_digest(spec) -> str:
    from pol.proof.format import canonical_json
    return hashlib.sha256(canonical_json(spec.to_dict())).hexdigest()


def seed_commitment(seed: int, salt_hex: str) -> str:
    return hashlib.sha256(f"pol.seed.v1|{seed}|{salt_hex}".encode()).hexdigest()


def _open_ledger(db: str, create: bool):
    from pol.crypto import CryptoError, Ledger
    if not create and not Path(db).is_file():
        raise ConfigError(f"--ledger {db}: no such file")
    try:
        return Ledger(db, create=create)
    except CryptoError as e:
        raise ConfigError(f"--ledger {db}: {e}") from None


def load_key(path: str):
    from pol.crypto import CryptoError, load_signing_key
    try:
        return load_signing_key(path)
    except CryptoError as e:
        raise ConfigError(f"--sign-with {path}: {e}") from None


def commit(db: str, key, spec) -> dict[str, Any]:
    """Append the commitment; returns the sidecar content (salt, seq, entry hash)."""
    from pol.crypto import CryptoError, key_id
    salt = secrets.token_hex(32)
    payload = {"spec_digest": spec_digest(spec), "seed_commitment": seed_commitment(spec.seed, salt),
               "data_root": spec.data.root, "prover": key_id(key.public_key())}
    try:
        with _open_ledger(db, True) as led:
            e = led.append("commitment", payload, key)
    except CryptoError as e:
        raise ConfigError(f"--ledger {db}: {e}") from None
    return {"format": "pol-commitment/1", "ledger_seq": e.seq, "entry_hash": e.entry_hash,
            "timestamp": e.timestamp, "seed": spec.seed, "salt": salt, **payload}


def publish(db: str, key, root_digest: str, side: dict, proof_dir: str | Path) -> Any:
    """Append the "proof" entry and write the sidecar into the proof directory."""
    from pol.crypto import CryptoError
    try:
        with _open_ledger(db, True) as led:
            e = led.append("proof", {"root_digest": root_digest,
                                     "commitment_seq": side["ledger_seq"]}, key)
    except CryptoError as e:
        raise ConfigError(f"--ledger {db}: {e}") from None
    side = dict(side, proof_seq=e.seq, root_digest=root_digest)
    (Path(proof_dir) / COMMITMENT_FILE).write_text(json.dumps(side, indent=1, sort_keys=True))
    return e


def read_sidecar(proof_dir: str | Path) -> dict | None:
    p = Path(proof_dir) / COMMITMENT_FILE
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def find_commitment(db: str, root_digest: str, spec, sidecar: dict | None = None
                    ) -> tuple[bool, str, dict]:
    """(ok, reason, info) for the "commitment" check. info has seq, timestamp, key id."""
    with _open_ledger(db, False) as led:
        rep = led.verify()
        if not rep.ok:
            return False, (f"the ledger does not verify ({len(rep.problems)} problem(s), first: "
                           f"{rep.problems[0]})"), {}
        proofs = [e for e in led.find("proof", root_digest=root_digest)
                  if isinstance(e.payload.get("commitment_seq"), int)]
        if not proofs:
            return False, "no proof entry for this root digest in the ledger", {}
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
