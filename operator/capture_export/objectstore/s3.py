"""The botocore implementation of the object-store seam, with failures classed for conditions."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import botocore.exceptions
import botocore.handlers
from botocore.config import Config

from ..api.vocabulary import Domain, Reason
from ..redact import redact
from .base import (
    PRECONDITION_FAILED,
    Credentials,
    ObjectInfo,
    ObjectStoreError,
    S3Access,
    S3Location,
    StoredObject,
    scrub,
)
from .credentials import botocore_session

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
_STS_OPERATIONS = {"AssumeRole", "AssumeRoleWithWebIdentity"}
_EXPIRED_CODES = {"ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired", "RequestExpired"}
_THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                   "503", "429"}


def _where(location: S3Location) -> str:
    endpoint = f" at {redact(location.endpoint)}" if location.endpoint else ""
    return f"bucket {location.bucket!r}{endpoint}"


def _classify_sts(exc: botocore.exceptions.ClientError, role: str | None, secrets: list[str]) -> ObjectStoreError:
    """An STS failure while assuming the role (spec.roleArn) or the pod's web identity (IRSA)."""
    error = exc.response.get("Error", {})
    code = scrub(str(error.get("Code", "")), secrets)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    detail = scrub(str(error.get("Message") or code), secrets)
    operation = exc.operation_name
    if operation == "AssumeRoleWithWebIdentity":
        if code in ("InvalidIdentityToken", "ExpiredTokenException", "IDPRejectedClaim", "AccessDenied"):
            return ObjectStoreError(Reason.WEB_IDENTITY_REJECTED, f"STS refused the pod's web identity token "
                                    f"(AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN): {code}: {detail}; check the "
                                    "role's trust policy names this cluster's OIDC provider and service account",
                                    transient=False, domain=Domain.CREDENTIALS)
    elif code in _EXPIRED_CODES:
        return ObjectStoreError(Reason.EXPIRED_TOKEN, f"the base credentials' session token has expired ({code}), "
                                f"so STS cannot assume {role}: rotate the Secret", transient=False,
                                domain=Domain.CREDENTIALS)
    elif code in _CREDENTIAL_CODES:
        return ObjectStoreError("InvalidCredentials", f"STS rejected the base credentials used to assume {role}: "
                                f"{code}: {detail}", transient=False, domain=Domain.CREDENTIALS)
    elif code == "AccessDenied" or status == 403:
        # AWS answers AccessDenied alike for a trust policy that does not name the caller, a wrong or
        # missing sts:ExternalId, and a caller without sts:AssumeRole: say all three.
        return ObjectStoreError(Reason.ASSUME_ROLE_DENIED, f"STS denied AssumeRole of {role}: {detail}; the role's "
                                "trust policy must allow this identity (and require exactly spec.externalId, when "
                                "it checks sts:ExternalId), and the identity needs sts:AssumeRole on the role",
                                transient=False, domain=Domain.CREDENTIALS)
    transient = code in _THROTTLE_CODES or status >= 500 or status in (429, 503)
    return ObjectStoreError(Reason.ASSUME_ROLE_FAILED, f"{operation} of {role or 'the web identity role'} failed: "
                            f"{code}: {detail}", transient=transient, domain=Domain.CREDENTIALS)


