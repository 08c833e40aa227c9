"""Make the golden fixtures of the versioned formats beyond the proof itself (run ONCE, commit the
output, never regenerate: CI reads them with the current code, see tests/test_golden_formats.py).

    python tests/golden/make_fixtures.py

Everything is made from the golden proof v2/iris-logreg-fp32-z (k = 1: the data request is a
strict subset of the dataset) with the code of the day, in this directory:

    keys/         signing.key/.pub (Ed25519) and encryption.key/.pub (X25519), unencrypted: one
                  party plays prover, verifier and registry (fixture keys, never use them)
    archive/      the proof packed (pol.crypto.archive, POLARC1)
    sealed/       the proof sealed to keys/encryption.pub, signed by keys/signing.key (pol-seal v1)
    commitment/   the training-commitment sidecar (pol-commitment/1) as written into a proof dir
    ledger/       a ledger (pol-ledger v1, SQLite) with, in order: the commitment, the proof entry
                  naming it, the sealed file's publication, a verdict entry (registry)
    report/       `pol verify --json` of the proof (pol-report/1, hardened policy, fixed entropy)
    request/      a lazy-verification data request (pol-data-request/1, fixed entropy and nonce)
    reveal/       the prover's reveal for that request (pol-reveal/1, .npz with Merkle paths)
    FORMATS.json  what the test compares against (root digest, key ids, sha256 of each file,
                  the ledger head)

Where a format embeds the time (ledger timestamps, the sealed header's `created`, the report's
seconds) or randomness (salt, seal nonce, data key), the fixture keeps the value it had.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
PROOF = Path("v2") / "iris-logreg-fp32-z"  # relative: the report names it so
OUTS = ["keys", "archive", "sealed", "commitment", "ledger", "report", "request", "reveal"]
ENTROPY = bytes(range(32))
NONCE = "00112233445566778899aabbccddeeff"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def main() -> None:
    from pol.crypto import generate_keys, key_id, load_encryption_pub, load_signing_key
    from pol.crypto.archive import pack
    from pol.crypto.ledger import Ledger
    from pol.crypto.seal import seal
    from pol.datasets import load_dataset
    from pol.proof.reader import read_manifest
    from pol.protocol.chain import record_verdict
    from pol.protocol.commit import commit, publish
    from pol.protocol.lazy import make_reveal, read_request
    from pol.verifier import verify

    os.chdir(HERE)
    there = [d for d in OUTS if (HERE / d).exists()]
    if there:
        raise SystemExit(f"{', '.join(there)} exist in {HERE}: golden fixtures are never rewritten")
    m = read_manifest(PROOF)
    root = m.root_digest
    for d in OUTS:
        (HERE / d).mkdir()

    keys = generate_keys(HERE / "keys")
    sk = load_signing_key(keys.signing_key)
    xpub = load_encryption_pub(keys.encryption_pub)

    with open(HERE / "archive" / "iris-logreg-fp32-z.polarc", "wb") as f:
        pack(PROOF, f)

    ledger = HERE / "ledger" / "ledger.db"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "proof"
        shutil.copytree(PROOF, work)
        side = commit(str(ledger), sk, m.spec)
        publish(str(ledger), sk, root, side, work)
        shutil.copy(work / "commitment.json", HERE / "commitment" / "commitment.json")
    sealed = HERE / "sealed" / "iris-logreg-fp32-z.polseal"
    res = seal(PROOF, xpub, sk, sealed, chunk_size=4096,
               created=datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc))
    with Ledger(ledger) as led:
        led.append("proof", {"root_digest": root, "sealed_file_sha256": res.sealed_sha256}, sk)

    report = verify(PROOF, entropy=ENTROPY)
    assert report.valid, report.render()
    (HERE / "report" / "iris-logreg-fp32-z.json").write_text(report.to_json() + "\n")
    record_verdict(str(ledger), str(keys.signing_key), report, str(PROOF))

    req_path = HERE / "request" / "request.json"
    pending = verify(PROOF, entropy=ENTROPY, request_data=str(req_path), nonce=NONCE)
    assert pending.pending, pending.render()
    with tempfile.TemporaryDirectory() as tmp:
        train, _ = load_dataset(m.spec.data.name, dict(m.spec.data.params))
        np.savez(Path(tmp) / "data.npz", x=train.x, y=train.y)
        make_reveal(read_request(str(req_path)), str(PROOF), str(Path(tmp) / "data.npz"),
                    str(HERE / "reveal" / "reveal.npz"))

    with Ledger(ledger, create=False) as led:
        head = led.export_head()
        assert led.verify().ok
    files = sorted(p for d in OUTS for p in (HERE / d).rglob("*") if p.is_file())
    index = {
        "proof": str(PROOF), "root_digest": root,
        "signing_key_id": key_id(sk.public_key()), "encryption_key_id": key_id(xpub),
        "sealed_sha256": res.sealed_sha256, "ledger_head": list(head),
        "files": {str(p.relative_to(HERE)): _sha(p) for p in files},
    }
    (HERE / "FORMATS.json").write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    main()
