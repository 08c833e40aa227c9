"""A distributed job's settings, and the worker behaviours a simulation may assign.

Everything here is plain data (no torch): the CLI parses into a `ClusterConfig`, and every rank of a
job builds the same one from the same command line.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from pol.errors import ConfigError

# kind: (default value, what the value means, what the worker does)
KINDS: dict[str, tuple[float | None, str, str]] = {
    "honest": (None, "", "trains its assignment through pol's step and returns its proof"),
    "noise": (0.1, "σ", "returns the received weights plus Gaussian noise N(0, σ²); its proof is "
              "its honest record with the last checkpoint replaced by the noisy weights"),
    "signflip": (None, "", "returns the received weights minus its honest update (the last "
                 "checkpoint replaced)"),
    "scale": (10.0, "factor", "returns the received weights plus factor × its honest update "
              "(the last checkpoint replaced)"),
    "lazy": (0.5, "fraction done", "computes only the first fraction of its steps and repeats "
             "its last update for the rest, claiming them all"),
    "stale": (None, "", "from its second round on, returns the update and proof of an earlier "
              "round again"),
    "freerider": (None, "", "returns the weights it received, with a proof whose checkpoints "
                  "all hold them (no training)"),
    "copycat": (None, "", "returns another worker's submission of the same round (read from the "
                "shared store)"),
    "otherdata": (None, "", "trains on other data than assigned (its shard's labels shifted by "
                  "one class) and claims the assigned dataset in its proof"),
    "forge": (None, "", "trains nothing: one gradient step extrapolated to the whole round, the "
              "checkpoints on the straight line to it (the interpolation forgery of `pol attack "
              "fang`/`zhang-init`, from the received weights), the assigned batches recorded"),
    "sparse": (0.05, "fraction faked", "honest except a fraction of its steps, chosen at random "
               "and packed into as few segments as possible, where it repeats its last update "
               "instead of computing one"),
    "crash": (1.0, "round", "dies (exits) in the middle of this round"),
    "hang": (1.0, "round", "stops responding in the middle of this round (its process stays)"),
    "late": (1.0, "round", "joins the job only once this round has started"),
}

# kinds that send an update they did not compute as assigned (the coordinator must reject it)
BYZANTINE = ("noise", "signflip", "scale", "lazy", "stale", "freerider", "copycat", "otherdata",
             "forge", "sparse")
FAULTS = ("crash", "hang")  # no update at all from the round they act in
AGGREGATES = ("pol", "mean", "median")
KIND_NAMES = ", ".join(k for k in KINDS if k != "honest")


@dataclass(frozen=True)
class Behaviour:
    """What one worker does: a kind of KINDS and its value (None: the kind's default)."""

    kind: str = "honest"
    value: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown worker behaviour {self.kind!r}; known: "
                              f"{', '.join(KINDS)}")
        if self.value is not None and KINDS[self.kind][1] == "":
            raise ConfigError(f"behaviour {self.kind} takes no value")

    @property
    def v(self) -> float:
        """The value, or the kind's default."""
        default = KINDS[self.kind][0]
        return float(self.value if self.value is not None else (default or 0.0))

    def acts(self, round_: int, participation: int) -> bool:
        """Whether the behaviour deviates from honest work in this round (the simulation's ground
        truth, never read by the coordinator's verdicts). `participation`: how many rounds this
        worker took part in before this one."""
        if self.kind in ("honest", "late"):
            return False
        if self.kind in FAULTS:
            return round_ >= int(self.v)
        if self.kind == "stale":
            return participation >= 1
        return True

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}={self.value:g}"


def parse_byzantine(text: str | None) -> dict[int, Behaviour]:
    """"1:noise,2:lazy=0.25,5:crash=1" → {1: Behaviour("noise"), ...} (worker ranks from 1)."""
    out: dict[int, Behaviour] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        rank, sep, what = part.partition(":")
        kind, eq, value = what.partition("=")
        try:
            r = int(rank)
            val = float(value) if eq else None
        except ValueError:
            raise ConfigError(f"--byzantine {part!r}: expected RANK:KIND or RANK:KIND=VALUE "
                              "(e.g. 2:lazy=0.5)") from None
        if not sep or r in out:
            raise ConfigError(f"--byzantine {part!r}: expected RANK:KIND, each rank once")
        out[r] = Behaviour(kind.strip(), val)
    return out


