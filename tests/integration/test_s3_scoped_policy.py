"""The scoped users' policy documents (runtime.batch.s3_users), evaluated by a server: moto's S3 with its
IAM access control on. The same JSON the set-up gives RustFS is attached to IAM users made through
moto's IAM API; their keys then do what the batch services do, and what they must not."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from harness.servers import S3Server
from runtime.batch.bucket import ensure_bucket
from runtime.batch.s3_policies import BACKUP_PREFIX, backup_policy, batch_policy
from runtime.batch.settings import BatchSettings
from runtime.batch.storage import ObjectStore

BUCKET, OTHER = "batch-scoped", "other-bucket"
ADMIN_ACTIONS = 3  # unauthenticated: create the admin user, its policy, its key; everything after is checked
PART = 5 * 1024 * 1024  # S3's smallest part but the last


def _client(server: S3Server, service: str, key: dict[str, str] | None = None) -> Any:
    credentials = key or {"aws_access_key_id": "unauthenticated", "aws_secret_access_key": "unauthenticated"}
    return boto3.client(
        service,
        endpoint_url=server.url,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        **credentials,
    )


def _user(iam: Any, name: str, policy: dict[str, Any]) -> dict[str, str]:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}


@pytest.fixture(scope="module")
def iam_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Its own moto server (access control is server-wide): an admin, the two buckets, the two users."""
    server = S3Server(tmp_path_factory.mktemp("s3-iam"), no_auth_actions=ADMIN_ACTIONS)
    server.start()
    try:
        admin = _user(
            _client(server, "iam"),
            "admin",
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]},
        )
        iam, s3 = _client(server, "iam", admin), _client(server, "s3", admin)
        for bucket in (BUCKET, OTHER):
            s3.create_bucket(Bucket=bucket)
            s3.put_object(Bucket=bucket, Key="files/seed", Body=b"seed")
        s3.put_object(Bucket=BUCKET, Key=f"{BACKUP_PREFIX}seed.jsonl.gz", Body=b"backup")
        batch_key, backup_key = _user(iam, "batch", batch_policy(BUCKET)), _user(iam, "backup", backup_policy(BUCKET))
        yield {
            "server": server,
            "iam": iam,
            "admin": s3,
            "batch": _client(server, "s3", batch_key),
            "backup": _client(server, "s3", backup_key),
            "settings": BatchSettings(
                redis_url="redis://127.0.0.1:1/0",  # not used here
                s3_endpoint_url=server.url,
                s3_bucket=BUCKET,
                s3_access_key_id=batch_key["aws_access_key_id"],
                s3_secret_access_key=batch_key["aws_secret_access_key"],
                backup_s3_access_key_id=backup_key["aws_access_key_id"],
                backup_s3_secret_access_key=backup_key["aws_secret_access_key"],
                model="m",
                bootstrap_api_key="not-used-here",
                webhook_secret="not-used-here",
            ),
        }
    finally:
        server.stop()


def _refused(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as err:
        call()
    code = str(err.value.response["Error"]["Code"])
    assert code == "AccessDenied", err.value.response
    return code


def _multipart(s3: Any, key: str) -> None:
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    parts = []
    for number, body in ((1, b"a" * PART), (2, b"b")):
        etag = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=body)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    assert [p["PartNumber"] for p in s3.list_parts(Bucket=BUCKET, Key=key, UploadId=upload)["Parts"]] == [1, 2]
    s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
    aborted = s3.create_multipart_upload(Bucket=BUCKET, Key=key + ".aborted")["UploadId"]
    s3.abort_multipart_upload(Bucket=BUCKET, Key=key + ".aborted", UploadId=aborted)


def test_the_batch_user_does_the_services_work_in_its_bucket(iam_s3: dict[str, Any]) -> None:
    s3 = iam_s3["batch"]
    s3.put_object(Bucket=BUCKET, Key="files/file-1", Body=b"{}\n")
    assert s3.get_object(Bucket=BUCKET, Key="files/file-1")["Body"].read() == b"{}\n"
    assert s3.head_object(Bucket=BUCKET, Key="files/file-1")["ContentLength"] == 3
    _multipart(s3, "batches/b-1/out.jsonl")
    assert s3.head_object(Bucket=BUCKET, Key="batches/b-1/out.jsonl")["ContentLength"] == PART + 1
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="files/")["Contents"]]
    assert "files/file-1" in listed
    s3.delete_object(Bucket=BUCKET, Key="files/file-1")
    # Not DeleteObjects (the expiry sweep's): moto checks it as s3:DeleteObject on the bucket's ARN
    # (moto/s3/responses.py _bucket_response_post), where AWS and RustFS check s3:DeleteObject per key
    # (rustfs/src/storage/access.rs:2101-2110, its test :4405-4428), which this document grants.
    s3.delete_object(Bucket=BUCKET, Key="batches/b-1/out.jsonl")
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="batches/")


