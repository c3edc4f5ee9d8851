"""Bucket-scoped S3 users for the batch services, made through RustFS's admin API (idempotent).

The batch API and worker must not hold the S3 root credentials: a leaked root key is every bucket
and the server's IAM. This step, run by the bucket set-up job on every `pulumi up`, makes two users:
the batch services' own (the batch bucket's objects, never its backups' prefix nor the bucket's
configuration) and the backups' (objects under backups/redis/ only). It signs with the root key,
which only the set-up job holds.

Written against RustFS's source, not a live server: rustfs/rustfs at tag 1.0.0-rc.3 (commit
1aae6803739a, 2026-08-21), the newest release in the snapshot read; the stacks pin 1.0.0
(infra/components/object_store.py), whose tag the snapshot lacks. The files cited below are the same
at the snapshot's head (20d126649, 2026-08-23). Paths and line numbers are at 1.0.0-rc.3:

- Routes: rustfs/src/server/prefix.rs:54 (ADMIN_PREFIX "/rustfs/admin"), :81 (RUSTFS_ADMIN_PREFIX
  "/rustfs/admin/v3"); rustfs/src/admin/handlers/user_lifecycle.rs:29-45 (GET /v3/user-info, PUT
  /v3/add-user); rustfs/src/admin/handlers/policies.rs:63-87 (GET /v3/info-canned-policy, PUT
  /v3/add-canned-policy, PUT /v3/set-user-or-group-policy).
- Bodies are plain JSON on /rustfs/admin paths: rustfs/src/admin/utils.rs:32-50
  (read_compatible_admin_body decrypts, madmin-style, only under the MinIO-compatible /minio/admin
  prefix; tests at :91-98 "encodes_plain_payload_for_rustfs_admin_paths"). So nothing here is
  encrypted (no argon2id/chacha20poly1305): the new users' secret keys cross the data network in the
  clear, as every S3 request's payload does (the S3 endpoint is plain HTTP on the internal network).
- Signing: AWS SigV4, service "s3" (crates/signer/src/request_signature_v4.rs:32 SERVICE_TYPE_S3),
  region us-east-1 by default (crates/config/src/constants/app.rs:292), as RustFS signs its own admin
  calls to peers (rustfs/src/admin/handlers/site_replication.rs:3154-3171). botocore's S3SigV4Auth.
- Only the owner (root) or a user with the admin actions may call these (each handler's
  check_key_valid + validate_admin_request, e.g. user.rs:227-228, 298-306).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from runtime.batch.s3_policies import (
    BACKUP_USER_SECRET_ENV,
    BATCH_USER_SECRET_ENV,
    backup_policy,
    batch_policy,
)

ADMIN_PATH = "/rustfs/admin/v3"  # prefix.rs:81
REGION = "us-east-1"  # crates/config/src/constants/app.rs:292
# crates/policy/src/auth/credentials.rs:26-29: access keys 3-128 bytes, secret keys 8-40; :44-48 no '=' or ','.
SECRET_KEY_LENGTHS = (8, 40)


@dataclass(frozen=True)
class ScopedUser:
    access_key: str
    secret_key: str
    policy_name: str
    policy: dict[str, Any]


class SetupError(RuntimeError):
    """A step of the set-up that failed; the message names the step, the server and what it said."""


class AdminClient:
    """SigV4-signed calls to RustFS's admin API with the root credentials."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, *, timeout: float = 10.0):
        self.endpoint = endpoint.rstrip("/")
        self.credentials = Credentials(access_key, secret_key)
        self.http = httpx.Client(timeout=timeout, trust_env=False)

    def call(self, step: str, method: str, route: str, query: dict[str, str], body: bytes = b"") -> bytes:
        """One admin call; a refusal (any non-2xx) or an unreachable server raises SetupError naming `step`."""
        url = f"{self.endpoint}{ADMIN_PATH}{route}?{urlencode(sorted(query.items()))}"
        request = AWSRequest(method=method, url=url, data=body, headers={"Content-Type": "application/json"})
        S3SigV4Auth(self.credentials, "s3", REGION).add_auth(request)  # adds X-Amz-Content-SHA256 over http
        prepared = request.prepare()
        try:
            response = self.http.request(method, prepared.url, headers=dict(prepared.headers.items()), content=body)
        except httpx.HTTPError as err:
            raise SetupError(
                f"step {step}: {method} {ADMIN_PATH}{route} at {self.endpoint} unreachable: {err!r}"
            ) from err
        if not 200 <= response.status_code < 300:
            raise SetupError(
                f"step {step}: {method} {ADMIN_PATH}{route} at {self.endpoint} refused with HTTP "
                f"{response.status_code}: {response.text[:400]}"
            )
        return response.content

    def close(self) -> None:
        self.http.close()