def classify(exc: BaseException, location: S3Location, secrets: list[str], *,
             role: str | None = None, temporary: bool = False) -> ObjectStoreError:
    """Turn a client failure into an ObjectStoreError with a clear, secret-free message. ``role``: the
    role being assumed, if any (STS failures surface in the S3 call that needed credentials);
    ``temporary``: the Secret's credentials carry a session token (which may have expired: AWS then says
    ExpiredToken, some S3-compatible services only that the key is unknown).

    Only the server's own error code and message are quoted (scrubbed of the credentials in every form);
    a failure raised inside the client (botocore's, urllib3's, http.client's) is named by its class alone:
    its text can quote a request header, credentials included (``Invalid header value b'…'``)."""
    where = _where(location)
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return ObjectStoreError("CredentialsMissing", "no S3 credentials were found (set spec.secretRef, or give "
                                "the pod an identity: IRSA, EKS Pod Identity)", transient=False,
                                domain=Domain.CREDENTIALS)
    endpoint = redact(location.endpoint) if location.endpoint else "Amazon S3"
    if isinstance(exc, botocore.exceptions.SSLError):
        return ObjectStoreError(Reason.TLS_VERIFICATION_FAILED, f"TLS to {endpoint} failed: "
                                "the server's certificate is not trusted or does not match the host; set "
                                "spec.caBundleRef to the CA that signed it", transient=False, domain=Domain.BUCKET)
    if isinstance(exc, botocore.exceptions.ClientError) and exc.operation_name in _STS_OPERATIONS:
        return _classify_sts(exc, role, secrets)
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = scrub(str(error.get("Code", "")), secrets)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        detail = scrub(str(error.get("Message") or code), secrets)
        if code == PRECONDITION_FAILED or status == 412:
            return ObjectStoreError(PRECONDITION_FAILED, f"{where}: a conditional write's precondition failed",
                                    transient=False, domain=Domain.BUCKET)
        if code in _EXPIRED_CODES:
            return ObjectStoreError(Reason.EXPIRED_TOKEN, f"{where} rejected the credentials: the session token has "
                                    f"expired ({code}); put fresh keys and session_token in the Secret",
                                    transient=False, domain=Domain.CREDENTIALS)
        if code in _CREDENTIAL_CODES:
            hint = ("; these are temporary credentials (with a session token): if the session expired, put fresh "
                    "keys and session_token in the Secret" if temporary else "")
            return ObjectStoreError("InvalidCredentials", f"{where} rejected the credentials: {code}: {detail}{hint}",
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
        return ObjectStoreError("EndpointUnreachable", f"cannot connect to {endpoint}", transient=True,
                                domain=Domain.BUCKET)
    if isinstance(exc, botocore.exceptions.ReadTimeoutError | botocore.exceptions.ConnectionClosedError |
                  botocore.exceptions.ResponseStreamingError):
        return ObjectStoreError("EndpointUnreachable", f"connection to {endpoint} failed mid-request: "
                                f"{exc.__class__.__name__}", transient=True, domain=Domain.BUCKET)
    if isinstance(exc, botocore.exceptions.BotoCoreError | OSError):
        return ObjectStoreError("S3RequestFailed", f"{where}: the request failed in the S3 client "
                                f"({exc.__class__.__name__})", transient=True, domain=Domain.BUCKET)
    return ObjectStoreError("S3RequestFailed", f"{where}: the request could not be made ({exc.__class__.__name__})",
                            transient=False, domain=Domain.BUCKET)


# botocore wraps a bytes Body of PutObject in a BytesIO (rewindable for its own retries), which makes
# urllib3 send it in 16 KB pieces and botocore add `Expect: 100-continue` and wait for the server's
# interim answer before the body: 0.2-0.6 ms of CPU per PUT, two PUTs per batch. Our bodies are bytes
# and each call makes one attempt, so they are sent as they are, in one piece after the headers. A server
# that refuses a PUT from its headers and closes on the upload is still read (urllib3 reads the answer
# after a broken pipe or reset): tests/unit/test_s3_put_requests.py checks both, and that the handler
# still exists under this name (a botocore without it keeps its default, merely slower).
_PUT_BODY_EVENT = "before-parameter-build.s3.PutObject"
_PUT_BODY_TO_FILE = getattr(botocore.handlers, "convert_body_to_file_like_object", None)


def _send_put_bodies_whole(client: Any) -> None:
    if _PUT_BODY_TO_FILE is not None:
        client.meta.events.unregister(_PUT_BODY_EVENT, _PUT_BODY_TO_FILE)


def _ca_bundle_file(pem: str) -> str:
    """A file holding ``pem`` (botocore verifies against a path): one per distinct bundle, in a private
    folder, written once."""
    folder = Path(tempfile.gettempdir()) / f"capture-export-ca-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{hashlib.sha256(pem.encode()).hexdigest()[:32]}.pem"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        partial.write_text(pem)
        partial.replace(path)
    return str(path)


class S3ObjectStore:
    """An S3-compatible bucket through a botocore client. Path-style addressing whenever an endpoint is given.

    ``access`` is an S3Access (credentials, role, encryption, TLS), or plain Credentials (or None for the
    SDK's default chain). ``now`` times the renewal of an assumed role's session (the worker's clock)."""

    def __init__(
        self,
        location: S3Location,
        access: S3Access | Credentials | None,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_pool_connections: int = 16,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        if not isinstance(access, S3Access):
            access = S3Access(credentials=access)
        self.location = location
        self.access = access
        self._secrets = access.secrets()
        self._role = access.role.role_arn if access.role else None
        self._temporary = bool(access.role is None and access.credentials and access.credentials.session_token)
        self._put_arguments = access.encryption.put_arguments() if access.encryption else {}
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
        verify: bool | str | None = None
        if not access.verify_tls:
            verify = False
        elif access.ca_bundle:
            verify = _ca_bundle_file(access.ca_bundle)
        sts_config = Config(region_name=location.region, connect_timeout=connect_timeout, read_timeout=read_timeout,
                            retries={"total_max_attempts": 2, "mode": "standard"})
        # A botocore session is not thread-safe; each store gets its own. botocore, not boto3: boto3's
        # client is botocore's, and importing boto3 also imports s3transfer and multiprocessing (~0.05 s
        # of CPU at every start), which nothing here uses.
        try:
            with _session_lock:
                self.session = botocore_session(access, region=location.region, now=now, sts_config=sts_config)
                self._client = self.session.create_client("s3", config=config, endpoint_url=location.endpoint,
                                                          verify=verify)
                _send_put_bodies_whole(self._client)
        except Exception as exc:  # an invalid region or endpoint: its text may quote the endpoint's userinfo
            raise ObjectStoreError("InvalidConfiguration", f"{_where(location)}: no S3 client can be made for "
                                   f"region {location.region!r} ({exc.__class__.__name__})", transient=False,
                                   domain=Domain.BUCKET) from None

    def _fail(self, exc: BaseException) -> ObjectStoreError:
        return classify(exc, self.location, self._secrets, role=self._role, temporary=self._temporary)

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: Mapping[str, str] | None = None) -> None:
        kwargs: dict[str, Any] = {"Metadata": dict(metadata)} if metadata else {}
        try:
            self._client.put_object(Bucket=self.location.bucket, Key=key, Body=data, ContentType=content_type,
                                    **self._put_arguments, **kwargs)
        except Exception as exc:
            raise self._fail(exc) from None

    def put_conditional(self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False,
                        content_type: str = "application/octet-stream") -> str:
        kwargs: dict[str, Any] = {}
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        try:
            response = self._client.put_object(Bucket=self.location.bucket, Key=key, Body=data,
                                               ContentType=content_type, **self._put_arguments, **kwargs)
        except Exception as exc:
            raise self._fail(exc) from None
        return str(response.get("ETag", ""))

    @staticmethod
    def _missing(exc: botocore.exceptions.ClientError) -> bool:
        return exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")

    def get(self, key: str) -> bytes | None:
        found = self.fetch(key)
        return None if found is None else found.data

    def fetch(self, key: str) -> StoredObject | None:
        try:
            response = self._client.get_object(Bucket=self.location.bucket, Key=key)
            return StoredObject(response["Body"].read(), str(response.get("ETag", "")),
                                dict(response.get("Metadata") or {}))
        except botocore.exceptions.ClientError as exc:
            if self._missing(exc):
                return None
            raise self._fail(exc) from None
        except Exception as exc:
            raise self._fail(exc) from None

    def head(self, key: str) -> StoredObject | None:
        try:
            response = self._client.head_object(Bucket=self.location.bucket, Key=key)
            return StoredObject(b"", str(response.get("ETag", "")), dict(response.get("Metadata") or {}))
        except botocore.exceptions.ClientError as exc:
            if self._missing(exc):
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
                yield ObjectInfo(item["Key"], int(item.get("Size", 0)), str(item.get("ETag", "")))
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
