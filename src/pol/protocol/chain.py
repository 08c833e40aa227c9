"""Chain of trust (paper §V-D3): verifying a warm-started proof through its parent(s).

A child proof's manifest says `init = {"kind": "parent", "root_digest": D}`. The verifier accepts
W_0 only if (a) the proof with root digest D is trusted, either found as a "verdict" entry in a
registry ledger of previously verified proofs, or verified now, recursively, from a directory given
with `--parent`; and (b) the child's W_0 equals D's final model weights exactly.

VSR (Eq. 5): the chain's VSR is the product of its proofs' VSRs. A proof verified now counts as 1.0
(it passed; its real VSR depends on the attacks considered, §VI); a registry entry's VSR is taken as
recorded there (its own chain's product, "vsr_chain", when the entry has one).

Cycles: a true cycle of root digests would need a SHA-256 fixed point, but the verifier still tracks
the digests visited (a crafted registry or a bug must never make it loop), and bounds the depth.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import torch

from pol.errors import ConfigError, PolError, ProofFormatError
from pol.step import MODEL_PREFIX

VSR_NOTE = ("VSR product per Eq. (5): 1.0 for each proof verified now (recursively), the "
            "registry's recorded value for a registered proof")


def model_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a model's weights (entries `model.*`), precision-agnostic: float tensors are
    hashed as float32 (fp16 → fp32 is exact), so a fp16 parent and an fp32 child that holds the
    same values agree."""
    h = hashlib.sha256(b"pol.model.v1\x00")
    for name in sorted(n for n in tensors if n.startswith(MODEL_PREFIX)):
        t = tensors[name].detach().to("cpu")
        if t.is_floating_point():
            t = t.to(torch.float32)
        t = t.contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def model_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}


def final_model(proof) -> dict[str, torch.Tensor]:
    """The model entries of a proof's last checkpoint (digest checked by the reader)."""
    return model_tensors(proof.load_checkpoint(proof.manifest.total_steps))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[bool, str]:
    """Exact comparison of two model weight dicts (values compared as float32 for float tensors)."""
    if set(a) != set(b):
        diff = sorted(set(a) ^ set(b))[:3]
        return False, f"different parameter names ({', '.join(diff)})"
    for k in sorted(a):
        x, y = a[k], b[k]
        if tuple(x.shape) != tuple(y.shape):
            return False, f"{k}: shape {tuple(x.shape)} vs {tuple(y.shape)}"
        if x.is_floating_point() and y.is_floating_point():
            x, y = x.to(torch.float32), y.to(torch.float32)
        if x.dtype != y.dtype or not torch.equal(x.cpu(), y.cpu()):
            n = int((x.cpu() != y.cpu()).sum()) if x.dtype == y.dtype else x.numel()
            return False, f"{k} differs in {n} of {x.numel()} value(s)"
    return True, ""


def find_parent_dir(digest: str, dirs: tuple[str, ...]) -> str | None:
    from pol.proof.reader import read_manifest
    for d in dirs:
        try:
            m = read_manifest(d)
        except PolError:
            continue
        if m.root_digest == digest:
            return d
    return None


def registry_lookup(path: str, digest: str) -> tuple[Any, str]:
    """(entry, problem): the earliest "verdict" entry that says `digest` is valid, from a ledger
    that verifies (hash chain, signatures)."""
    from pol.crypto import CryptoError, Ledger
    if not Path(path).is_file():
        raise ConfigError(f"--registry {path}: no such file")
    try:
        with Ledger(path, create=False) as led:
            rep = led.verify()
            if not rep.ok:
                return None, (f"the registry {path} does not verify ({len(rep.problems)} "
                              f"problem(s), first: {rep.problems[0]})")
            found = [e for e in led.find("verdict", root_digest=digest)
                     if e.payload.get("verdict") == "valid"]
    except CryptoError as e:
        raise e.within(f"--registry {path}") from None
    return (found[0] if found else None), ""


def _vsr(payload: dict) -> float:
    for key in ("vsr_chain", "vsr"):
        v = payload.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0:
            return float(v)
    return 1.0


