"""A worker: takes each round's task, trains it through pol (or misbehaves, in a simulation), and
sends its final weights with the proof of its round.

`WorkerRuntime.handle` is one assignment, whatever the transport; `serve` is the worker's loop
over the job's store (`pol.cluster.transport`).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from pol.cluster import assign, transport
from pol.cluster.behaviours import Job, produce
from pol.cluster.config import FAULTS, ClusterConfig


class WorkerFault(Exception):
    """The simulated fault of this round: "crash" (the process dies) or "hang"."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class WorkerRuntime:
    """One worker's state across rounds (its behaviour, what it sent before, its scratch
    directory)."""

    def __init__(self, config: ClusterConfig, rank: int, workdir: str | os.PathLike | None = None
                 ) -> None:
        self.config, self.rank = config, rank
        self.behaviour = config.behaviour(rank)
        self.train, _ = assign.task_data(config.task, config.dataset_params)
        self.rng = np.random.default_rng()  # the worker's own randomness
        self.sent: bytes | None = None  # its first honest message (what a stale worker resends)
        self.participations = 0
        self.seen = -1  # the latest round it has seen open
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"pol-worker{rank}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.defer = self.behaviour.kind == "copycat"  # in one process: after the others

    def ready(self) -> bool:
        """Whether it takes work: a late worker once the round it waits for has started."""
        if self.behaviour.kind == "late":
            return self.seen >= int(self.behaviour.v)
        return True

    def observe(self, r: int) -> None:
        self.seen = max(self.seen, r)

    def handle(self, r: int, weights: bytes, task: bytes,
               peek: Callable[[int], dict[int, bytes]]) -> bytes | None:
        """The message for round r's task (None: nothing to send). Raises WorkerFault."""
        t0 = time.perf_counter()
        b = self.behaviour
        acts = b.acts(r, self.participations)
        self.participations += 1
        if b.kind in FAULTS and acts:
            raise WorkerFault(b.kind)
        if b.kind == "stale" and acts and self.sent is not None:
            return self._as_mine(r, self.sent)
        if b.kind == "copycat":
            others = {w: m for w, m in peek(r).items() if w != self.rank}
            return self._as_mine(r, others[min(others)]) if others else None
        t = json.loads(task)
        from pol.spec import TrainingSpec
        spec = assign.with_own_hardware(TrainingSpec.from_dict(t["spec"]))
        data = assign.shard(self.train, np.asarray(t["indices"], dtype=np.int64))
        out = self.workdir / f"round{r}"
        job = Job(round=r, worker=self.rank, spec=spec, data=data,
                  weights=assign.weights_from_bytes(weights), parent=t["parent"], out=out,
                  rng=self.rng)
        try:
            produced = produce(job, b)
            msg = message(r, self.rank, produced.proof, produced.weights,
                          time.perf_counter() - t0)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if self.sent is None:
            self.sent = msg
        return msg

    def _as_mine(self, r: int, msg: bytes) -> bytes:
        """Someone else's (or an earlier) message, its header claiming this round and worker."""
        m = assign.unpack_message(msg, len(msg))
        return assign.pack_message({**m.header, "round": r, "worker": self.rank}, m.blobs)

    def handle_local(self, r: int, weights: bytes, task: bytes,
                     peek: Callable[[int], dict[int, bytes]]) -> bytes | None:
        try:
            return self.handle(r, weights, task, peek)
        except WorkerFault:
            return None

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def message(r: int, rank: int, proof: Path, weights: dict, seconds: float | None = None
            ) -> bytes:
    """The result message: the proof (a pol archive) and the final weights (safetensors);
    `seconds`, the worker's time on the assignment, is informational (the coordinator reports it
    and trusts nothing of it)."""
    from pol.crypto.archive import pack
    from pol.proof.reader import read_manifest
    buf = io.BytesIO()
    pack(proof, buf)
    header = {"round": r, "worker": rank, "root_digest": read_manifest(proof).root_digest,
              "weights_sha256": assign.model_sha(weights), "seconds": seconds}
    return assign.pack_message(header, {"weights": assign.weights_bytes(weights),
                                        "proof": buf.getvalue()})


def _peek(store, r: int, participants: list[int], timeout: float):
    """A copier's look at the others' results of round r in the store (waits for one)."""
    def peek(_r: int) -> dict[int, bytes]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for w in participants:
                if transport.has(store, transport.Keys.round(r, "result", w)):
                    return {w: transport.fetch(store, transport.Keys.round(r, "result", w))}
            time.sleep(transport.POLL * 5)
        return {}
    return peek


def serve(config: ClusterConfig, rank: int, store, beat_store) -> None:
    """The worker's loop until the coordinator says the job is done."""
    K = transport.Keys
    rt = WorkerRuntime(config, rank)
    hb = transport.Heartbeat(beat_store, rank)
    next_round = 0
    try:
        while not transport.has(store, K.done):
            cur = int(store.get(K.current)) if transport.has(store, K.current) else -1
            rt.observe(cur)
            if rt.ready() and not transport.has(store, K.ready(rank)):
                store.set(K.ready(rank), "1")  # (again, after the coordinator dropped it)
            if cur < next_round or not rt.ready():
                time.sleep(transport.POLL * 2)
                continue
            next_round = cur + 1
            who = transport.get_json(store, K.round(cur, "open"))["participants"]
            if rank not in who:
                continue
            msg = _work(rt, store, cur, who, config)
            if msg is not None and not transport.has(store, K.round(cur, "closed")):
                transport.put(store, K.round(cur, "result", rank), msg)
    finally:
        hb.stop()
        rt.close()


def _work(rt: WorkerRuntime, store, r: int, who: list[int], config: ClusterConfig
          ) -> bytes | None:
    K = transport.Keys
    try:
        weights = transport.fetch(store, K.round(r, "weights"))
        task = transport.fetch(store, K.round(r, "task", rt.rank))
        return rt.handle(r, weights, task, _peek(store, r, [w for w in who if w != rt.rank],
                                                 config.round_timeout / 2))
    except WorkerFault as f:
        if f.kind == "crash":
            os._exit(3)  # dies mid-round: no cleanup, no result, the heartbeat stops
        while not transport.has(store, K.done):  # hangs: alive, silent, never registers again
            time.sleep(0.2)
        return None
