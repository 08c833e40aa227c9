"""Verification (Algorithm 2) and its structured report."""

from pol.verifier.core import DELTA_RULE, VerifyOptions, verify
from pol.verifier.report import Check, Report, SegmentResult

__all__ = ["DELTA_RULE", "Check", "Report", "SegmentResult", "VerifyOptions", "verify"]
