"""How the ranks talk: point to point through torch.distributed's key-value store, with timeouts.

A collective (broadcast, gather) on gloo blocks until every rank takes part, so one dead or hung
worker would stop the job. The round protocol therefore uses only the c10d store (`TCPStore`, the
one torchrun's rendezvous provides, or one the launcher hosts): the coordinator writes the round's
weights and each worker's task under keys, workers write their results under their own keys, and
the coordinator polls with a deadline. Workers beat a heartbeat counter from a thread of their own;
a worker whose counter stops for `heartbeat_timeout` seconds is taken as dead at once, one that
beats but sends nothing is dropped at the round's deadline. A dropped worker must register again
to be given work (a hung one never does; a late one registers when it comes).

Keys (under a prefix per job attempt, so that a restarted job never reads an old one's keys):
`ready/W`, `hb/W`, `current`, `round/R/open`, `round/R/weights`, `round/R/task/W`,
`round/R/result/W`, `round/R/closed`, `done`. Weights, tasks and results go in parts of at most
`PART` bytes (`put`, `fetch`: the store refuses a message over 8 MiB; a ResNet-20 proof is larger).

`LocalLink` runs the same protocol in one process (the workers called in turn), for the
measurements that need many worker-rounds.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
import time
from typing import Any, Iterator

POLL = 0.02
# the bytes of one store value at most: torch's TCPStore (libuv server) drops a client whose
# message exceeds 8 MiB, so a larger value (a proof, the weights of a large model) goes in parts
PART = 4 << 20
MAX_PARTS = (1 << 31) // PART  # a result of 2 GiB at most (audit.MAX_MESSAGE_BYTES)


def _env_int(name: str, default: int | None = None) -> int:
    v = os.environ.get(name)
    if v is None:
        if default is None:
            from pol.errors import ConfigError
            raise ConfigError(f"{name} is not set: launch with torchrun or `pol distributed`")
        return default
    return int(v)


def connect(rank: int, timeout: float):
    """A client of the job's store (MASTER_ADDR:MASTER_PORT): torchrun's agent hosts it
    (TORCHELASTIC_USE_AGENT_STORE), `pol distributed` hosts it in the launching process
    (POL_CLUSTER_HOSTED_STORE); otherwise rank 0 hosts it."""
    import torch.distributed as dist
    hosted = (os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
              or os.environ.get("POL_CLUSTER_HOSTED_STORE") == "1")
    store = dist.TCPStore(os.environ.get("MASTER_ADDR", "127.0.0.1"), _env_int("MASTER_PORT"),
                          None, rank == 0 and not hosted,
                          timeout=datetime.timedelta(seconds=timeout), wait_for_workers=False)
    return job_store(store, _env_int("TORCHELASTIC_RESTART_COUNT", 0))


def job_store(store, attempt: int = 0):
    """The keys of one attempt of the job (torchrun restarts a failed job as a new attempt)."""
    import torch.distributed as dist
    return dist.PrefixStore(f"pol.cluster/attempt{attempt}", store)


def init_group(backend: str, store, rank: int, world_size: int, timeout: float) -> bool:
    """The job's process group (the rendezvous: every rank present). No collective runs on it
    during the rounds (see the module docstring); NCCL only where CUDA is available."""
    import torch
    import torch.distributed as dist
    if backend == "nccl" and not torch.cuda.is_available():
        from pol.errors import ConfigError
        raise ConfigError("--backend nccl needs CUDA")
    if dist.is_initialized():
        return False
    dist.init_process_group(backend, store=dist.PrefixStore("pg/", store), rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=timeout))
    return True


class Keys:
    """The store's key names, in one place."""

    done = "done"
    current = "current"

    @staticmethod
    def ready(w: int) -> str:
        return f"ready/{w}"

    @staticmethod
    def hb(w: int) -> str:
        return f"hb/{w}"

    @staticmethod
    def round(r: int, what: str, w: int | None = None) -> str:
        return f"round/{r}/{what}" if w is None else f"round/{r}/{what}/{w}"


def has(store, key: str) -> bool:
    return bool(store.check([key]))


def get_json(store, key: str) -> Any:
    return json.loads(store.get(key))


