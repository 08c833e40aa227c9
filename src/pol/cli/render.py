"""What the commands print: every line of `pol`'s output is written here.

Each function takes the library's result and writes it with click.echo (stdout; warnings and
notes on stderr). Nothing here decides anything about a proof: the one exception is the mapping of
a verification report to `pol verify`'s exit code (`verify_exit_code`), which is the CLI's
interface, not the verifier's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from pol.cli.exits import (EXIT_INCONCLUSIVE, EXIT_INVALID, EXIT_PENDING, EXIT_UNUSABLE,
                           EXIT_VALID, fail)

echo = click.echo


def write_json(path: str | None, obj: Any, **kw: Any) -> None:
    """Write `obj` as JSON to `path` (--json FILE), when one was given."""
    if path:
        Path(path).write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=1, **kw))


# --------------------------------------------------------------------------------- training

def trained(r: Any, init_from: str | None, ledger_db: str | None, commitment: str | None) -> None:
    echo(f"trained {r.spec.task}: {r.total_steps} steps in {r.train_seconds:.1f}s, "
         f"final loss {r.final_loss:.4f}, test accuracy {r.test_accuracy:.2%}")
    echo(f"proof: {r.proof}  root digest {r.root_digest}")
    if r.spec.device != "cpu" and not r.spec.step.exact:
        echo(f"note: this float32 proof replays bitwise on this kind of {r.spec.device} device; "
             "on other hardware (a CPU, another GPU type) an honest replay can fail at large k. "
             "Exact mode (--exact, pol train's default on a GPU) replays bitwise anywhere; it was "
             "off here (--no-exact, fp16, --tf32, or a layer it refuses, such as dropout)")
    if init_from:
        echo(f"warm start from parent proof {init_from}")
    if ledger_db:
        echo(("used the commitment in " + commitment if commitment else
              "committed before training")
             + f" and published on ledger {ledger_db} "
             f"(salt in {Path(r.proof) / 'commitment.json'})")


def committed(spec: Any, side: dict, ledger_db: str, out: str) -> None:
    echo(f"committed {spec.task} (spec digest {side['spec_digest']}) on ledger {ledger_db}: "
         f"seq {side['ledger_seq']} ({side['entry_hash']})")
    echo(f"commitment file (keep it private until the proof is published): {out}")


def tasks(table: dict) -> None:
    for t in table.values():
        echo(f"{t.name:20} {t.description} (E={t.epochs}, k={t.k}, batch {t.batch_size}, "
             f"{t.optimizer.name} lr {t.optimizer.lr})")


# ------------------------------------------------------------------------------- verification

def verify_exit_code(report: Any, data: str | None) -> int:
    """0 valid, 1 invalid, 3 pending, 4 inconclusive; 2 when the only failure is the user's --data
    not being the committed dataset (the user's mistake: the proof was not checked)."""
    failed = {c.name for c in report.checks if c.failed}
    if data and failed == {"dataset commitment"}:
        return EXIT_UNUSABLE
    if report.inconclusive:
        return EXIT_INCONCLUSIVE
    if not report.valid:
        return EXIT_INVALID
    return EXIT_PENDING if report.pending else EXIT_VALID


def opened_sealed(source: Any) -> None:
    if source.sealed:
        echo(f"opened sealed proof: signed by {source.signer_key_id}"
             + ("" if source.pinned else " (signer NOT pinned: pass --from)"))


def verified(report: Any, data: str | None, verbose: bool, json_out: str | None,
             request_data: str | None) -> int:
    """The report (or, when --data is not the proof's dataset, one error line); its exit code."""
    code = verify_exit_code(report, data)
    if code == EXIT_UNUSABLE:  # nothing was verified
        why = next(c.reason for c in report.checks if c.name == "dataset commitment")
        echo(f"error: --data {data}: {why}. Pass the dataset this proof was trained on.",
             err=True)
        return code
    echo(report.render(verbose=verbose))
    write_json(json_out, report.to_json())
    if request_data and report.valid:
        echo(f"data request written to {request_data}: verification pending until the prover "
             "reveals it (pol reveal), then pol verify --reveal (exit 3: pending)")
    return code


def html_written(path: object) -> None:
    echo(f"HTML report written to {path}")


def report_written(report: Any, path: object) -> int:
    """`pol report`: the verdict and the page; the exit code `pol verify` would give."""
    echo(f"verdict: {report.verdict.upper()}; HTML report written to {path}")
    return verify_exit_code(report, None)


def experiments_written(outputs: list, document: object) -> None:
    for o in outputs:
        echo(f"{o.name}: {o.csv}, {o.png}, {o.md}")
    if document is not None:
        echo(f"reproduction report: {document}")


def experiment_failed(name: str, e: BaseException) -> None:
    """One experiment of several failed (the others go on): its name and traceback."""
    import traceback
    click.echo(f"{name}: failed\n" + "".join(traceback.format_exception(e)).rstrip(), err=True)


def verdict_recorded(record_to: str, entry: Any) -> None:
    echo(f"verdict recorded in {record_to}: seq {entry.seq} ({entry.entry_hash})")


def calibration(cal: Any, json_out: str | None) -> None:
    echo(cal.render())
    write_json(json_out, cal.to_dict())


def revealed(r: dict, out: str) -> None:
    echo(f"revealed {r['samples']} sample(s) ({r['fraction']:.1%} of the dataset) "
         f"with inclusion paths: {out}")


def dispute(res: dict, as_json: bool) -> int:
    """The claims and the winner; exit 0 if there is one, 1 otherwise."""
    if as_json:
        echo(json.dumps(res, indent=1))
    else:
        for c in res["claims"]:
            ok = c["valid"] and c["ends_at_model"]
            echo(f"{'ok  ' if ok else 'FAIL'} {c['proof']}: "
                 + ("; ".join(c["reasons"]) or "valid, ends within δ of the model")
                 + (f" [committed seq {c['commitment']['commitment_seq']}]"
                    if c["commitment"] else ""))
        echo(f"winner: {res['winner']} — {res['why']}" if res["winner"] else
             f"no winner: {res['why']}")
    return EXIT_VALID if res["winner"] else EXIT_INVALID


# ---------------------------------------------------------------------------------- inspect

def inspection(info: dict, as_json: bool) -> None:
    if as_json:
        echo(json.dumps(info, indent=1))
        return
    spec = info["spec"]
    echo(f"proof        {info['path']} (format v{info['format_version']}, "
         f"created {info['created']})")
    echo(f"root digest  {info['root_digest']}")
    echo(f"task         {info['task'] or '(custom)'}: model {spec['model']['arch']} "
         f"{json.dumps(spec['model']['kwargs'])}, init {spec['model']['init']}")
    echo(f"data         {spec['data']['name']} {json.dumps(spec['data']['params'])}, "
         f"{spec['data']['size']} samples, root {spec['data']['root'][:16]}…, "
         f"augment {spec['data']['augment']}")
    echo(f"optimizer    {describe_optimizer(spec['optimizer'])}; schedule "
         f"{describe_schedule(spec['schedule'])}; loss {spec['loss']}; "
         f"batch {spec['batch_size']}")
    echo(f"steps        E={info['epochs']} S={info['steps_per_epoch']} "
         f"T={info['total_steps']} k={info['k']}; {info['num_checkpoints']} checkpoints")
    gpu = f" ({spec['gpu_name']})" if spec.get("gpu_name") else ""
    echo(f"made on      {spec['device']}{gpu}, deterministic={spec['deterministic']}, "
         f"torch {spec['torch_version']}, seed {spec['seed']}, precision {spec['precision']}"
         + (f", tf32 {spec['tf32']}" if spec.get("tf32") else ""))
    echo(f"size         {info['total_bytes'] / 1e6:.2f} MB total, "
         f"{info['checkpoint_bytes_mean'] / 1e3:.1f} kB per checkpoint")
    for name, f in info["files"].items():
        if not name.startswith("checkpoints/") or "/step_000000000." in name:  # v1 and v2
            echo(f"  {f['sha256'][:16]}…  {f['size']:>10}  {name}")
    n_more = info["num_checkpoints"] - 1
    if n_more:
        echo(f"  … and {n_more} more checkpoint(s)")


def describe_optimizer(opt: dict) -> str:
    """The hyperparameters the optimizer uses (Adam has betas and eps, not momentum)."""
    name = opt["name"]
    if name == "sgd":
        out = f"sgd lr {opt['lr']} momentum {opt.get('momentum', 0.0)}"
        if opt.get("nesterov"):
            out += " (nesterov)"
    else:
        b1, b2 = opt.get("betas", (0.9, 0.999))
        out = f"{name} lr {opt['lr']} betas ({b1}, {b2}) eps {opt.get('eps', 1e-8)}"
    return out + f" wd {opt.get('weight_decay', 0.0)}"


def describe_schedule(s: dict) -> str:
    name = s["name"]
    if name == "multistep":
        out = f"multistep (×{s.get('gamma')} at steps {list(s.get('milestones', []))})"
    elif name == "cosine":
        out = (f"cosine (to {s.get('min_lr', 0.0)} over "
               f"{s.get('total_steps') or 'the whole run'} steps)")
    elif name == "recorded":
        out = "recorded (none declared: each step's recorded lr)"
    else:
        out = name
    w = s.get("warmup_steps") or 0
    if w and name != "recorded":
        out = f"linear warm-up over {w} step(s), then {out}"
    return out


# ------------------------------------------------------------------- keys, seals, ledgers

def keys_made(paths: Any, signing_id: str, encryption_id: str, protected: bool) -> None:
    echo(f"signing key     {paths.signing_key}  (public: {paths.signing_pub}, id {signing_id})")
    echo(f"encryption key  {paths.encryption_key}  (public: {paths.encryption_pub}, "
         f"id {encryption_id})")
    if not protected:
        echo("note: private keys are NOT passphrase-protected (use --passphrase-env VAR)",
             err=True)


def sealed(result: Any) -> None:
    echo(f"sealed {result.entries} files ({result.data_bytes} bytes) -> {result.path}")
    echo(f"root digest   {result.root_digest}")
    echo(f"sealed sha256 {result.sealed_sha256}")
    echo(f"signer        {result.sender_key_id}")
    echo(f"recipient     {result.recipient_key_id}")


def ledger_appended(ledger_db: str, entry: Any) -> None:
    echo(f"ledger        {ledger_db}: appended seq {entry.seq} ({entry.entry_hash})")


def opened(o: Any, pinned: bool) -> None:
    echo(f"opened {o.entries} files ({o.data_bytes} bytes) -> {o.path}")
    echo(f"root digest {o.root_digest}")
    echo(f"signed by   {o.signer_key_id}" + ("" if pinned else " (NOT pinned)"))
    echo(f"created     {o.created}")
    if o.publication is not None:
        echo(f"ledger      latest publication, seq {o.publication.seq} "
             f"({o.publication.timestamp}), not revoked")
    if not pinned:
        echo(f"warning: signer not pinned; the signature is from key {o.signer_key_id}, "
             "pass --from PROVER_PUB to require a specific prover", err=True)


def ledger_entries(entries: Any, as_json: bool) -> None:
    if as_json:
        # collected first: a damaged entry must not leave half a JSON array on stdout
        items = [json.dumps(entry_json(e), sort_keys=True) for e in entries]
        echo("[" + ("\n" + ",\n".join(items) + "\n" if items else "") + "]")
        return
    for e in entries:
        echo(f"{e.seq!s:>6}  {e.timestamp!s}  {e.kind!s:<12} {e.signer_key_id!s}  "
             f"{e.payload_json!s}")


def entry_json(e: Any) -> dict[str, Any]:
    """An entry as JSON; a payload or token that does not decode (a damaged or tampered
    ledger, which `ledger verify` reports) is shown raw, with the reason, instead of stopping
    the listing."""
    out = {f: getattr(e, f) for f in ("seq", "kind", "timestamp", "signer_key_id",
                                      "signer_public_key", "prev_hash", "entry_hash",
                                      "signature", "ts_authority")}
    out = {k: v if isinstance(v, (str, int, float, type(None))) else repr(v)
           for k, v in out.items()}
    try:
        out["payload"] = e.payload
    except (ValueError, UnicodeError) as exc:
        out["payload"] = None
        out["payload_raw"] = (e.payload_json if isinstance(e.payload_json, str)
                              else repr(e.payload_json))
        out["payload_error"] = f"not JSON: {exc}"
    tok = e.ts_token
    out["ts_token"] = tok.hex() if isinstance(tok, (bytes, bytearray, memoryview)) else (
        None if tok is None else repr(tok))
    return out


def ledger_verified(report: Any) -> None:
    """The summary of a good ledger; each problem and exit 1 otherwise."""
    if report.ok:
        echo(report.summary())
        return
    for problem in report.problems:
        echo(str(problem))
    fail(f"ledger verification failed: {len(report.problems)} problem(s) in {report.entries} "
         "entries", EXIT_INVALID)


def ledger_head(seq: int, digest: str) -> None:
    echo(f"{seq}:{digest}")


def revoked(root_digest: str, db: str, entry: Any) -> None:
    echo(f"revoked {root_digest} on {db}: appended seq {entry.seq} ({entry.entry_hash})")


# ----------------------------------------------------------------------------- attack, demo

def attack(res: Any, json_out: str | None) -> None:
    echo(f"attack       {res.name} -> {res.out}")
    echo(f"settings     {json.dumps(res.settings, sort_keys=True)}")
    hs = f"{res.honest_seconds:.3f}s" if res.honest_seconds else "not measured"
    tr = f" ({res.time_ratio:.2f}× honest)" if res.time_ratio is not None else ""
    echo(f"wall time    {res.wall_seconds:.3f}s{tr}; honest training {hs}")
    echo(f"grad evals   {res.grad_evals} ({res.cost_ratio:.3f}× honest "
         f"{res.honest_grad_evals}); forward-only passes {res.forward_evals}")
    for n in res.notes:
        echo(f"note         {n}")
    write_json(json_out, res.to_dict(), sort_keys=True, default=str)


def distributed(result: Any, json_out: str | None) -> None:
    """A distributed job's rounds (nothing on a worker rank under torchrun: result None)."""
    if result is None:
        return
    echo(result.render())
    write_json(json_out, result.to_dict(), default=float)


def demo_finished(seconds: float, kept: Path | None) -> None:
    echo(f"demo finished in {seconds:.1f}s" + (f"; proofs kept in {kept}" if kept else ""))
