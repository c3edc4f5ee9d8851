"""The S3 users' policy documents and names (runtime.batch.s3_users makes the users), without the
client's dependencies: the Pulumi program imports the names, the tests the documents.

Plain IAM policy language, which RustFS evaluates (crates/policy at 1.0.0-rc.3) and moto's S3 server
too, where tests/integration/test_s3_scoped_policy.py proves what these allow and refuse.
"""

from __future__ import annotations

from typing import Any

BACKUP_PREFIX = "backups/redis/"  # the Redis backups' objects (runtime.batch.backup)
BATCH_USER_SECRET_ENV = "S3_BATCH_USER_SECRET"
BACKUP_USER_SECRET_ENV = "S3_BACKUP_USER_SECRET"

# What the batch services do to objects: get/head, put (multipart's create, parts and complete are
# s3:PutObject in IAM), delete (DeleteObjects is s3:DeleteObject per key), abort and list parts.
# Each action is one RustFS's policy parser knows (crates/policy/src/policy/action.rs:217-287 at
# 1.0.0-rc.3): an unknown one would fail add-canned-policy.
OBJECT_ACTIONS = [
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
]
BUCKET_READ_ACTIONS = ["s3:ListBucket", "s3:ListBucketMultipartUploads", "s3:GetBucketLocation"]


def _statement(sid: str, effect: str, actions: list[str], resource: str) -> dict[str, Any]:
    return {"Sid": sid, "Effect": effect, "Action": actions, "Resource": [resource]}


def _policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def batch_policy(bucket: str) -> dict[str, Any]:
    """The batch API's and worker's: the bucket's objects, but not the backups' prefix (an explicit
    Deny, which wins over the Allow) and no bucket administration (nothing grants it)."""
    return _policy(
        _statement("ListTheBucket", "Allow", BUCKET_READ_ACTIONS, f"arn:aws:s3:::{bucket}"),
        _statement("ItsObjects", "Allow", OBJECT_ACTIONS, f"arn:aws:s3:::{bucket}/*"),
        _statement("NotTheBackups", "Deny", OBJECT_ACTIONS, f"arn:aws:s3:::{bucket}/{BACKUP_PREFIX}*"),
    )


def backup_policy(bucket: str) -> dict[str, Any]:
    """The Redis backups': objects under the backups' prefix only. It lists the bucket (to find the
    snapshots; it sees other keys' names, not their contents: no condition keys, so that the same
    document is proven on a server that does not evaluate them)."""
    return _policy(
        _statement("ListTheBucket", "Allow", BUCKET_READ_ACTIONS, f"arn:aws:s3:::{bucket}"),
        _statement("TheBackups", "Allow", OBJECT_ACTIONS, f"arn:aws:s3:::{bucket}/{BACKUP_PREFIX}*"),
    )
