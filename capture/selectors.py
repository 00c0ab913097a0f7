"""What ``--pod`` accepts, in ``dnstrail record`` and in the analyzer alike.

A pod is named by its UID (with dashes, or the underscores of systemd cgroup names), by its
name, or by ``namespace/name``; names and namespaces are shell globs (``web-*``,
``shop/*``). The recorder matches a selector against the pods snapshot (``matches``) to find
the cgroups to trace; the analyzer turns the same selector into SQL over the attributed
``pod_uid``, ``namespace`` and ``pod`` columns (``glob_regex``). One parser, so a value that
works for one works for the other. Like the rest of ``capture``, this imports nothing of bcc.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = ["BadSelector", "PodSelector", "glob_regex", "parse_pod"]

_UID = re.compile(r"^[0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}"
                  r"[-_][0-9a-fA-F]{12}$")
_FORMS = "a pod UID, a pod name or namespace/name (names may be globs: 'web-*')"


class BadSelector(ValueError):
    """A --pod value that is none of the forms: a pod UID, a name or namespace/name."""


def glob_regex(pattern: str) -> str:
    """A shell glob (``*``, ``?``, ``[abc]``, ``[!abc]``) as a regular expression that must
    match the whole value (RE2 for DuckDB's ``regexp_full_match``; Python's ``re`` reads it
    the same)."""
    if not isinstance(pattern, str):
        raise BadSelector(f"{pattern!r}: a filter pattern is text")
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
                continue
            body = pattern[i:j]
            i = j + 1
            neg = body[:1] in ("!", "^")
            body = body[1:] if neg else body
            body = body.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
            out.append("[" + ("^" if neg else "") + body + "]")
        else:
            out.append(re.escape(c))
    return "(?s)" + "".join(out)


@dataclass(frozen=True)
class PodSelector:
    """One parsed --pod value: ``uid`` (lower case, with dashes), or ``name`` with an optional
    ``namespace`` (both globs)."""

    text: str
    uid: str | None = None
    namespace: str | None = None
    name: str | None = None

    def matches(self, pod_uid: str | None, namespace: str | None, pod: str | None) -> bool:
        """Whether a pod (a row of the pods snapshot) is the one this selector names."""
        if self.uid is not None:
            return isinstance(pod_uid, str) and _norm_uid(pod_uid) == self.uid
        if self.namespace is not None and not _glob_match(self.namespace, namespace):
            return False
        return self.name is not None and _glob_match(self.name, pod)


def parse_pod(text: str) -> PodSelector:
    """A --pod value as a PodSelector; BadSelector when it is none of the forms."""
    if not isinstance(text, str):
        raise BadSelector(f"{text!r}: {_FORMS}")
    sel = text.strip()
    if _UID.match(sel):
        return PodSelector(text=sel, uid=_norm_uid(sel))
    namespace, slash, name = sel.rpartition("/")
    if not name or (slash and (not namespace or "/" in namespace)):
        raise BadSelector(f"{text!r}: {_FORMS}")
    return PodSelector(text=sel, namespace=namespace if slash else None, name=name)


def _norm_uid(uid: str) -> str:
    return uid.lower().replace("_", "-")


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(glob_regex(pattern))


def _glob_match(pattern: str, value: str | None) -> bool:
    return isinstance(value, str) and _compiled(pattern).fullmatch(value) is not None
