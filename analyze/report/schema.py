"""JSON Schema (draft 2020-12) of the JSON report; docs/report.md describes each field."""

from __future__ import annotations

from typing import Any

from analyze.findings._common import SEVERITIES
from analyze.report.summary import SCHEMA_VERSION

_NULLABLE_STR = {"type": ["string", "null"]}

FINDING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["kind", "severity", "namespace", "pod", "container", "comm", "pid", "client",
                 "domain", "registered_domain", "explanation", "metrics", "evidence"],
    "properties": {
        "kind": {"type": "string"},
        "severity": {"enum": list(SEVERITIES)},
        "namespace": _NULLABLE_STR,
        "pod": _NULLABLE_STR,
        "container": _NULLABLE_STR,
        "comm": _NULLABLE_STR,
        "pid": {"type": ["integer", "null"]},
        "client": _NULLABLE_STR,
        "domain": _NULLABLE_STR,
        "registered_domain": _NULLABLE_STR,
        "explanation": {"type": "string"},
        "metrics": {"type": "object"},
        "evidence": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["ts", "query", "answer"],
                "properties": {
                    "ts": _NULLABLE_STR,
                    "query": {"type": "string"},
                    "answer": {"type": "string"},
                },
            },
        },
    },
}

REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "dnstrail report",
    "type": "object",
    "required": ["schema_version", "generated_at", "summary", "findings"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "generated_at": {"type": "string"},
        "dnstrail_version": {"type": "string"},
        "summary": {
            "type": "object",
            "required": ["start", "end", "nodes", "messages", "transactions", "lookups",
                         "decode_errors", "lost", "lost_total", "findings_by_severity"],
            "properties": {
                "lost": {"type": "object", "additionalProperties": {"type": "integer"}},
                "completeness": {
                    "type": "object",
                    "required": ["complete", "verified", "problems"],
                    "properties": {
                        "complete": {"type": "boolean"},
                        "verified": {"type": "boolean"},
                        "problems": {"type": "array", "items": {"type": "string"}},
                        "problems_total": {"type": "integer"},
                    },
                },
                "filters": {"type": "object", "additionalProperties": {"type": "string"}},
                "findings_by_severity": {
                    "type": "object",
                    "required": list(SEVERITIES),
                    "additionalProperties": {"type": "integer"},
                },
            },
        },
        "findings": {"type": "array", "items": FINDING_SCHEMA},
        "whatif": {"type": ["object", "null"], "properties": {
            "node_cache": {"type": "object",
                           "required": ["queries", "saved", "saved_share", "timeouts_answered",
                                        "top_names"]},
            "ndots": {"type": "array", "items": {
                "type": "object",
                "required": ["ndots", "saved_queries", "extra_queries", "net_saved",
                             "lookups_shortened", "lookups_lengthened"]}},
        }},
    },
}
