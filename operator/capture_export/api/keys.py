"""Where an exporter's objects land: the key ``prefix`` and the ``pathTemplate`` of its data objects'
folders (with ``hivePartitioning``). Their OpenAPI patterns and CEL rules, and the pydantic checks that
mirror them with the same messages (`check_prefix`, `parse_path_template`)."""

from __future__ import annotations

import re

from .common import cel_rule

__all__ = [
    "CONTROL_SEGMENT",
    "DEFAULT_PATH_TEMPLATE",
    "HIVE_RULE",
    "LAYOUT_IMMUTABLE",
    "PATH_TEMPLATE_PATTERN",
    "PATH_TEMPLATE_RULES",
    "PREFIX_PATTERN",
    "PREFIX_RULES",
    "TEMPLATE_RULES",
    "TEMPLATE_VARIABLES",
    "TIME_VARIABLES",
    "check_prefix",
    "parse_path_template",
]

# The prefix follows the segment rules of a template's literal text: "/"-separated, non-empty segments of
# letters, digits and "._=+-" (no "..", backslash, NUL, control characters), and none of them "." , ".."
# or the exporter's control folder.
_PREFIX_SEGMENT = r"[A-Za-z0-9._=+-]+"
PREFIX_PATTERN = rf"^({_PREFIX_SEGMENT}(/{_PREFIX_SEGMENT})*)?$"
_SPECIAL_SEGMENT = "(^|/)(\\\\.|\\\\.\\\\.|_capture-export)(/|$)"  # ".", ".." or "_capture-export"
PREFIX_RULES = [cel_rule(f"!self.matches('{_SPECIAL_SEGMENT}')",
                         "must not hold a '.', '..' or '_capture-export' segment")]

# Variables of ``pathTemplate``. The time variables are the UTC date and time of the batch's records.
TIME_VARIABLES = ("date", "year", "month", "day", "hour")
TEMPLATE_VARIABLES = ("prefix", *TIME_VARIABLES, "exporter", "namespace")
DEFAULT_PATH_TEMPLATE = "{prefix}"
CONTROL_SEGMENT = "_capture-export"
_VARIABLE = re.compile(r"\{([^{}]*)\}")
_LITERAL_CHARS = re.compile(r"^[A-Za-z0-9._=+-]*$")
# The OpenAPI pattern mirrors the pydantic validator (which gives the precise message): known variables
# and safe literal characters in "/"-separated, non-empty segments, no leading or trailing "/".
_SEGMENT_PATTERN = r"(?:[A-Za-z0-9._=+-]|\{(?:" + "|".join(TEMPLATE_VARIABLES) + r")\})+"
PATH_TEMPLATE_PATTERN = rf"^{_SEGMENT_PATTERN}(?:/{_SEGMENT_PATTERN})*$"

PATH_TEMPLATE_RULES = cel_rule(
    "size(self.prefix) == 0 || self.pathTemplate == '{prefix}' || self.pathTemplate.startsWith('{prefix}/')",
    "must start with {prefix}/ when prefix is set, so that every object stays under it", "pathTemplate")
# The template rules of parse_path_template that its pattern cannot say, as CEL rules on the field.
TEMPLATE_RULES = [
    cel_rule(f"!self.matches('{_SPECIAL_SEGMENT}')", "must not hold a '.', '..' or '_capture-export' segment"),
    cel_rule("!self.matches('^.+\\\\{prefix\\\\}')", "{prefix} may only appear at the start"),
]
HIVE_RULE = cel_rule(
    "!self.hivePartitioning || !self.pathTemplate.matches('=\\\\{(date|year|month|day|hour)\\\\}')",
    "with hivePartitioning the time variables already render as year=2026; write {year}, not year={year}",
    "pathTemplate")
LAYOUT_IMMUTABLE = {
    "rule": "self.pathTemplate == oldSelf.pathTemplate && self.hivePartitioning == oldSelf.hivePartitioning",
    "message": "pathTemplate and hivePartitioning are immutable: create a new S3Exporter to change the key layout",
}


def check_prefix(value: str) -> str:
    """Mirrors PREFIX_PATTERN and PREFIX_RULES, or raise ValueError; never quotes the value (it may hold
    escape sequences)."""
    if value.startswith("/") or value.endswith("/"):
        raise ValueError("must not start or end with '/'")
    segments = value.split("/") if value else []
    if any(segment == "" for segment in segments):
        raise ValueError("must not hold an empty segment ('//')")
    if not re.match(PREFIX_PATTERN, value):
        raise ValueError("may only hold letters, digits, '/' and '._=+-' (no spaces, backslashes or control "
                         "characters)")
    if any(segment in (".", "..", CONTROL_SEGMENT) for segment in segments):
        raise ValueError(PREFIX_RULES[0]["message"])
    return value


def parse_path_template(template: str) -> list[tuple[str, bool]]:
    """Split a path template into ``(text, is_variable)`` parts, or raise ValueError naming the problem.

    Rules: only the variables of TEMPLATE_VARIABLES; literal text of letters, digits and ``._=+-``; "/"
    separates non-empty segments and may not start or end the template; no "." or ".." segment, no
    segment named ``_capture-export`` (the exporter's control folder); ``{prefix}`` only at the start.
    """
    if template.startswith("/") or template.endswith("/"):
        raise ValueError("pathTemplate must not start or end with '/'")
    parts: list[tuple[str, bool]] = []
    position = 0
    for match in _VARIABLE.finditer(template):
        parts.append((template[position:match.start()], False))
        name = match.group(1)
        if name not in TEMPLATE_VARIABLES:
            known = ", ".join("{" + v + "}" for v in TEMPLATE_VARIABLES)
            raise ValueError(f"pathTemplate: unknown variable {{{name}}} (known: {known})")
        parts.append((name, True))
        position = match.end()
    parts.append((template[position:], False))
    parts = [(text, var) for text, var in parts if var or text]
    for text, var in parts:
        if var:
            continue
        if "{" in text or "}" in text:
            raise ValueError("pathTemplate: unbalanced '{' or '}'")
        if not _LITERAL_CHARS.match(text.replace("/", "")):
            raise ValueError("pathTemplate: literal text may only hold letters, digits, '/' and '._=+-'")
    segments = "".join("{" + t + "}" if v else t for t, v in parts).split("/")
    for segment in segments:
        if segment == "":
            raise ValueError("pathTemplate must not hold an empty segment ('//')")
        if segment in (".", "..") or segment == CONTROL_SEGMENT:
            raise ValueError(f"pathTemplate must not hold a {segment!r} segment")
    if any(var and text == "prefix" for text, var in parts[1:]):
        raise ValueError("pathTemplate: {prefix} may only appear at the start")
    return parts