def test_the_batch_user_is_refused_elsewhere(iam_s3: dict[str, Any]) -> None:
    s3, backup_key = iam_s3["batch"], f"{BACKUP_PREFIX}seed.jsonl.gz"
    _refused(lambda: s3.get_object(Bucket=OTHER, Key="files/seed"))
    _refused(lambda: s3.put_object(Bucket=OTHER, Key="files/x", Body=b"x"))
    _refused(lambda: s3.list_objects_v2(Bucket=OTHER))
    _refused(lambda: s3.get_object(Bucket=BUCKET, Key=backup_key))
    _refused(lambda: s3.put_object(Bucket=BUCKET, Key=f"{BACKUP_PREFIX}forged.jsonl.gz", Body=b"x"))
    _refused(lambda: s3.delete_object(Bucket=BUCKET, Key=backup_key))
    _refused(lambda: s3.create_multipart_upload(Bucket=BUCKET, Key=f"{BACKUP_PREFIX}big.jsonl.gz"))
    _refused(lambda: s3.delete_bucket(Bucket=BUCKET))
    _refused(lambda: s3.create_bucket(Bucket="batch-new"))
    _refused(lambda: s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(batch_policy(BUCKET))))
    _refused(
        lambda: s3.put_bucket_lifecycle_configuration(
            Bucket=BUCKET,
            LifecycleConfiguration={
                "Rules": [{"ID": "never", "Filter": {"Prefix": ""}, "Status": "Disabled", "Expiration": {"Days": 1}}]
            },
        )
    )
    assert iam_s3["admin"].get_object(Bucket=BUCKET, Key=backup_key)["Body"].read() == b"backup"  # untouched


def test_the_backup_user_keeps_to_the_backups_prefix(iam_s3: dict[str, Any]) -> None:
    s3, key = iam_s3["backup"], f"{BACKUP_PREFIX}20261207T000000Z-1.jsonl.gz"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"snapshot")
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"snapshot"
    assert key in [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=BACKUP_PREFIX)["Contents"]]
    s3.delete_object(Bucket=BUCKET, Key=key)
    _refused(lambda: s3.get_object(Bucket=BUCKET, Key="files/seed"))
    _refused(lambda: s3.put_object(Bucket=BUCKET, Key="files/forged", Body=b"x"))
    _refused(lambda: s3.delete_object(Bucket=BUCKET, Key="files/seed"))
    _refused(lambda: s3.get_object(Bucket=OTHER, Key="files/seed"))
    _refused(lambda: s3.delete_bucket(Bucket=BUCKET))
    _refused(lambda: s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(backup_policy(BUCKET))))


def test_the_services_start_and_back_up_as_their_users(iam_s3: dict[str, Any]) -> None:
    """The API's start-up check of the bucket and the worker's backups work with the scoped keys: the
    start-up does no bucket administration when the bucket exists, and the backups go as their own user."""
    settings = iam_s3["settings"]
    ObjectStore(settings).ensure_bucket()  # the API's lifespan
    key = f"{BACKUP_PREFIX}20261207T010000Z-2.jsonl.gz"
    ObjectStore(settings, backups=True).put(key, b"snapshot")
    ObjectStore(settings, backups=True).delete(key)
    _refused(lambda: ObjectStore(settings).put(key, b"snapshot"))


def test_a_server_that_refuses_the_encrypted_probe_fails_the_bucket_set_up(iam_s3: dict[str, Any]) -> None:
    """runtime.batch.bucket writes a probe under the new default encryption; a refused write (here IAM's,
    as RustFS refuses one without its SSE master key) fails the set-up by name, not the first upload."""
    everything = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    no_probe = {"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{BUCKET}/setup/*"}
    key = _user(iam_s3["iam"], "setup-refused", {"Version": "2012-10-17", "Statement": [everything, no_probe]})
    with pytest.raises(RuntimeError, match=r"bucket batch-scoped: a write under default encryption \(AES256\): "):
        ensure_bucket(_client(iam_s3["server"], "s3", key), BUCKET, 7)
