"""redact.py: secrets out of text in every form text carries them."""

from __future__ import annotations

import logging

import pytest

from capture_export.redact import LogRedactor, control_characters, redact, scrub


@pytest.mark.parametrize(("text", "expected"), [
    ("http://user:hunter2@minio:9000/x", "http://***@minio:9000/x"),
    ("connect to https://tok3n@host/ failed", "connect to https://***@host/ failed"),
    ("postgresql://capture:p%40ss@db:5432/capture", "postgresql://***@db:5432/capture"),
    ("host=db password=hunter2 dbname=x", "host=db password=*** dbname=x"),
    ("host=db password = 'it''s secret' user=u", "host=db password = *** user=u"),
    ("PASSWORD=hunter2", "PASSWORD=***"),
    ("http://minio:9000/path@x", "http://minio:9000/path@x"),
    ("no secrets here", "no secrets here"),
])
def test_redact_hides_url_userinfo_and_dsn_passwords(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_scrub_removes_a_secret_in_every_escaped_form() -> None:
    secret = "t0ken/with+chars\n"
    texts = [
        f"Invalid header value {secret.encode()!r}",  # b'...\\n', as botocore's error says
        f"value {secret!r}",
        "json " + '"t0ken/with+chars\\n"',
        "url t0ken%2Fwith%2Bchars%0A",
        "plus t0ken%2Fwith%2Bchars%0A",
        "plain t0ken/with+chars",
    ]
    for text in texts:
        assert "t0ken" not in scrub(text, [secret]), text


def test_control_characters_are_named_without_the_value() -> None:
    assert control_characters("abc\n") == ["'\\n'"]
    assert control_characters("a\x1b[31m\r") == ["'\\r'", "'\\x1b'"]
    assert control_characters("clean") == []


def test_log_redactor_cleans_messages_args_and_tracebacks() -> None:
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Collect()
    handler.addFilter(LogRedactor())
    logger = logging.getLogger("test-redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("patching %s", {"endpoint": "http://admin:hunter2@minio"})
        try:
            raise ValueError("cannot open postgresql://u:hunter2@db/x")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert records and all("hunter2" not in r for r in records), records
