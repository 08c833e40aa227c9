"""Starting a job.

- `run_rank(config)`: this process is one rank of a job launched by torchrun (its env rendezvous:
  RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), on one machine or many. Rank 0 coordinates.
- `run_local(config)`: every rank on this machine, as processes: spawned here (the store hosted by
  this process, so that it outlives a killed coordinator), or torchrun run as a subprocess.
- `run_inprocess(config)`: the same rounds in one process (workers called in turn), for
  measurements that need many worker-rounds.
- `run(config, launcher)`: `run_rank` when launched as a rank, else `run_local` or `run_inprocess`.

About torchrun and crashes: torchrun's agent stops every rank when one exits with an error (and
restarts the whole job when given `--max-restarts`; the coordinator then continues from its last
accepted round). A worker that dies therefore ends a torchrun job; one that hangs does not.
`run_local`'s own spawner watches only the coordinator: a dead worker is just absent.

On a GPU (`device` "cuda"): every rank sets `CUBLAS_WORKSPACE_CONFIG` before its first CUDA call
(deterministic cuBLAS needs it, and the prover's and the replay's workspace must agree) and takes
GPU LOCAL_RANK modulo the machine's GPUs (one GPU: all ranks share it, over gloo); `run_local`
starts the ranks as fresh interpreters (spawn), never forked from a process that may have touched
CUDA. Nothing on a GPU crosses processes: weights and proofs travel as host bytes in the store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from pol.cluster import transport
from pol.cluster.config import ClusterConfig
from pol.cluster.coordinator import Coordinator, JobResult
from pol.cluster.worker import WorkerRuntime, serve
from pol.errors import ConfigError, PolError

ENV_CONFIG = "POL_CLUSTER_CONFIG"
LAUNCHERS = ("spawn", "torchrun", "inprocess")
# imported once by the fork server, not once per rank (sklearn: the digits loader; torch._dynamo:
# what the first torch optimizer imports; seconds each on a small CPU)
PRELOAD = ["pol.cluster.launch", "pol.cluster.behaviours", "pol.cluster.audit", "pol.verifier",
           "pol.prover.recorder", "pol.prover.trainer", "pol.attacks.common", "pol.crypto",
           "pol.crypto.archive", "pol.protocol.chain", "pol.step.context", "pol.step.core",
           "pol.datasets", "sklearn.datasets", "torch._dynamo", "torch.optim"]


class JobFailed(PolError):
    """The coordinator did not finish the job (killed, or an error: see its output)."""

    exit_code = 1


def launched_as_rank() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_PORT" in os.environ


def run_rank(config: ClusterConfig) -> JobResult | None:
    """Run this rank of the job; rank 0 returns the JobResult, workers None."""
    import torch
    import torch.distributed as dist
    rank, ws = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if ws != config.world_size:
        raise ConfigError(f"{ws} processes were launched for {config.workers} workers and a "
                          f"coordinator: pass --workers {ws - 1}")
    prepare_device(config)
    torch.set_num_threads(config.threads)
    store = transport.connect(rank, config.join_timeout)
    made = transport.init_group(config.backend, store, rank, ws, config.join_timeout)
    try:
        if rank == 0:
            c = Coordinator(config, transport.StoreLink(store, config.heartbeat_timeout))
            c.hard_exit = True
            result = c.run()
            _wait_goodbyes(store, config)
            return result
        try:
            serve(config, rank, store, transport.connect(rank, config.join_timeout))
        finally:
            _goodbye(store, rank)
        return None
    finally:
        if made:
            dist.destroy_process_group()


def device_env(config: ClusterConfig) -> dict[str, str]:
    """What a rank's environment needs before its first CUDA call: the cuBLAS workspace that
    deterministic algorithms need (read once, when cuBLAS starts: set later, it is too late)."""
    if config.device != "cuda":
        return {}
    from pol.step.runtime import CUBLAS_WORKSPACE
    return {"CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG",
                                                      CUBLAS_WORKSPACE)}


def prepare_device(config: ClusterConfig) -> None:
    """Before this rank touches CUDA: its environment (`device_env`), a GPU that is there, and
    its GPU (LOCAL_RANK modulo the GPUs of the machine: on one GPU, every rank shares it)."""
    if config.device != "cuda":
        return
    for k, v in device_env(config).items():
        os.environ.setdefault(k, v)
    import torch
    if not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is available to this process")
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())


def _goodbye(store, rank: int) -> None:
    try:
        store.set(f"bye/{rank}", "1")
    except Exception:  # noqa: BLE001 - the store is gone already
        pass


def _wait_goodbyes(store, config: ClusterConfig) -> None:
    """Rank 0 may host the store: give the live workers a moment to see `done` and leave."""
    end = time.monotonic() + min(5.0, config.heartbeat_timeout)
    while time.monotonic() < end and not all(
            transport.has(store, f"bye/{w}") for w in range(1, config.world_size)):
        time.sleep(transport.POLL * 5)


def _child(rank: int, config_json: str, env: dict[str, str]) -> None:
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank))
    try:
        run_rank(ClusterConfig.from_json(config_json))
    except BaseException:  # noqa: BLE001 - a rank's error is printed, the exit code says it
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


def _mp_context(config: ClusterConfig):
    """How the ranks start: on a GPU as fresh interpreters (spawn: nothing of CUDA inherited
    through a fork); else forked from a server that imported torch and pol once for all ranks."""
    import multiprocessing as mp
    if config.device == "cuda":
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _spawn(config: ClusterConfig) -> int:
    """Every rank as a process of this machine; the store hosted here. The coordinator's exit
    code."""
    import datetime

    import torch.distributed as dist
    store = dist.TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=config.join_timeout))
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port),
           "WORLD_SIZE": str(config.world_size), "POL_CLUSTER_HOSTED_STORE": "1",
           **device_env(config)}
    ctx = _mp_context(config)
    procs = [ctx.Process(target=_child, args=(r, config.to_json(), env), name=f"pol-rank{r}")
             for r in range(config.world_size)]
    for p in procs:
        p.start()
    procs[0].join()
    code = procs[0].exitcode
    try:
        transport.job_store(store).set(transport.Keys.done, "1")  # whatever happened: leave
    except Exception:  # noqa: BLE001
        pass
    for p in procs[1:]:
        p.join(timeout=config.heartbeat_timeout + 5)
        if p.is_alive():  # a hung worker that did not see `done`: ours, stopped by its handle
            p.terminate()
            p.join()
    return int(code if code is not None else 1)


def _torchrun(config: ClusterConfig) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={config.world_size}", "-m", "pol.cluster.launch"]
    env = {**os.environ, ENV_CONFIG: config.to_json(), **device_env(config)}
    return subprocess.run(cmd, env=env, check=False).returncode


def run_local(config: ClusterConfig, launcher: str = "spawn") -> JobResult:
    """A job of `config.workers` workers and a coordinator, all on this machine."""
    if launcher not in ("spawn", "torchrun"):
        raise ConfigError(f"launcher: spawn or torchrun, not {launcher!r}")
    code = _spawn(config) if launcher == "spawn" else _torchrun(config)
    job = Path(config.out) / "job.json"
    if code != 0 or not job.exists():
        raise JobFailed(f"the coordinator exited with code {code} (the run in {config.out} "
                        "continues with --resume)")
    return JobResult.from_dict(json.loads(job.read_text()))


def run_inprocess(config: ClusterConfig) -> JobResult:
    runtimes = {w: WorkerRuntime(config, w) for w in range(1, config.workers + 1)}
    try:
        return Coordinator(config, transport.LocalLink(runtimes)).run()
    finally:
        for rt in runtimes.values():
            rt.close()


def run(config: ClusterConfig, launcher: str = "spawn") -> JobResult | None:
    """`pol distributed`: this rank when launched as one (torchrun), else the whole job here."""
    if launched_as_rank():
        return run_rank(config)
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher: one of {', '.join(LAUNCHERS)}")
    if config.device == "cuda":  # said here once, not from every rank
        import torch
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is available here")
    if launcher == "inprocess":
        return run_inprocess(config)
    return run_local(config, launcher)


if __name__ == "__main__":  # a rank under torchrun (`run_local(..., "torchrun")`)
    run_rank(ClusterConfig.from_json(os.environ[ENV_CONFIG]))
