"""Fixtures of the integration tier beyond tests/conftest.py: moto's server (STS, IAM, a policy-enforcing
S3) for the credential and permission tests (tests/integration/aws_support.py)."""

from __future__ import annotations

from .aws_support import aws, moto_server  # noqa: F401
