"""The boto3 implementation of the object-store seam, with failures classed for conditions."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from ..api.vocabulary import Domain
from .base import Credentials, ObjectInfo, ObjectStoreError, S3Location, scrub

__all__ = ["S3ObjectStore", "classify"]

_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
}
_THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                   "503", "429"}


def classify(exc: BaseException, location: S3Location, secrets: list[str]) -> ObjectStoreError:
    """Turn a botocore failure into an ObjectStoreError with a clear, secret-free message."""
    where = f"bucket {location.bucket!r}" + (f" at {location.endpoint}" if location.endpoint else "")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return ObjectStoreError("CredentialsMissing", "no S3 credentials were found (set spec.secretRef)",
                                transient=False, domain=Domain.CREDENTIALS)
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        detail = scrub(str(error.get("Message") or code), secrets)
        if code in _CREDENTIAL_CODES:
            return ObjectStoreError("InvalidCredentials", f"{where} rejected the credentials: {code}: {detail}",
                                    transient=False, domain=Domain.CREDENTIALS)
        if code in ("NoSuchBucket",) or (code == "404" and status == 404):
            return ObjectStoreError("BucketNotFound", f"{where} does not exist", transient=False, domain=Domain.BUCKET)
        if code in ("AccessDenied", "403", "AllAccessDisabled") or status == 403:
            return ObjectStoreError("AccessDenied", f"{where} denied access: {detail}", transient=False,
                                    domain=Domain.CREDENTIALS)
        if code in _THROTTLE_CODES or status in (429, 503):
            return ObjectStoreError("Throttled", f"{where} is throttling requests ({code or status}); backing off",
                                    transient=True, domain=Domain.BUCKET)
        if status >= 500:
            return ObjectStoreError("S3ServerError", f"{where} failed with {status} {code}: {detail}",
                                    transient=True, domain=Domain.BUCKET)
        return ObjectStoreError("S3RequestFailed", f"{where} refused the request: {code} {detail}".strip(),
                                transient=False, domain=Domain.BUCKET)
    if isinstance(exc, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError):
        return ObjectStoreError("EndpointUnreachable", f"cannot connect to {location.endpoint or 'Amazon S3'}",
                                transient=True, domain=Domain.BUCKET)
    if isinstance(exc, botocore.exceptions.ReadTimeoutError | botocore.exceptions.ConnectionClosedError |
                  botocore.exceptions.ResponseStreamingError):
        return ObjectStoreError("EndpointUnreachable",
                                f"connection to {location.endpoint or 'Amazon S3'} failed mid-request: "
                                f"{exc.__class__.__name__}", transient=True, domain=Domain.BUCKET)
    if isinstance(exc, botocore.exceptions.BotoCoreError | OSError):
        return ObjectStoreError("S3RequestFailed", scrub(f"{where}: {exc}", secrets), transient=True,
                                domain=Domain.BUCKET)
    raise exc


class S3ObjectStore:
    """An S3-compatible bucket through boto3. Path-style addressing whenever an endpoint is given."""

    def __init__(
        self,
        location: S3Location,
        credentials: Credentials | None,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_pool_connections: int = 16,
    ) -> None:
        self.location = location
        self._secrets = credentials.secrets() if credentials else []
        config = Config(
            region_name=location.region,
            signature_version="s3v4",
            s3={"addressing_style": "path" if location.endpoint else "auto"},
            # One HTTP attempt per call: the export engine alone retries, with its backoff (botocore reads
            # "max_attempts" as retries, so a total of 1 is spelled "total_max_attempts").
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
            # Several S3-compatible services reject the newer default CRC trailers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        kwargs: dict[str, Any] = {"config": config, "endpoint_url": location.endpoint}
        if credentials is not None:
            kwargs |= {
                "aws_access_key_id": credentials.access_key_id,
                "aws_secret_access_key": credentials.secret_access_key,
                "aws_session_token": credentials.session_token,
            }
        # boto3's default session is not thread-safe; each store gets its own.
        with _session_lock:
            self._client = boto3.session.Session().client("s3", **kwargs)

    def _fail(self, exc: BaseException) -> ObjectStoreError:
        return classify(exc, self.location, self._secrets)

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        try:
            self._client.put_object(Bucket=self.location.bucket, Key=key, Body=data, ContentType=content_type)
        except Exception as exc:
            raise self._fail(exc) from None

    def get(self, key: str) -> bytes | None:
        try:
            response = self._client.get_object(Bucket=self.location.bucket, Key=key)
            return response["Body"].read()
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._fail(exc) from None
        except Exception as exc:
            raise self._fail(exc) from None

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        kwargs: dict[str, Any] = {"Bucket": self.location.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        while True:
            try:
                page = self._client.list_objects_v2(**kwargs)
            except Exception as exc:
                raise self._fail(exc) from None
            for item in page.get("Contents", []):
                yield ObjectInfo(item["Key"], int(item.get("Size", 0)))
            if not page.get("IsTruncated"):
                return
            kwargs.pop("StartAfter", None)
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.location.bucket, Key=key)
        except Exception as exc:
            raise self._fail(exc) from None

    def check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.location.bucket)
        except Exception as exc:
            raise self._fail(exc) from None

    def create_bucket(self) -> None:
        try:
            self._client.create_bucket(Bucket=self.location.bucket)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._fail(exc) from None


_session_lock = threading.Lock()
