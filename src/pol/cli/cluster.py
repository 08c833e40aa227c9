"""`pol distributed`: training spread over untrusted workers, every update verified
(pol.cluster, docs/DISTRIBUTED.md). Under torchrun it runs the rank it was launched as; otherwise
it starts the whole job on this machine."""

from __future__ import annotations

import click

from pol.cli import options as opt
from pol.cli import render
from pol.cli.exits import handle_errors
from pol.cluster.config import AGGREGATES, KIND_NAMES, ClusterConfig

D = ClusterConfig  # the defaults shown are the library's


def _d(name: str):
    return opt.default_of(D, name)


@click.command("distributed")
@click.option("--workers", type=click.IntRange(1), default=_d("workers"), show_default=True,
              help="Workers (ranks 1..N; rank 0 coordinates). Under torchrun: WORLD_SIZE - 1.")
@click.option("--rounds", type=click.IntRange(1), default=_d("rounds"), show_default=True)
@click.option("--task", default=_d("task"), show_default=True, help="A built-in task (pol tasks).")
@click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
              help="Override an argument of the task's model (JSON value), e.g. hidden=[32].")
@click.option("--dataset-arg", "dataset_args", multiple=True, metavar="KEY=VALUE",
              help="Override a parameter of the task's dataset (JSON value), e.g. n_train=16000.")
@click.option("--lr", type=float, help="The optimizer's lr (default: the task's).")
@click.option("--local-steps", type=click.IntRange(1), default=_d("local_steps"),
              show_default=True, help="Steps each worker trains per round (one pass over its "
              "shard).")
@click.option("--segment", type=click.IntRange(1), default=_d("segment"), show_default=True,
              help="Checkpoint every this many steps (a replayed segment's length).")
@click.option("--batch-size", type=click.IntRange(1), default=_d("batch_size"),
              show_default=True)
@click.option("--seed", type=opt.SEED, default=_d("seed"), show_default=True,
              help="The coordinator's seed: W_0, every shard and batch order.")
@click.option("--budget", type=float, default=_d("budget"), show_default=True,
              help="Fraction of each worker's steps the coordinator replays (1: all).")
@click.option("--q", type=click.IntRange(1), default=_d("q"), show_default=True,
              help="Of those, segments with the largest claimed update (the rest at random).")
@click.option("--aggregate", type=click.Choice(AGGREGATES), default=_d("aggregate"),
              show_default=True, help="pol: mean of verified updates; mean, median: everything "
              "received, unverified (baselines).")
@click.option("--byzantine", metavar="RANK:KIND[=VALUE],...",
              help=f"Simulated misbehaving workers; kinds: {KIND_NAMES}.")
@click.option("--out", type=click.Path(file_okay=False), default=_d("out"), show_default=True,
              help="The run directory (key, ledger, checkpoints).")
@click.option("--resume", is_flag=True, help="Continue the run in --out (from its last accepted "
              "round) if there is one.")
@click.option("--launcher", type=click.Choice(["spawn", "torchrun", "inprocess"]),
              default="spawn", show_default=True, help="How to start the ranks on this machine.")
@click.option("--round-timeout", type=float, default=_d("round_timeout"), show_default=True)
@click.option("--heartbeat-timeout", type=float, default=_d("heartbeat_timeout"),
              show_default=True)
@click.option("--quorum", type=click.IntRange(0), default=_d("quorum"), show_default=True,
              help="Workers needed before round 0 starts (0: all).")
@click.option("--keep-proofs", type=click.Choice(["all", "rejected", "none"]),
              default=_d("keep_proofs"), show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=_d("device"),
              show_default=True, help="Where workers train and the coordinator replays (cuda: the "
              "ranks of this machine share its GPU(s)).")
@click.option("--backend", type=click.Choice(["gloo", "nccl"]), default=_d("backend"),
              show_default=True, help="torch.distributed's backend (the rounds travel over its "
              "store either way; nccl: one GPU per rank).")
@click.option("--tolerant", is_flag=True, help="Do not require exact (bitwise) replay: workers on "
              "other hardware than the coordinator's.")
@click.option("--exact", is_flag=True, help="pol's exact mode (float64 steps with a rounding log): "
              "bitwise replay on any hardware, so workers on other devices than the "
              "coordinator's need no --tolerant.")
@opt.json_file("Also write the job's summary and every verdict as JSON here.")
@handle_errors
def distributed(workers, rounds, task, model_args, dataset_args, lr, local_steps, segment,
                batch_size, seed, budget, q, aggregate, byzantine, out, resume, launcher,
                round_timeout, heartbeat_timeout, quorum, keep_proofs, device, backend, tolerant,
                exact, json_out):
    """Train TASK spread over untrusted workers on torch.distributed: every update comes with a
    proof, the coordinator verifies a budget of it and aggregates only verified work."""
    from pol.cluster import run
    from pol.cluster.config import parse_byzantine
    config = ClusterConfig(
        out=out, workers=workers, rounds=rounds, task=task, lr=lr,
        model_kwargs=opt.parse_settings(model_args),
        dataset_params=opt.parse_settings(dataset_args), local_steps=local_steps, segment=segment,
        batch_size=batch_size, seed=seed, budget=budget, q=q, aggregate=aggregate,
        byzantine=parse_byzantine(byzantine), resume=resume, round_timeout=round_timeout,
        heartbeat_timeout=heartbeat_timeout, quorum=quorum, keep_proofs=keep_proofs,
        device=device, backend=backend, require_exact=not tolerant, exact=exact)
    render.distributed(run(config, launcher), json_out)
