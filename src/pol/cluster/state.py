"""The coordinator's durable state: what survives a killed coordinator.

A run directory holds the coordinator's signing key, one signed, hash-chained ledger
(`pol.crypto.Ledger`) and the global model after every accepted round. A round is accepted when its
"cluster.round" entry is on the ledger; that entry names the checkpoint file's SHA-256, and the
checkpoint is written (and synced) before it, so a crash at any point leaves either the whole round
or none of it. A restarted coordinator verifies the ledger, takes the last accepted round, checks
its checkpoint against the entry and continues with the next round: nothing accepted is lost, and
no round is accepted twice (the verdicts of a round cut short stay on the ledger, but no round
entry refers to them; the round is run again, from the same assignments).

Ledger entries (kind: payload): "cluster.init" (the run, its identity, W_0's digests),
"cluster.start" (every start of the coordinator: the round it starts at), "cluster.verdict" (every
worker's result, accepted, rejected or absent, with the segments replayed and the entropy that
chose them), "cluster.round" (the accepted round: the new model's digests, the verdicts it counts).
Each round's starting model is also registered alone in `registry/round_R.db` (a "verdict" entry
with its final-weights digest): the registry the verifier resolves a worker's warm start with.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import torch

from pol.cluster import assign
from pol.cluster.config import ClusterConfig
from pol.errors import ConfigError, PolError


class StateError(PolError):
    """The run directory's ledger or checkpoints do not hold together."""

    exit_code = 1


def _sha(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()


class RunState:
    """A run directory (created, or opened to continue)."""

    def __init__(self, config: ClusterConfig, initial: dict[str, torch.Tensor] | None = None
                 ) -> None:
        from pol.crypto import Ledger, generate_keys, load_signing_key
        self.dir = Path(config.out)
        info = self.dir / "run.json"
        if info.exists():
            if not config.resume:
                raise ConfigError(f"{self.dir} holds a run already: pass --resume to continue it")
            run = json.loads(info.read_text())
            if run["identity"] != json.loads(json.dumps(config.identity())):
                raise ConfigError(f"{self.dir} holds a run with other settings "
                                  f"({run['identity']}); it cannot be continued with these")
        else:
            if self.dir.exists() and any(self.dir.iterdir()):
                raise ConfigError(f"{self.dir} exists and is not a run directory")
            run = {"run_id": secrets.token_hex(16), "identity": config.identity(),
                   "created": time.time()}
            generate_keys(self.dir / "key")
            (self.dir / "checkpoints").mkdir(parents=True)
        self.run_id = run["run_id"]
        self.key = load_signing_key(self.dir / "key" / "signing.key")
        self.ledger = Ledger(self.dir / "ledger.db")
        if not info.exists():
            self._init(run, initial)
            info.write_text(json.dumps(run, sort_keys=True))

    def close(self) -> None:
        self.ledger.close()

    def append(self, kind: str, payload: dict):
        return self.ledger.append(kind, {"run_id": self.run_id, **payload}, self.key)

    def _write_checkpoint(self, name: str, weights: dict[str, torch.Tensor]) -> str:
        from pol.util import atomic_write, fsync_dir
        data = assign.weights_bytes(weights)
        atomic_write(self.dir / "checkpoints" / name, data, durable=True)
        fsync_dir(self.dir / "checkpoints")
        return _sha(data)

    def _init(self, run: dict, initial: dict[str, torch.Tensor] | None) -> None:
        if initial is None:
            raise ConfigError("a new run needs its initial weights")
        sha = self._write_checkpoint("init.safetensors", initial)
        self.append("cluster.init", {"identity": run["identity"], "checkpoint": "init.safetensors",
                                     "checkpoint_sha256": sha,
                                     "model_sha256": assign.model_sha(initial)})

    def _mine(self, kind: str) -> list:
        return [e for e in self.ledger.entries(kind) if e.payload.get("run_id") == self.run_id]

    def _load(self, name: str, sha: str) -> dict[str, torch.Tensor]:
        path = self.dir / "checkpoints" / name
        data = path.read_bytes() if path.exists() else b""
        if _sha(data) != sha:
            raise StateError(f"{path} is missing or does not match its ledger entry")
        return assign.weights_from_bytes(data)

    def resume_point(self) -> tuple[int, dict[str, torch.Tensor]]:
        """(the next round to run, the weights it starts from), from the verified ledger."""
        rep = self.ledger.verify(trusted_keys=[self.key.public_key()])
        if not rep.ok:
            raise StateError(f"the run's ledger does not verify: {rep.summary()}")
        inits = self._mine("cluster.init")
        rounds = self._mine("cluster.round")
        if len(inits) != 1:
            raise StateError("the ledger holds no single cluster.init entry for this run")
        numbers = [e.payload["round"] for e in rounds]
        if numbers != list(range(len(rounds))):
            raise StateError(f"the accepted rounds on the ledger are not 0, 1, 2, …: {numbers}")
        last = (rounds[-1] if rounds else inits[0]).payload
        return len(rounds), self._load(last["checkpoint"], last["checkpoint_sha256"])

    def parent(self, r: int, weights: dict[str, torch.Tensor]) -> tuple[dict, Path]:
        """(the manifest init every worker of round r must claim, the registry that holds it)."""
        from pol.crypto import Ledger
        md = assign.model_sha(weights)
        rid = assign.round_model_id(self.run_id, r, md)
        path = self.dir / "registry" / f"round_{r:06d}.db"
        path.parent.mkdir(exist_ok=True)
        with Ledger(path, synchronous="NORMAL") as reg:
            if not reg.find("verdict", root_digest=rid):
                reg.append("verdict", {"root_digest": rid, "verdict": "valid", "vsr": 1.0,
                                       "final_model_sha256": md, "kind": "round-model",
                                       "run_id": self.run_id, "round": r}, self.key)
        return {"kind": "parent", "root_digest": rid}, path

    def commit(self, r: int, weights: dict[str, torch.Tensor], payload: dict):
        """Accept round r: the checkpoint (synced), then its ledger entry (the commit point)."""
        name = f"round_{r:06d}.safetensors"
        sha = self._write_checkpoint(name, weights)
        return self.append("cluster.round", {"round": r, "checkpoint": name,
                                             "checkpoint_sha256": sha,
                                             "model_sha256": assign.model_sha(weights),
                                             **payload})


def accepted_rounds(path: str | Path) -> list[dict]:
    """The "cluster.round" payloads of a run directory's ledger, in order (for tests and
    reports)."""
    from pol.crypto import Ledger
    with Ledger(Path(path) / "ledger.db", create=False) as led:
        return [e.payload for e in led.entries("cluster.round")]
