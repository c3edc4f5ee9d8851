"""Bucket set-up for the batch service: the bucket and its expiry rule, idempotently, S3 API only.

Run as a one-shot service before the batch API starts (`python -m runtime.batch.bucket`), and by
the API itself at start-up. It replaces a `mc` script whose `ilm rule rm --all` failed on every new
bucket: a put of the lifecycle configuration replaces whatever rules were there, so no removal step
is needed, and the rule read back afterwards proves it was set.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

RULE_ID = "batch-results-expire"
# Default encryption at rest, SSE-S3. RustFS (rustfs/rustfs 1.0.0-rc.3) stores the bucket's rule
# (rustfs/src/app/bucket_usecase.rs:2099-2144, no KMS needed for AES256), applies it to each write
# (rustfs/src/storage/sse.rs:240-264 reads the bucket's default; :1940-1958 managed SSE) and, without
# a KMS, seals each object's data key with RUSTFS_SSE_S3_MASTER_KEY (sse.rs:3104-3136; a write is
# refused with a 400 while that is unset), which the stacks set (infra/components/object_store.py).
SSE_ALGORITHM = "AES256"
PROBE_KEY, PROBE_BODY = "setup/encryption-probe", b"vllm-gb10 encryption probe"
MISSING_BUCKET_CODES = {"404", "NoSuchBucket", "NotFound"}


def ensure_bucket(client: Any, bucket: str, expire_days: int) -> dict[str, Any]:
    """Create `bucket` if missing and make objects expire after `expire_days`; returns the rule read back."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in MISSING_BUCKET_CODES:
            raise
        client.create_bucket(Bucket=bucket)
    client.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={
            "Rules": [
                {"ID": RULE_ID, "Filter": {"Prefix": ""}, "Status": "Enabled", "Expiration": {"Days": expire_days}}
            ]
        },
    )
    rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    rule: dict[str, Any] | None = next((r for r in rules if r.get("ID") == RULE_ID), None)
    if rule is None or rule.get("Expiration", {}).get("Days") != expire_days:
        raise RuntimeError(f"bucket {bucket}: the expiry rule did not stick (read back: {rules})")
    ensure_encryption(client, bucket)
    return rule


def ensure_encryption(client: Any, bucket: str) -> None:
    """Default SSE-S3 on `bucket` (a put replaces the rule; the read back proves it), idempotently."""
    client.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": SSE_ALGORITHM}}]
        },
    )
    rules = client.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    algorithms = [r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") for r in rules]
    if algorithms != [SSE_ALGORITHM]:
        raise RuntimeError(f"bucket {bucket}: default encryption did not stick (read back: {rules})")
    # A write under the rule, read back: a server that cannot encrypt (RustFS without its master key
    # refuses every such write with a 400) fails the set-up here, not the batch service's first upload.
    try:
        client.put_object(Bucket=bucket, Key=PROBE_KEY, Body=PROBE_BODY)
        body = client.get_object(Bucket=bucket, Key=PROBE_KEY)["Body"].read()
        client.delete_object(Bucket=bucket, Key=PROBE_KEY)
    except ClientError as err:
        raise RuntimeError(f"bucket {bucket}: a write under default encryption ({SSE_ALGORITHM}): {err}") from err
    if body != PROBE_BODY:
        raise RuntimeError(f"bucket {bucket}: the encrypted probe object read back as {body[:40]!r}")


def s3_client(endpoint: str) -> Any:
    """Path-style S3v4 client; credentials from the standard AWS_* variables (never the command line)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"mode": "standard"}),
        region_name="us-east-1",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.batch.bucket", description=__doc__)
    parser.add_argument("--endpoint", required=True, help="S3 endpoint URL, e.g. http://10.10.10.1:9000")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--expire-days", type=int, required=True, help="days before objects expire (>= 1)")
    parser.add_argument("--batch-user", help="then make the batch services' scoped user (runtime.batch.s3_users)")
    parser.add_argument("--backup-user", help="and the backups' scoped user (with --batch-user)")
    args = parser.parse_args(argv)
    if args.expire_days < 1:
        parser.error(f"--expire-days must be at least 1, got {args.expire_days}")
    if (args.batch_user is None) != (args.backup_user is None):
        parser.error("--batch-user and --backup-user go together")
    try:
        rule = ensure_bucket(s3_client(args.endpoint), args.bucket, args.expire_days)
    except (BotoCoreError, ClientError, RuntimeError) as err:
        print(f"error: bucket set-up of {args.bucket} at {args.endpoint} failed: {err}", file=sys.stderr)
        return 1
    days = rule["Expiration"]["Days"]
    print(
        f"bucket {args.bucket} ready at {args.endpoint}: objects expire after {days} days, encrypted ({SSE_ALGORITHM})"
    )
    if args.batch_user is None:
        return 0
    from runtime.batch import s3_users  # here: it imports the batch service, which imports this module

    endpoint, bucket = ["--endpoint", args.endpoint], ["--bucket", args.bucket]
    users = ["--batch-user", args.batch_user, "--backup-user", args.backup_user]
    return s3_users.main([*endpoint, *bucket, *users])


if __name__ == "__main__":
    sys.exit(main())