@dataclass(frozen=True)
class ClusterConfig:
    """One distributed job. Rank 0 is the coordinator, ranks 1..workers the workers.

    Each round every worker gets the current weights, `local_steps` steps of batch `batch_size` on a
    shard drawn by the coordinator's seed, and records them with a checkpoint every `segment`
    steps; the coordinator replays `budget` of each worker's steps (top-`q` segments by claimed
    update, the rest at random from its own entropy; `budget` 1: every segment) and averages the
    accepted updates (`aggregate` "pol"; "mean" and "median" aggregate everything unverified, the
    baselines). `device` is where workers train and the coordinator replays (the proofs record it;
    exact replay needs the same kind of device); the rounds travel over the c10d store whatever
    the `backend` (gloo: many workers may share one GPU; nccl: one GPU per rank)."""

    out: str = "cluster-run"
    workers: int = 3
    rounds: int = 3
    task: str = "digits-mlp"
    model_kwargs: dict = field(default_factory=dict)  # overrides of the task's model arguments
    dataset_params: dict = field(default_factory=dict)  # overrides of the task's dataset parameters
    lr: float | None = None
    local_steps: int = 100
    segment: int = 1
    batch_size: int = 8
    seed: int = 0
    budget: float = 0.1
    q: int = 1
    aggregate: str = "pol"
    byzantine: dict = field(default_factory=dict)  # {worker rank: Behaviour}
    require_exact: bool = True
    threads: int = 1  # torch threads per worker (recorded in the spec; the replay uses them)
    device: str = "cpu"
    # pol's exact mode (StepSpec.exact): float64 steps with a rounding log, which replay bitwise on
    # any device, so workers on other hardware than the coordinator's still need exact replay
    exact: bool = False
    backend: str = "gloo"
    round_timeout: float = 300.0  # seconds a round waits for results at most
    heartbeat_timeout: float = 10.0  # a worker silent this long is taken as dead
    join_timeout: float = 300.0  # how long round 0 waits for `quorum` workers
    quorum: int = 0  # workers needed to start (0: all)
    keep_proofs: str = "rejected"  # all | rejected | none: which received proofs stay on disk
    resume: bool = False  # continue the run in `out` if there is one
    die_at: str = ""  # fault injection (tests): "ROUND:verified" or "ROUND:committed"

    def __post_init__(self) -> None:
        if self.workers < 1 or self.rounds < 1 or self.local_steps < 1 or self.segment < 1:
            raise ConfigError("workers, rounds, local steps and segment must be positive")
        if self.batch_size < 1 or self.threads < 1:
            raise ConfigError("batch size and threads must be positive")
        if not 0 < self.budget <= 1:
            raise ConfigError("--budget is a fraction of each worker's steps in (0, 1]")
        if self.q < 1:
            raise ConfigError("--q must be at least 1")
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"--aggregate: one of {', '.join(AGGREGATES)}")
        if self.keep_proofs not in ("all", "rejected", "none"):
            raise ConfigError("--keep-proofs: all, rejected or none")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError("--device: cpu or cuda")
        if self.backend not in ("gloo", "nccl"):
            raise ConfigError("--backend: gloo or nccl")
        if self.backend == "nccl" and self.device != "cuda":
            raise ConfigError("--backend nccl needs --device cuda")
        bad = [r for r in self.byzantine if not 1 <= int(r) <= self.workers]
        if bad:
            raise ConfigError(f"--byzantine: worker rank(s) {bad} outside 1..{self.workers}")
        if not 0 <= self.quorum <= self.workers:
            raise ConfigError(f"--quorum: 0..{self.workers}")

    @property
    def world_size(self) -> int:
        return self.workers + 1

    def behaviour(self, rank: int) -> Behaviour:
        return self.byzantine.get(rank, Behaviour())

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues (the rest may change:
        timeouts, retention, the number of rounds to run)."""
        keep = ("task", "model_kwargs", "lr", "local_steps", "segment", "batch_size", "seed",
                "threads", "device") + (("dataset_params",) if self.dataset_params else ()) \
            + (("exact",) if self.exact else ())
        return {k: getattr(self, k) for k in keep}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["byzantine"] = {str(r): str(b) for r, b in sorted(self.byzantine.items())}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ClusterConfig":
        d = json.loads(text)
        names = {f.name for f in fields(cls)}
        byz = parse_byzantine(",".join(f"{r}:{b}" for r, b in d.pop("byzantine", {}).items()))
        return cls(**{k: v for k, v in d.items() if k in names}, byzantine=byz)

    def with_(self, **changes: Any) -> "ClusterConfig":
        return replace(self, **changes)
