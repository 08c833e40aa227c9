"""Golden proofs: a proof written by any released format version must verify forever."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pol.cli import main
from pol.proof.reader import inspect_proof
from pol.verifier import verify

GOLDEN = Path(__file__).parent / "golden"
CASES = [(v, name, info) for v in sorted(GOLDEN.glob("v*")) if v.is_dir()
         for name, info in json.loads((v / "GOLDEN.json").read_text()).items()]


def test_there_is_a_golden_proof_of_the_current_version():
    from pol.proof.format import FORMAT_VERSION
    assert (GOLDEN / f"v{FORMAT_VERSION}" / "GOLDEN.json").exists()


def test_there_is_a_golden_proof_of_every_readable_version():
    from pol.proof.format import SUPPORTED_VERSIONS
    for v in SUPPORTED_VERSIONS:
        assert (GOLDEN / f"v{v}" / "GOLDEN.json").exists(), f"no golden proof of format v{v}"
    for v, name, _ in CASES:
        assert inspect_proof(v / name)["format_version"] == int(v.name[1:])


@pytest.mark.parametrize("version,name,info", CASES, ids=[f"{v.name}-{n}" for v, n, _ in CASES])
def test_golden_proof_verifies_in_all_segments(version, name, info):
    path = version / name
    assert inspect_proof(path)["root_digest"] == info["root_digest"]
    report = verify(path, all_segments=True)
    assert report.valid, report.render()


@pytest.mark.parametrize("version,name,info", CASES, ids=[f"{v.name}-{n}" for v, n, _ in CASES])
def test_golden_proof_verifies_from_the_cli(version, name, info):
    res = CliRunner().invoke(main, ["verify", str(version / name)])
    assert res.exit_code == 0, res.output


def test_merkle_root_equals_the_pairwise_definition():
    """`merkle_root`'s level-at-a-time hashing gives the tree of `_parent` nodes (an odd node
    promoted), for every size up to 70 leaves and none."""
    import numpy as np

    from pol.proof import hashing as H

    def reference(level):
        if not level:
            return H.EMPTY_ROOT
        while len(level) > 1:
            nxt = [H._parent(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            level = nxt + ([level[-1]] if len(level) % 2 else [])
        return level[0]
    leaves = np.random.default_rng(7).integers(0, 256, (70, 32), dtype=np.uint8)
    for n in range(71):
        assert H.merkle_root(leaves[:n]) == reference([bytes(r) for r in leaves[:n]]), n
