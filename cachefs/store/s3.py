"""S3 (and S3-compatible) store on boto3. The only module that imports boto3/botocore.

The client is set up for the widest compatibility: path-style addressing and SigV4 (MinIO, Garage,
SeaweedFS), checksums only when an operation requires them (Garage and others reject the newer
default CRC headers), bounded retries and connect/read timeouts so no call hangs.

GETs and small PUTs, the calls a tree of small files makes by the thousand, take a lean path:
the same SigV4 signing (botocore's signer, the client's credentials) sent straight through
urllib3. botocore's full request pipeline costs about 2 ms of CPU per request; this costs about
0.6 ms, which on a 2-core machine is the difference between ~480 and ~1,700 GETs a second. Every
other call, and every call when an HTTP proxy is configured, goes through the boto3 client.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import os
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.config
import botocore.exceptions
import botocore.httpsession
import urllib3
import urllib3.exceptions

from ..config import Credentials
from ..errors import (
    AccessDenied,
    BucketNotFound,
    CacheFSError,
    Exists,
    InvalidArgument,
    NameTooLong,
    NotFound,
    ObjectChanged,
    StoreUnavailable,
)
from .base import ListPage, ObjectInfo, ReadStream, Store
from .retry import LEAN

log = logging.getLogger(__name__)

#: CopyObject copies at most 5 GiB; larger objects are copied part by part.
MAX_COPY = 5 << 30
COPY_PART = 1 << 30

_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)


#: error codes for a request that can never succeed as it is: retrying does not help
_KEY_TOO_LONG = "KeyTooLongError"
_INVALID = frozenset({"InvalidArgument", "InvalidObjectName", "InvalidURI", "InvalidRequest",
                      "MetadataTooLarge", "EntityTooLarge", "InvalidDigest"})


def _refusal(code: str, what: str, message: str) -> CacheFSError | None:
    if code == _KEY_TOO_LONG:
        return NameTooLong(f"{what}: the store refused the key as too long ({message})")
    if code in _INVALID:
        return InvalidArgument(f"{what}: the store refused the request ({code}: {message})")
    return None


def translate(exc: BaseException, what: str) -> CacheFSError:
    """A botocore/urllib3 exception as one of ours, with a message that says what failed."""
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = err.get("Message") or code or f"HTTP {status}"
        if code == "NoSuchBucket":
            return BucketNotFound(f"{what}: bucket does not exist")
        refused = _refusal(code, what, message)
        if refused is not None:
            return refused
        if code in ("NoSuchKey", "404", "NotFound", "NoSuchUpload") or status == 404:
            return NotFound(f"{what}: not found")
        if code == "PreconditionFailed" or status == 412:
            return ObjectChanged(f"{what}: object changed while it was read")
        if status == 403 or code in ("AccessDenied", "InvalidAccessKeyId",
                                     "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
            return AccessDenied(f"{what}: access denied ({code or status}: {message})")
        return StoreUnavailable(f"{what}: {code or status}: {message}")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return AccessDenied(f"{what}: no S3 credentials found (set CACHEFS_S3_KEY_ID and "
                            "CACHEFS_S3_SECRET, key_file/secret_file, or AWS_* variables)")
    if isinstance(exc, _NETWORK_ERRORS):
        return StoreUnavailable(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return StoreUnavailable(f"{what}: {exc}")
    if isinstance(exc, CacheFSError):
        return exc
    return StoreUnavailable(f"{what}: unexpected {type(exc).__name__}: {exc}")


def _exists_error(e: botocore.exceptions.ClientError) -> bool:
    """412 (the key exists) or 409 ConditionalRequestConflict (another conditional write of
    it is in progress): either way another writer has or gets the key."""
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = str(e.response.get("Error", {}).get("Code", ""))
    return status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict")


@contextlib.contextmanager
def _refused_if_exists(key: str) -> Iterator[None]:
    try:
        yield
    except botocore.exceptions.ClientError as e:
        if _exists_error(e):
            raise Exists(f"{key} already exists (another writer stored it first)") from None
        raise


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except CacheFSError:
        raise
    except Exception as e:
        raise translate(e, what) from e


def _info(key: str, resp: Mapping[str, Any], size: int) -> ObjectInfo:
    modified = resp.get("LastModified")
    return ObjectInfo(
        key=key,
        size=size,
        etag=str(resp.get("ETag", "")),
        mtime=modified.timestamp() if modified else 0.0,
        metadata={k.lower(): v for k, v in (resp.get("Metadata") or {}).items()},
        encrypted=resp.get("ServerSideEncryption") == "aws:kms" or
        bool(resp.get("SSECustomerAlgorithm")),
    )


class _S3ReadStream(ReadStream):
    def __init__(self, key: str, body: Any, info: ObjectInfo) -> None:
        self.key = key
        self.body = body
        self.info = info

    def read(self, n: int) -> bytes:
        with _translated(f"reading {self.key}"):
            return bytes(self.body.read(n))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.body.close()


#: PUTs up to this size take the lean path (the body is hashed for the signature)
LEAN_PUT_MAX = 8 << 20


def _lean_error(status: int, body: bytes, what: str) -> CacheFSError:
    code = ""
    if b"<Code>" in body:
        code = body.split(b"<Code>", 1)[1].split(b"</Code>", 1)[0].decode(errors="replace")
    if code == "NoSuchBucket":
        return BucketNotFound(f"{what}: bucket does not exist")
    refused = _refusal(code, what, f"HTTP {status}")
    if refused is not None:
        return refused
    if status == 404:
        return NotFound(f"{what}: not found")
    if status == 412:
        return ObjectChanged(f"{what}: object changed while it was read")
    if status == 403:
        return AccessDenied(f"{what}: access denied ({code or status})")
    return StoreUnavailable(f"{what}: {code or 'HTTP'} {status}")


def _lean_info(key: str, headers: Any, status: int) -> ObjectInfo:
    content_range = headers.get("Content-Range")
    size = int(content_range.rsplit("/", 1)[1]) if content_range else \
        int(headers.get("Content-Length", 0))
    modified = headers.get("Last-Modified")
    mtime = email.utils.parsedate_to_datetime(modified).timestamp() if modified else 0.0
    meta = {k[11:].lower(): v for k, v in headers.items() if k.lower().startswith("x-amz-meta-")}
    encrypted = headers.get("x-amz-server-side-encryption") == "aws:kms" or \
        bool(headers.get("x-amz-server-side-encryption-customer-algorithm"))
    return ObjectInfo(key, size, str(headers.get("ETag", "")), mtime, meta, encrypted)


class _LeanReadStream(ReadStream):
    def __init__(self, key: str, response: Any, info: ObjectInfo) -> None:
        self.key = key
        self.response = response
        self.info = info

    def read(self, n: int) -> bytes:
        with _translated(f"reading {self.key}"):
            return bytes(self.response.read(n))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.response.length_remaining:
                self.response.close()  # unread body: this connection cannot be reused
            else:
                self.response.release_conn()


class S3Store(Store):
    def __init__(
        self,
        bucket: str,
        endpoint: str | None,
        region: str,
        credentials: Credentials | None,
        connections: int,
        timeout: float,
    ) -> None:
        self.bucket = bucket
        self.url = f"s3://{bucket}"
        self.endpoint = endpoint
        config = botocore.config.Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=min(5.0, max(1.0, timeout / 3)),
            read_timeout=max(1.0, timeout / 3),
            max_pool_connections=connections,
            tcp_keepalive=True,
        )
        kwargs: dict[str, Any] = {"region_name": region, "config": config}
        if endpoint:
            kwargs["endpoint_url"] = endpoint
        self.credential_source = credentials.key_id_source if credentials else ""
        self.secret_source = credentials.secret_source if credentials else ""
        if credentials:
            kwargs["aws_access_key_id"] = credentials.key_id
            kwargs["aws_secret_access_key"] = credentials.secret
        self.client = boto3.session.Session().client("s3", **kwargs)
        self.region = region
        self.endpoint_url = str(self.client.meta.endpoint_url).rstrip("/")
        #: whether the server honours If-None-Match on writes (None: not probed yet)
        self._conditional: bool | None = None
        self.lean = not any(os.environ.get(v) for v in (
            "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"))
        self.pool = urllib3.PoolManager(
            maxsize=connections, ca_certs=botocore.httpsession.DEFAULT_CA_BUNDLE,
            timeout=urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout),
            retries=False)

    def credential_report(self) -> list[tuple[str, str, int]]:
        """(what, where it came from, length) for `cachefs doctor`; never the values."""
        creds = self.client._request_signer._credentials
        if creds is None:
            return [("credentials", "none found", 0)]
        frozen = creds.get_frozen_credentials()
        source = self.credential_source or f"boto3 chain ({getattr(creds, 'method', '?')})"
        report = [("access key id", source, len(frozen.access_key or "")),
                  ("secret key", self.secret_source or source, len(frozen.secret_key or ""))]
        if frozen.token:
            report.append(("session token", source, len(frozen.token)))
        return report

    def check(self) -> None:
        with _translated(f"bucket {self.bucket}"):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except botocore.exceptions.ClientError as e:
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 404:
                    raise BucketNotFound(f"bucket {self.bucket} does not exist") from e
                raise

    def list_page(self, prefix: str, delimiter: str | None = "/",
                  token: str | None = None) -> tuple[ListPage, str | None]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if token:
            kwargs["ContinuationToken"] = token
        with _translated(f"listing {prefix or '/'}"):
            resp = self.client.list_objects_v2(**kwargs)
        objects = [
            ObjectInfo(o["Key"], int(o["Size"]), str(o["ETag"]), o["LastModified"].timestamp())
            for o in resp.get("Contents", ())
        ]
        prefixes = [p["Prefix"] for p in resp.get("CommonPrefixes", ())]
        next_token = resp.get("NextContinuationToken") if resp.get("IsTruncated") else None
        return ListPage(objects, prefixes), next_token

    def head(self, key: str) -> ObjectInfo:
        with _translated(f"HEAD {key}"):
            resp = self.client.head_object(Bucket=self.bucket, Key=key)
            return _info(key, resp, int(resp["ContentLength"]))

    def _lean(self, method: str, key: str, headers: dict[str, str],
              body: bytes = b"") -> Any:
        """One signed request without botocore's pipeline; returns the urllib3 response."""
        url = f"{self.endpoint_url}/{self.bucket}/{urllib.parse.quote(key, safe='/~')}"
        signer = self.client._request_signer
        credentials = signer._credentials
        if credentials is None:
            raise AccessDenied(f"{method} {key}: no S3 credentials found")
        failures = 0
        while True:
            request = botocore.awsrequest.AWSRequest(method=method, url=url,
                                                     headers=dict(headers), data=body)
            botocore.auth.S3SigV4Auth(credentials.get_frozen_credentials(), "s3",
                                      self.region).add_auth(request)
            try:
                response = self.pool.request(method, url, headers=dict(request.headers.items()),
                                             body=body or None, preload_content=False)
            except urllib3.exceptions.HTTPError as e:
                failures += 1
                if LEAN.gives_up(failures):
                    raise StoreUnavailable(f"{method} {key}: {type(e).__name__}: {e}") from e
            else:
                if response.status < 300:
                    return response
                data = response.read()
                response.release_conn()
                error = _lean_error(response.status, data, f"{method} {key}")
                failures += 1
                if response.status < 500 or LEAN.gives_up(failures):
                    raise error
            time.sleep(LEAN.delay(failures))  # a worker thread: this blocks only itself

    def open_read(
        self, key: str, start: int = 0, length: int | None = None, etag: str | None = None
    ) -> ReadStream:
        if self.lean and (length is None or length > 0):
            headers = {}
            if etag:
                headers["If-Match"] = etag
            if length is not None:
                headers["Range"] = f"bytes={start}-{start + length - 1}"
            elif start:
                headers["Range"] = f"bytes={start}-"
            response = self._lean("GET", key, headers)
            return _LeanReadStream(key, response, _lean_info(key, response.headers,
                                                             response.status))
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if etag:
            kwargs["IfMatch"] = etag
        if length is not None:
            if length <= 0:
                return _EmptyStream(self.head(key))
            kwargs["Range"] = f"bytes={start}-{start + length - 1}"
        elif start:
            kwargs["Range"] = f"bytes={start}-"
        with _translated(f"GET {key}"):
            resp = self.client.get_object(**kwargs)
        content_range = resp.get("ContentRange")
        size = int(content_range.rsplit("/", 1)[1]) if content_range else int(resp["ContentLength"])
        return _S3ReadStream(key, resp["Body"], _info(key, resp, size))

    def put(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        if self.lean and len(data) <= LEAN_PUT_MAX and all(
                v.isascii() for v in metadata.values()):
            headers = {f"x-amz-meta-{k}": v for k, v in metadata.items()}
            response = self._lean("PUT", key, headers, data)
            response.release_conn()
            return ObjectInfo(key, len(data), str(response.headers.get("ETag", "")), 0.0,
                              dict(metadata))
        with _translated(f"PUT {key}"):
            resp = self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                          Metadata=dict(metadata))
        return ObjectInfo(key, len(data), str(resp.get("ETag", "")), 0.0, dict(metadata))

    def create_multipart(self, key: str, metadata: Mapping[str, str]) -> str:
        with _translated(f"starting multipart upload of {key}"):
            resp = self.client.create_multipart_upload(Bucket=self.bucket, Key=key,
                                                       Metadata=dict(metadata))
        return str(resp["UploadId"])

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        with _translated(f"uploading part {number} of {key}"):
            resp = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                           PartNumber=number, Body=data)
        return str(resp["ETag"])

    def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]], size: int
    ) -> ObjectInfo:
        with _translated(f"completing multipart upload of {key}"):
            resp = self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]},
            )
        return ObjectInfo(key, size, str(resp.get("ETag", "")), 0.0)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        with _translated(f"aborting multipart upload of {key}"):
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                   UploadId=upload_id)
            except botocore.exceptions.ClientError as e:
                if translate(e, key).__class__ is not NotFound:
                    raise

    # -- writes that never replace -------------------------------------------------------------

    def conditional_writes(self, near: str = "") -> bool:
        """Probe once (per store object) whether the server honours ``If-None-Match: *`` on
        PutObject and on CompleteMultipartUpload: write a probe object next to ``near`` (a key
        the caller may write, so a policy limited to a prefix allows it), then try both
        conditional writes on it again; each must be refused with 412. Any other answer means
        the header is ignored or unknown, and writes fall back to a HEAD check."""
        if self._conditional is None:
            parent = near.rpartition("/")[0]
            probe = f"{parent + '/' if parent else ''}.cachefs-probe-{uuid.uuid4().hex}"
            try:
                self._conditional = self._probe(probe)
            finally:
                with contextlib.suppress(CacheFSError):
                    self.delete(probe)
            if not self._conditional:
                log.warning("%s does not honour If-None-Match on writes: an existing key is "
                            "checked with HEAD first, which two runners racing to save the "
                            "same key can both pass", self.endpoint_url)
        return self._conditional

    def _probe(self, key: str) -> bool:
        with _translated(f"probing conditional writes with {key}"):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"1")
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"2", IfNoneMatch="*")
        except botocore.exceptions.ClientError as e:
            if not _exists_error(e):
                return False
        else:
            return False
        upload_id = self.create_multipart(key, {})
        try:
            etag = self.upload_part(key, upload_id, 1, b"3")
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, IfNoneMatch="*",
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
        except botocore.exceptions.ClientError as e:
            return _exists_error(e)
        finally:
            with contextlib.suppress(CacheFSError):
                self.abort_multipart(key, upload_id)
        return False

    def put_new(self, key: str, data: bytes, metadata: Mapping[str, str]) -> ObjectInfo:
        if not self.conditional_writes(key):
            return super().put_new(key, data, metadata)
        with _translated(f"PUT {key}"), _refused_if_exists(key):
            resp = self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                          Metadata=dict(metadata), IfNoneMatch="*")
        return ObjectInfo(key, len(data), str(resp.get("ETag", "")), 0.0, dict(metadata))

    def complete_multipart_new(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]], size: int
    ) -> ObjectInfo:
        if not self.conditional_writes(key):
            return super().complete_multipart_new(key, upload_id, parts, size)
        with _translated(f"completing multipart upload of {key}"), _refused_if_exists(key):
            resp = self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, IfNoneMatch="*",
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]},
            )
        return ObjectInfo(key, size, str(resp.get("ETag", "")), 0.0)

    def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        source = self.head(src)
        if source.size > MAX_COPY:
            return self._copy_multipart(source, dst, metadata)
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket, "Key": dst,
            "CopySource": {"Bucket": self.bucket, "Key": src},
            "CopySourceIfMatch": source.etag,
        }
        if metadata is not None:
            kwargs["Metadata"] = dict(metadata)
            kwargs["MetadataDirective"] = "REPLACE"
        with _translated(f"copying {src} to {dst}"):
            resp = self.client.copy_object(**kwargs)
        etag = str(resp.get("CopyObjectResult", {}).get("ETag", ""))
        meta = dict(metadata) if metadata is not None else dict(source.metadata)
        return ObjectInfo(dst, source.size, etag, 0.0, meta)

    def _copy_multipart(
        self, source: ObjectInfo, dst: str, metadata: Mapping[str, str] | None
    ) -> ObjectInfo:
        upload_id = self.create_multipart(dst, metadata if metadata is not None
                                          else source.metadata)
        try:
            parts = []
            for number, start in enumerate(range(0, source.size, COPY_PART), 1):
                end = min(source.size, start + COPY_PART) - 1
                with _translated(f"copying part {number} of {source.key}"):
                    resp = self.client.upload_part_copy(
                        Bucket=self.bucket, Key=dst, UploadId=upload_id, PartNumber=number,
                        CopySource={"Bucket": self.bucket, "Key": source.key},
                        CopySourceRange=f"bytes={start}-{end}",
                        CopySourceIfMatch=source.etag,
                    )
                parts.append((number, str(resp["CopyPartResult"]["ETag"])))
            return self.complete_multipart(dst, upload_id, parts, source.size)
        except BaseException:
            with contextlib.suppress(CacheFSError):
                self.abort_multipart(dst, upload_id)
            raise

    def delete(self, key: str) -> None:
        with _translated(f"DELETE {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_many(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            with _translated(f"deleting {len(batch)} keys"):
                resp = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise StoreUnavailable(f"deleting {first.get('Key')}: {first.get('Code')}: "
                                       f"{first.get('Message')} ({len(errors)} keys failed)")


class _EmptyStream(ReadStream):
    def __init__(self, info: ObjectInfo) -> None:
        self.info = info

    def read(self, n: int) -> bytes:
        return b""

    def close(self) -> None:
        pass
