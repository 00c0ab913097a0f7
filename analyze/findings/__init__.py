"""Findings: what in a capture deserves a responder's attention, with the evidence.

``find(capture, **options)`` runs every detector and returns findings sorted by severity
(high first). Each detector lives in its own module; docs/report.md lists the kinds, their
thresholds and what raises each severity.
"""

from __future__ import annotations

from analyze.findings._common import SEVERITIES, Finding, severity_rank
from analyze.findings.run import KINDS, find

__all__ = ["KINDS", "SEVERITIES", "Finding", "find", "severity_rank"]
