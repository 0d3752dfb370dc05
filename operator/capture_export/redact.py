"""Keeping secrets out of text: every message, condition, Event, state file and log line goes through here
when it could hold one.

Prefer never putting a secret into text at all (fixed messages, values validated at the door). Where text
comes from elsewhere (a client library's exception, a server's error message, a log record of a library),
``scrub`` removes known secret values in every form text carries them in (plain, ``repr``-escaped as in
``b'token\\n'``, JSON-escaped, URL-encoded), and ``redact`` removes what looks like a credential whatever
its value: the userinfo of a URL (``http://user:PASS@host``) and the password of a PostgreSQL DSN
(``password=PASS``). ``LogRedactor`` applies ``redact`` to every log record, libraries' included.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from collections.abc import Iterable

__all__ = ["CLIENT_LOGGERS", "REDACTED", "LogRedactor", "control_characters", "describe_exception",
           "drop_client_tracebacks", "install_log_redaction", "quiet_client_loggers", "redact", "scrub", "secret_forms"]

REDACTED = "***"
MIN_SECRET_LENGTH = 4  # shorter values are too likely to occur by chance in ordinary text

# scheme://userinfo@ — the userinfo runs up to the last "@" before the host ends ("/", "?", "#", space).
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/?#]*@")
# password=VALUE in a libpq key=value DSN: VALUE is a quoted string ('it''s' or 'a\'b') or a word.
_DSN_PASSWORD = re.compile(r"(?i)\b(password\s*=\s*)('(?:[^'\\]|\\.|'')*'?|[^\s'\"]+)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def control_characters(value: str) -> list[str]:
    """The control characters in ``value``, named as ``repr`` names them (``'\\n'``), without the value."""
    return sorted({repr(char) for char in _CONTROL.findall(value)})


def secret_forms(secret: str) -> set[str]:
    """``secret`` as text may carry it: plain, stripped of surrounding whitespace, escaped as ``repr`` and
    JSON escape it (of text and of bytes), and URL-encoded."""
    forms = set()
    for value in {secret, secret.strip()}:
        if len(value) < MIN_SECRET_LENGTH:
            continue
        forms |= {
            value,
            value.encode("unicode_escape").decode("ascii"),
            repr(value)[1:-1],
            repr(value.encode())[2:-1],
            json.dumps(value)[1:-1],
            urllib.parse.quote(value, safe=""),
            urllib.parse.quote_plus(value),
        }
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every form of every secret replaced by ``***``, and URL userinfo and DSN passwords
    redacted."""
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            forms |= secret_forms(secret)
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, REDACTED)
    return redact(text)


def redact(text: str) -> str:
    """``text`` with the userinfo of every URL and the password of every key=value DSN replaced by ``***``."""
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    return _DSN_PASSWORD.sub(lambda m: f"{m.group(1)}{REDACTED}", text)


class LogRedactor(logging.Filter):
    """Redacts URL userinfo and DSN passwords from every record a handler emits, its traceback included
    (kopf logs whole request bodies at DEBUG, and a spec may hold a URL with userinfo)."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot be formatted: leave it to the handler, which reports it
            return True
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


# Client libraries log whole responses at DEBUG (a Secret's data, by the kubernetes client) and request
# headers (botocore): whatever the verbosity, they log at INFO and above only.
CLIENT_LOGGERS = ("kubernetes", "urllib3", "botocore", "boto3", "s3transfer")


def quiet_client_loggers() -> None:
    for name in CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)


class _WithoutTracebacks(logging.Filter):
    """Keeps a client library's log line and drops the traceback it attached: botocore logs a failed
    credential refresh (an STS that does not answer) as a WARNING with the whole connection traceback,
    while the exporter reports the failure itself, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.partition(".")[0] in CLIENT_LOGGERS:
            record.exc_info = record.exc_text = record.stack_info = None
        return True


def drop_client_tracebacks(logger: logging.Logger | None = None) -> None:
    """Add a filter to every handler of ``logger`` (the root logger by default) that drops the tracebacks
    of the client libraries' log records; call it before install_log_redaction."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(existing, _WithoutTracebacks) for existing in handler.filters):
            handler.addFilter(_WithoutTracebacks())


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Add a LogRedactor to every handler of ``logger`` (the root logger by default) that has none.

    A handler's filter sees every record it emits, whichever logger it came from; a logger's filter
    would not see records propagated from its children."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(existing, LogRedactor) for existing in handler.filters):
            handler.addFilter(LogRedactor())


def describe_exception(exc: BaseException) -> str:
    """An exception by its class and where it was raised (``ZeroDivisionError at export/engine.py:412 in
    run``), never by its text, which can quote anything it was handed, a credential included."""
    frame = None
    tb = exc.__traceback__
    while tb is not None:
        if "capture_export" in tb.tb_frame.f_code.co_filename:
            frame = tb
        tb = tb.tb_next
    if frame is None:
        return exc.__class__.__name__
    filename = frame.tb_frame.f_code.co_filename.replace("\\", "/").rsplit("capture_export/", 1)[-1]
    return f"{exc.__class__.__name__} at {filename}:{frame.tb_lineno} in {frame.tb_frame.f_code.co_name}"