def ensure_user(admin: AdminClient, user: ScopedUser) -> None:
    """Policy, user, attachment, then a read back; each call sets the whole state it names, so a
    re-run with the same input leaves the server as it was (and a changed secret or policy replaces it)."""
    # policies.rs:185-299 AddCannedPolicy: query `name` (PolicyNameQuery, :178-181), the body is the
    # policy document itself (:222-239, Policy::parse_config; "Version" required, :252-254); it replaces
    # a policy of that name (iam set_policy).
    admin.call(
        f"add-canned-policy {user.policy_name}",
        "PUT",
        "/add-canned-policy",
        {"name": user.policy_name},
        json.dumps(user.policy, sort_keys=True).encode(),
    )
    # user.rs:211-241 AddUser: query `accessKey` (AddUserQuery, :59-64), body AddOrUpdateUserReq
    # (crates/madmin/src/user.rs:98-107: secretKey, status "enabled"/"disabled" :24-31); an existing
    # user is updated (crates/iam/src/sys.rs:872-891 create_user -> store.add_user).
    admin.call(
        f"add-user {user.access_key}",
        "PUT",
        "/add-user",
        {"accessKey": user.access_key},
        json.dumps({"secretKey": user.secret_key, "status": "enabled"}).encode(),
    )
    # policies.rs:449-602 SetPolicyForUserOrGroup: query policyName, userOrGroup, isGroup (:449-457);
    # no body; it sets the user's mapping to exactly this policy (policy_db_set, :553).
    admin.call(
        f"set-user-or-group-policy {user.access_key}",
        "PUT",
        "/set-user-or-group-policy",
        {"policyName": user.policy_name, "userOrGroup": user.access_key, "isGroup": "false"},
    )
    # user.rs:598-671 GetUserInfo: query accessKey; madmin UserInfo (crates/madmin/src/user.rs:76-95:
    # policyName, status). The read back proves the three calls took.
    raw = admin.call(f"user-info {user.access_key}", "GET", "/user-info", {"accessKey": user.access_key})
    try:
        info = json.loads(raw)
    except ValueError as err:
        raise SetupError(f"step user-info {user.access_key}: not JSON: {raw[:200]!r}") from err
    policies = [p for p in str(info.get("policyName") or "").split(",") if p]
    if policies != [user.policy_name] or info.get("status") != "enabled":
        raise SetupError(
            f"step user-info {user.access_key}: read back policyName={info.get('policyName')!r} "
            f"status={info.get('status')!r}, expected {user.policy_name!r} and 'enabled'"
        )


def scoped_users(bucket: str, batch_user: str, backup_user: str, env: dict[str, str]) -> list[ScopedUser]:
    """The two users, their secrets from the environment (never the command line)."""
    users = []
    for access_key, secret_env, policy_name, policy in (
        (batch_user, BATCH_USER_SECRET_ENV, f"{batch_user}-objects", batch_policy(bucket)),
        (backup_user, BACKUP_USER_SECRET_ENV, f"{backup_user}-backups", backup_policy(bucket)),
    ):
        secret = env.get(secret_env, "")
        low, high = SECRET_KEY_LENGTHS
        if not low <= len(secret) <= high:
            raise SetupError(
                f"{secret_env}: the secret key of {access_key} must be {low}-{high} characters, got {len(secret)}"
            )
        if not 3 <= len(access_key) <= 128 or any(c in access_key for c in "=, "):
            raise SetupError(f"access key {access_key!r}: 3-128 characters, no '=', ',' or space")
        users.append(ScopedUser(access_key, secret, policy_name, policy))
    return users


def ensure_users(endpoint: str, root_access_key: str, root_secret_key: str, users: list[ScopedUser]) -> None:
    admin = AdminClient(endpoint, root_access_key, root_secret_key)
    try:
        for user in users:
            ensure_user(admin, user)
    finally:
        admin.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.batch.s3_users", description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True, help="RustFS endpoint URL, e.g. http://10.10.10.1:9000")
    parser.add_argument("--bucket", required=True)
    parser.add_argument(
        "--batch-user", required=True, help=f"access key of the batch services (secret: ${BATCH_USER_SECRET_ENV})"
    )
    parser.add_argument(
        "--backup-user", required=True, help=f"access key of the backups (secret: ${BACKUP_USER_SECRET_ENV})"
    )
    args = parser.parse_args(argv)
    env = dict(os.environ)
    try:
        root = (env.get("AWS_ACCESS_KEY_ID", ""), env.get("AWS_SECRET_ACCESS_KEY", ""))
        if not all(root):
            raise SetupError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the server's root credentials) must be set")
        users = scoped_users(args.bucket, args.batch_user, args.backup_user, env)
        ensure_users(args.endpoint, *root, users)
    except SetupError as err:
        print(f"error: S3 user set-up at {args.endpoint} failed: {err}", file=sys.stderr)
        return 1
    names = ", ".join(f"{u.access_key} ({u.policy_name})" for u in users)
    print(f"S3 users ready at {args.endpoint} for bucket {args.bucket}: {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
