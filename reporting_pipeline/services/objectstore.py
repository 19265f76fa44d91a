"""S3 access: client construction, encrypted writes, pre-signed links."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from botocore.exceptions import ClientError

from .retry import call_with_retry

NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}


def make_client(endpoint_url: str | None = None, region: str | None = None, **credentials: str):
    """A boto3 S3 client that signs with SigV4 (with the default credential chain's keys unless given).

    Without signature_version="s3v4" boto3 may pre-sign the legacy (SigV2) way; a custom endpoint
    (moto, MinIO) wants path-style addressing.
    """
    # Imported here, not with the module: boto3 costs ~0.2 CPU-s, and most processes that load the pipeline's
    # definitions (a code server evaluating sensors, the CLI's database commands) never make a client.
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        # Retries happen once, in reporting_pipeline.services.retry; botocore's own would multiply them.
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        config=config,
        **credentials,
    )


def load_client_models() -> None:
    """Load what every S3 client is made from (botocore's S3 model and endpoint rules) into this process's
    default session: ~90 ms of CPU once, after which a client takes ~17 ms instead of ~100.

    For a process that forks workers which each make a client. The keys are dummies, so no credential
    provider is asked (no metadata-service call); the client is thrown away unused.
    """
    make_client(None, "us-east-1", aws_access_key_id="unused", aws_secret_access_key="unused")


def ensure_bucket(client, bucket: str) -> None:
    """Create the bucket if it does not exist (local and test setups)."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(Bucket=bucket)


def is_not_found(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in NOT_FOUND_CODES


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Encryption:
    """Server-side encryption applied to every object the pipeline writes."""

    algorithm: str = "AES256"  # or "aws:kms"
    kms_key_id: str | None = None

    def put_args(self) -> dict:
        args = {"ServerSideEncryption": self.algorithm}
        if self.algorithm == "aws:kms" and self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args


def put_if_changed(client, bucket: str, key: str, data: bytes, content_type: str, encryption: Encryption,
                   look_first: bool = True, metadata: dict | None = None) -> bool:
    """Write `data` under `key` unless the same bytes are already there; True if it wrote.

    Skipping identical bytes keeps a rerun from creating a new object version. `look_first=False`
    skips the HEAD request for a key the caller has no record of: at worst the same bytes are written twice.
    """
    digest = sha256_hex(data)
    try:
        head = client.head_object(Bucket=bucket, Key=key) if look_first else {}
        if head.get("Metadata", {}).get("sha256") == digest and head.get("ContentLength") == len(data):
            return False
    except ClientError as error:
        if not is_not_found(error):
            raise
    client.put_object(
        Bucket=bucket,
        Key=key,
        Body=data,
        ContentType=content_type,
        Metadata={**(metadata or {}), "sha256": digest},
        **encryption.put_args(),
    )
    return True


def presigned_get_url(client, bucket: str, key: str, expires_in_seconds: int) -> str:
    """A SigV4 pre-signed GET link for one object."""
    return client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=int(expires_in_seconds)
    )


def list_objects(s3, bucket: str, prefix: str, page_size: int = 1000) -> Iterator[dict]:
    """Objects under `prefix` in key order, one listing page in memory at a time."""
    args = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
    while True:
        page = call_with_retry(lambda: s3.list_objects_v2(**args))
        yield from page.get("Contents", [])
        if not page.get("IsTruncated"):
            return
        args["ContinuationToken"] = page["NextContinuationToken"]
