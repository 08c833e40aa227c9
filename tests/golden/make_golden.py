"""Make the golden proofs of the current format version (run once per new format version, commit
the output, never regenerate an existing version's proofs):

    python tests/golden/make_golden.py
"""

import json
from pathlib import Path

from pol.proof.format import FORMAT_VERSION
from pol.prover.trainer import train_task

HERE = Path(__file__).parent
CASES = {
    "iris-logreg-fp32": dict(task="iris-logreg", epochs=3, k=5, seed=11),
    "digits-mlp-fp16": dict(task="digits-mlp", epochs=1, k=15, seed=3, precision="fp16"),
}


def main() -> None:
    out = HERE / f"v{FORMAT_VERSION}"
    if out.exists():
        raise SystemExit(f"{out} exists: golden proofs of a released version are never rewritten")
    index = {}
    for name, kw in CASES.items():
        kw = dict(kw)
        r = train_task(kw.pop("task"), out / name, **kw)
        index[name] = {"root_digest": r.root_digest, "task": r.spec.task}
    (out / "GOLDEN.json").write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    main()
