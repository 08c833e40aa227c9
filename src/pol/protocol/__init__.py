"""Protocol features beyond a single proof (paper §V-D, DESIGN §5).

- `chain`: chain of trust for warm starts (§V-D3): a proof whose W_0 is a parent proof's final
  weights is valid only if the parent is (registry lookup or recursive verification), Eq. (5).
- `commit`: commitment before training on a signed ledger (spec digest, salted seed, data root),
  and the verifier's check that the commitment precedes the published proof.
- `dispute`: settle an ownership dispute over a model between several proofs.
- `lazy`: lazy verification with private data (§V-D1/D2): request only the samples the replay
  needs; the prover reveals them with Merkle inclusion paths against the committed dataset root.
"""

from __future__ import annotations

MAX_CHAIN_DEPTH = 32
COMMITMENT_FILE = "commitment.json"