def check_parent(report, manifest, w0: dict[str, torch.Tensor], options, verify_fn) -> None:
    # long: the chain-of-trust check: parent lookup, recursion and its report entries in one place
    """Add the "initialization" (W_0 = parent's final weights) and "chain of trust" checks."""
    child = manifest.root_digest
    parent = manifest.init["root_digest"]
    visited = tuple(options.visited) + (child,)
    limit = options.max_chain_depth
    short = parent[:16] + "…"

    def fail(reason: str) -> None:
        report.add("initialization", False, f"warm start from parent {short}: {reason}")
        report.add("chain of trust", False, reason, value={"chain": list(visited) + [parent]})

    if parent in visited:
        fail(f"cycle of parents: {short} is already in the chain being verified")
        return
    if len(visited) > limit:
        fail(f"chain of parents deeper than the limit of {limit}")
        return

    parent_dir = find_parent_dir(parent, tuple(options.parents))
    entry, problem = (None, "")
    if options.registry:
        entry, problem = registry_lookup(options.registry, parent)

    w0_model = model_tensors(w0)
    if entry is not None:
        p = entry.payload
        vsr = _vsr(p)
        sub_chain = [x for x in p.get("chain", [parent]) if isinstance(x, str)] or [parent]
        if parent_dir is not None:
            from pol.proof.reader import open_proof
            ok, why = same_weights(w0_model, final_model(open_proof(parent_dir, options.limits)))
        elif isinstance(p.get("final_model_sha256"), str):
            ok = model_digest(w0_model) == p["final_model_sha256"]
            why = "" if ok else "its model digest differs from the registered final weights"
        else:
            ok, why = False, ("the registry entry records no final-weights digest; pass the "
                              "parent proof with --parent DIR")
        report.add("initialization", ok,
                   f"W_0 equals the final weights of parent {short} exactly" if ok else
                   f"W_0 is not the final weights of parent {short}: {why}")
        chain = [child] + sub_chain
        if any(chain.count(x) > 1 for x in chain):
            report.add("chain of trust", False, "cycle of parents in the registered chain",
                       value={"chain": chain})
            return
        report.add("chain of trust", True,
                   f"parent {short} found in the registry (seq {entry.seq}, signed by "
                   f"{entry.signer_key_id}); chain of {len(chain)} proof(s), VSR product "
                   f"{vsr:.4g} ({VSR_NOTE})",
                   value={"chain": chain, "vsr_product": vsr, "source": "registry",
                          "note": VSR_NOTE})
        return

    if parent_dir is None:
        extra = f" ({problem})" if problem else ""
        fail("unknown parent: not in the registry and no --parent directory holds it" + extra)
        return

    sub = dataclasses.replace(options, visited=visited, request_data=None, reveal=None,
                              ledger=None, progress=False)
    try:
        prep = verify_fn(parent_dir, sub)
    except PolError as e:
        fail(f"the parent proof in {parent_dir} is unusable: {e}")
        return
    from pol.proof.reader import open_proof
    try:
        ok, why = same_weights(w0_model, final_model(open_proof(parent_dir, options.limits)))
    except PolError as e:
        ok, why = False, str(e)
    report.add("initialization", ok,
               f"W_0 equals the final weights of parent {short} exactly" if ok else
               f"W_0 is not the final weights of parent {short}: {why}")
    if not prep.valid:
        bad = [c.name for c in prep.checks if c.blocks]
        report.add("chain of trust", False, f"the parent proof {short} in {parent_dir} is "
                   f"{prep.verdict} (failed: {', '.join(bad)})",
                   value={"chain": list(visited) + [parent], "parent_failed": bad})
        return
    sub_chk = next((c for c in prep.checks if c.name == "chain of trust"), None)
    sub_val = sub_chk.value if sub_chk is not None and isinstance(sub_chk.value, dict) else {}
    chain = [child] + list(sub_val.get("chain", [parent]))
    vsr = float(sub_val.get("vsr_product", 1.0))
    report.add("chain of trust", True,
               f"parent {short} verified now from {parent_dir}; chain of {len(chain)} proof(s), "
               f"VSR product {vsr:.4g} ({VSR_NOTE})",
               value={"chain": chain, "vsr_product": vsr, "source": "verified",
                      "note": VSR_NOTE})


def load_parent_state(path: str, limits=None) -> tuple[str, dict[str, torch.Tensor]]:
    """(root digest, final model weights) of a parent proof, for a warm start."""
    from pol.proof.reader import open_proof
    try:
        proof = open_proof(path, limits)
    except ProofFormatError as e:
        raise ConfigError(f"--init-from {path}: {e}") from None
    return proof.manifest.root_digest, final_model(proof)


def record_verdict(db: str, key_path: str, report, proof_path: str,
                   passphrase_env: str | None = None) -> Any:
    """Append a "verdict" entry for a valid report (what makes a ledger a registry).
    `passphrase_env`: environment variable holding the key file's passphrase."""
    from pol.crypto import CryptoError, Ledger, load_signing_key
    from pol.crypto.keys import passphrase_from_env
    from pol.proof.reader import open_proof
    if not report.valid:
        raise ConfigError("only a valid proof is recorded")
    proof = open_proof(proof_path)
    chk = next((c for c in report.checks if c.name == "chain of trust"), None)
    val = chk.value if chk is not None and isinstance(chk.value, dict) else {}
    payload = {"root_digest": report.root_digest, "verdict": "valid", "vsr": 1.0,
               "vsr_chain": float(val.get("vsr_product", 1.0)),
               "chain": list(val.get("chain", [report.root_digest])),
               "final_model_sha256": model_digest(final_model(proof)),
               "policy": report.policy}
    try:
        key = load_signing_key(key_path, passphrase_from_env(passphrase_env))
        with Ledger(db) as led:
            return led.append("verdict", payload, key)
    except CryptoError as e:
        raise e.within("cannot record the verdict") from None
