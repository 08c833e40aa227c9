"""Verification (Algorithm 2) and its structured report.

Public: `verify`, `VerifyOptions`, the policies (`Policy`, `HARDENED`, `PAPER`, `Defence`), the
report (`Report`, `Check`, `SegmentResult`, `CheckName`), and the published measures anyone checks
a proof with (the distances, the KS test of W_0): the attacks' toolkit uses these and nothing
else of the verifier.
"""

from pol.verifier.checks import CheckName
from pol.verifier.core import DELTA_RULE, VerifyOptions, verify
from pol.verifier.distances import METRICS, all_distances, flat_params
from pol.verifier.initcheck import check_init
from pol.verifier.policy import HARDENED, PAPER, Defence, Policy
from pol.verifier.report import Check, Report, SegmentResult

__all__ = ["DELTA_RULE", "HARDENED", "METRICS", "PAPER", "Check", "CheckName", "Defence",
           "Policy", "Report", "SegmentResult", "VerifyOptions", "all_distances", "check_init",
           "flat_params", "verify"]