def put(store, key: str, data: bytes) -> None:
    """`data` under `key` in parts of PART bytes (`key/part/I`), then `key` itself (the number of
    parts): whoever sees `key` finds every part."""
    n = max(1, -(-len(data) // PART))
    for i in range(n):
        store.set(f"{key}/part/{i}", data[i * PART:(i + 1) * PART])
    store.set(key, str(n))


def fetch(store, key: str) -> bytes:
    """What `put` stored under `key` (which is there). A writer that is not trusted may have
    written anything: a count that is not one, or parts missing, read as b"" (a malformed
    message) instead of waiting for them."""
    raw = store.get(key)
    n = int(raw) if raw.isdigit() and len(raw) < 8 else 0
    if not 1 <= n <= MAX_PARTS:
        return b""
    parts = [f"{key}/part/{i}" for i in range(n)]
    if not store.check(parts):
        return b""
    return b"".join(store.get(p) for p in parts)


def drop(store, key: str) -> None:
    """Delete what `put` stored under `key` (nothing if it is not there)."""
    if not has(store, key):
        return
    raw = store.get(key)
    n = int(raw) if raw.isdigit() and len(raw) < 8 else 0
    for i in range(min(n, MAX_PARTS)):
        store.delete_key(f"{key}/part/{i}")
    store.delete_key(key)


class Heartbeat:
    """A thread that adds 1 to `hb/W` every `period` seconds, on a store client of its own."""

    def __init__(self, store, worker: int, period: float = 0.5) -> None:
        self.store, self.key, self.period = store, Keys.hb(worker), period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pol-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.store.add(self.key, 1)
            except Exception:  # noqa: BLE001 - the store is gone: the job is over
                return
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()


class StoreLink:
    """The coordinator's side of the protocol over the store."""

    def __init__(self, store, heartbeat_timeout: float) -> None:
        self.s = store
        self.heartbeat_timeout = heartbeat_timeout

    def ready(self, workers: list[int]) -> list[int]:
        return [w for w in workers if has(self.s, Keys.ready(w))]

    def wait_ready(self, workers: list[int], want: int, timeout: float) -> list[int]:
        end = time.monotonic() + timeout
        while True:
            got = self.ready(workers)
            if len(got) >= want or time.monotonic() > end:
                return got
            time.sleep(POLL * 5)

    def open_round(self, r: int, weights: bytes, tasks: dict[int, bytes]) -> None:
        put(self.s, Keys.round(r, "weights"), weights)
        for w, task in tasks.items():
            put(self.s, Keys.round(r, "task", w), task)
        self.s.set(Keys.round(r, "open"), json.dumps({"participants": sorted(tasks)}))
        self.s.set(Keys.current, str(r))

    def _beat(self, w: int) -> int:
        return int(self.s.add(Keys.hb(w), 0))

    def collect(self, r: int, participants: list[int], deadline: float
                ) -> Iterator[tuple[int, bytes | None, str]]:
        """(worker, message or None, why none) as results come; every participant once."""
        now = time.monotonic()
        seen = {w: (self._beat(w), now) for w in participants}
        pending = sorted(participants)
        while pending:
            for w in list(pending):
                key = Keys.round(r, "result", w)
                if has(self.s, key):
                    pending.remove(w)
                    yield w, fetch(self.s, key), ""
                    continue
                beat, now = self._beat(w), time.monotonic()
                if beat != seen[w][0]:
                    seen[w] = (beat, now)
                elif now - seen[w][1] > self.heartbeat_timeout:
                    pending.remove(w)
                    yield w, None, f"crashed (no heartbeat for {self.heartbeat_timeout:g}s)"
            if pending and time.monotonic() > deadline:
                for w in pending:
                    yield w, None, "timed out (heartbeat alive, no result by the deadline)"
                return
            time.sleep(POLL)

    def close_round(self, r: int, participants: list[int], dropped: list[int]) -> None:
        self.s.set(Keys.round(r, "closed"), "1")
        for w in dropped:
            self.s.delete_key(Keys.ready(w))
        for w in participants:
            drop(self.s, Keys.round(r, "task", w))
            drop(self.s, Keys.round(r, "result", w))
        drop(self.s, Keys.round(r, "weights"))

    def finish(self) -> None:
        self.s.set(Keys.done, "1")


class LocalLink:
    """The same protocol in one process: `runtimes[w].handle_local(r, weights, task, peek)` is
    called in turn, copiers last (None: the worker crashed or hung this round, and stays
    away)."""

    def __init__(self, runtimes: dict[int, Any]) -> None:
        self.runtimes = runtimes
        self.gone: set[int] = set()
        self._open: tuple[int, bytes, dict[int, bytes]] | None = None
        self.results: dict[int, bytes] = {}

    def ready(self, workers: list[int]) -> list[int]:
        return [w for w in workers if w not in self.gone and self.runtimes[w].ready()]

    def wait_ready(self, workers: list[int], want: int, timeout: float) -> list[int]:
        return self.ready(workers)

    def open_round(self, r: int, weights: bytes, tasks: dict[int, bytes]) -> None:
        self._open = (r, weights, tasks)
        for rt in self.runtimes.values():
            rt.observe(r)

    def peek(self, r: int) -> dict[int, bytes]:
        return dict(self.results)

    def collect(self, r: int, participants: list[int], deadline: float
                ) -> Iterator[tuple[int, bytes | None, str]]:
        _, weights, tasks = self._open
        self.results = {}
        for w in sorted(participants, key=lambda w: (getattr(self.runtimes[w], "defer", False), w)):
            msg = self.runtimes[w].handle_local(r, weights, tasks[w], self.peek)
            if msg is None:
                self.gone.add(w)
                yield w, None, "crashed (simulated)"
                continue
            self.results[w] = msg
            yield w, msg, ""

    def close_round(self, r: int, participants: list[int], dropped: list[int]) -> None:
        self.gone.update(dropped)

    def finish(self) -> None:
        pass
