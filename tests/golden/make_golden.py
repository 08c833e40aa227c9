"""Make the golden proofs of one format version (run once per new format version, commit the
output, never regenerate an existing version's proofs):

    python tests/golden/make_golden.py            # the version the writer writes by default (v1)
    python tests/golden/make_golden.py --version 2  # v2: the lossless checkpoint codec
    python tests/golden/make_golden.py --exact      # exact/: exact-mode proofs (a rounding log)
    python tests/golden/make_golden.py --exact-noise  # exact-noise/: ... with the gradient grid
    python tests/golden/make_golden.py --exact-chunked  # exact-chunked/: rounding log version 2
    python tests/golden/make_golden.py --exact-zone  # exact-zone/: with the round-to-even zone
"""

import argparse
import json
from pathlib import Path

from pol.proof.format import CODEC_FORMAT_VERSION, FORMAT_VERSION
from pol.prover.trainer import train_task

HERE = Path(__file__).parent
CASES = {
    1: {
        "iris-logreg-fp32": dict(task="iris-logreg", epochs=3, k=5, seed=11),
        "digits-mlp-fp16": dict(task="digits-mlp", epochs=1, k=15, seed=3, precision="fp16"),
    },
    # v2: keyframes (the first checkpoint, a layout change when momentum appears, every 16th)
    # and delta frames, in fp32 (exact mode) and fp16
    CODEC_FORMAT_VERSION: {
        "iris-logreg-fp32-z": dict(task="iris-logreg", epochs=3, k=1, seed=11, compress=True),
        "digits-mlp-fp32-z": dict(task="digits-mlp", epochs=1, k=15, seed=3, compress=True),
        "digits-mlp-fp16-z": dict(task="digits-mlp", epochs=1, k=9, seed=5, precision="fp16",
                                  compress=True),
    },
}


# exact mode (format v1 with roundlog.polr): the widest rounding window the hardened verifier
# accepts (2^-8 float32 ulps), so that a model of 15 parameters logs a few values
EXACT_CASES = {
    "iris-logreg-exact": dict(task="iris-logreg", epochs=4, k=5, seed=11, window=2.0 ** -8),
}


# exact mode with the gradient noise bound (StepSpec.exact_noise, the gradient grid): the widest
# bound the hardened verifier accepts (2^-32), so that the grid floor and the log both show
EXACT_NOISE_CASES = {
    "iris-logreg-exact-noise": dict(task="iris-logreg", epochs=4, k=5, seed=12, window=2.0 ** -8,
                                    noise=2.0 ** -32),
}


# the rounding log in chunks (roundlog.polr version 2, one chunk per checkpoint)
EXACT_CHUNKED_CASES = {
    "iris-logreg-exact-chunked": dict(task="iris-logreg", epochs=4, k=5, seed=13,
                                      window=2.0 ** -8, noise=2.0 ** -32),
}


# the round-to-even zone (StepSpec.exact_zone; the cases above were made before it: none): the
# widest zone, so that iris's few values show both the zone and the log at its edge
EXACT_ZONE_CASES = {
    "iris-logreg-exact-zone": dict(task="iris-logreg", epochs=4, k=5, seed=14, window=2.0 ** -8,
                                   noise=2.0 ** -32, zone=2.0 ** -3),
}


# the gradient grid's coarseness (StepSpec.exact_grid; the cases above were made before it: 4,
# which is never written): 8, pol's default, with a noise bound that puts iris's gradients on
# the grid's spacing bound (2^8 · 2^-36 = 2^-28)
EXACT_GRID_CASES = {
    "iris-logreg-exact-grid": dict(task="iris-logreg", epochs=4, k=5, seed=15, window=2.0 ** -8,
                                   noise=2.0 ** -36, zone=2.0 ** -8, grid=8),
}


# the rounding log of version 3 (chunk headers with their step ranges, read a segment at a time)
EXACT_LOG3_CASES = {
    "iris-logreg-exact-log3": dict(task="iris-logreg", epochs=4, k=5, seed=16, window=2.0 ** -8,
                                   noise=2.0 ** -36, zone=2.0 ** -8, grid=8),
}


def main_exact(folder: str = "exact", cases: dict | None = None) -> None:
    from pol.prover.trainer import train_spec
    from pol.spec import EXACT_NOISE, StepSpec
    from pol.tasks import build_spec
    out = HERE / folder
    if out.exists():
        raise SystemExit(f"{out} exists: golden proofs are never rewritten")
    index = {}
    for name, kw in (EXACT_CASES if cases is None else cases).items():
        kw = dict(kw)
        window, noise = kw.pop("window"), kw.pop("noise", EXACT_NOISE)
        zone, grid = kw.pop("zone", 0.0), kw.pop("grid", 4)
        spec, train, test = build_spec(kw.pop("task"), exact=True, **kw)
        spec = spec.with_(step=StepSpec(exact=True, exact_window=window, exact_noise=noise,
                                        exact_zone=zone, exact_grid=grid))
        r = train_spec(spec, train, test, out / name)
        index[name] = {"root_digest": r.root_digest, "task": r.spec.task}
    (out / "GOLDEN.json").write_text(json.dumps(index, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--version", type=int, default=FORMAT_VERSION, choices=sorted(CASES))
    ap.add_argument("--exact", action="store_true", help="the exact-mode proofs (exact/)")
    ap.add_argument("--exact-noise", action="store_true",
                    help="exact mode with the gradient noise bound (exact-noise/)")
    ap.add_argument("--exact-chunked", action="store_true",
                    help="exact mode, the rounding log in chunks (exact-chunked/)")
    ap.add_argument("--exact-zone", action="store_true",
                    help="exact mode with the round-to-even zone (exact-zone/)")
    ap.add_argument("--exact-grid", action="store_true",
                    help="exact mode with the gradient grid's coarseness (exact-grid/)")
    ap.add_argument("--exact-log3", action="store_true",
                    help="exact mode, the rounding log of version 3 (exact-log3/)")
    args = ap.parse_args()
    if args.exact:
        return main_exact()
    if args.exact_noise:
        return main_exact("exact-noise", EXACT_NOISE_CASES)
    if args.exact_chunked:
        return main_exact("exact-chunked", EXACT_CHUNKED_CASES)
    if args.exact_zone:
        return main_exact("exact-zone", EXACT_ZONE_CASES)
    if args.exact_grid:
        return main_exact("exact-grid", EXACT_GRID_CASES)
    if args.exact_log3:
        return main_exact("exact-log3", EXACT_LOG3_CASES)
    version = args.version
    out = HERE / f"v{version}"
    if out.exists():
        raise SystemExit(f"{out} exists: golden proofs of a released version are never rewritten")
    index = {}
    for name, kw in CASES[version].items():
        kw = dict(kw)
        r = train_task(kw.pop("task"), out / name, **kw)
        manifest = json.loads((out / name / "manifest.json").read_text())
        assert manifest["version"] == version, (name, manifest["version"])
        index[name] = {"root_digest": r.root_digest, "task": r.spec.task}
    (out / "GOLDEN.json").write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    main()
