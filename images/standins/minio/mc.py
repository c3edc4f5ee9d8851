#!/opt/moto/bin/python3
"""`mc` stand-in: the MinIO client subcommands our compose file and healthchecks run, over boto3.

mc ready ALIAS                              exit 0 when the S3 port answers ("local": this container)
mc alias set NAME URL ACCESS_KEY SECRET_KEY  kept in $MC_CONFIG_DIR/config.json (~/.mc)
mc mb [--ignore-existing|-p] ALIAS/BUCKET
mc ilm rule add --expire-days N ALIAS/BUCKET
mc ilm rule rm --all --force ALIAS/BUCKET
mc ls ALIAS[/BUCKET]
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

CONFIG = Path(os.environ.get("MC_CONFIG_DIR", Path.home() / ".mc")) / "config.json"
ADDRESS_FILE = Path("/tmp/minio-standin-address")


def aliases() -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = json.loads(CONFIG.read_text())["aliases"] if CONFIG.exists() else {}
    if "local" not in found:
        address = ADDRESS_FILE.read_text().strip() if ADDRESS_FILE.exists() else "127.0.0.1:9000"
        host, _, port = address.rpartition(":")
        host = "127.0.0.1" if host in ("", "0.0.0.0") else host
        found["local"] = {"url": f"http://{host}:{port}", "accessKey": "", "secretKey": ""}
    for key, value in os.environ.items():  # mc's MC_HOST_<alias>=http[s]://[ACCESS:SECRET@]HOST:PORT
        if key.startswith("MC_HOST_"):
            parts = urllib.parse.urlsplit(value)
            netloc = parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else parts.netloc
            found[key.removeprefix("MC_HOST_")] = {
                "url": f"{parts.scheme}://{netloc}",
                "accessKey": urllib.parse.unquote(parts.username or ""),
                "secretKey": urllib.parse.unquote(parts.password or ""),
            }
    return found


def client(alias: str) -> Any:
    import boto3

    entry = aliases().get(alias)
    if entry is None:
        sys.exit(f"mc: alias {alias!r} is not set")
    return boto3.client(
        "s3",
        endpoint_url=entry["url"],
        aws_access_key_id=entry["accessKey"] or "minioadmin",
        aws_secret_access_key=entry["secretKey"] or "minioadmin",
        region_name="us-east-1",
    )


def target(arg: str) -> tuple[str, str]:
    alias, _, bucket = arg.partition("/")
    return alias, bucket.strip("/")


def ready(alias: str) -> int:
    url = aliases().get(alias, {}).get("url")
    if not url:
        return 1
    try:
        urllib.request.urlopen(url + "/", timeout=3).close()
    except urllib.error.HTTPError:
        pass  # an S3 error answer is an answer
    except OSError:
        return 1
    return 0


def main(argv: list[str]) -> int:
    flags = {a for a in argv if a.startswith("-")}
    args = [a for a in argv if not a.startswith("-")]
    days = argv[argv.index("--expire-days") + 1] if "--expire-days" in flags else ""
    if days:
        args.remove(days)
    match args:
        case ["ready", alias]:
            return ready(alias)
        case ["alias", "set", name, url, access_key, secret_key]:
            found: dict[str, Any] = {"version": "10", "aliases": {}}
            if CONFIG.exists():
                found = json.loads(CONFIG.read_text())
            found["aliases"][name] = {"url": url, "accessKey": access_key, "secretKey": secret_key, "api": "s3v4"}
            CONFIG.parent.mkdir(parents=True, exist_ok=True)
            CONFIG.write_text(json.dumps(found, indent=2))
            print(f"Added `{name}` successfully.")
        case ["mb", path]:
            alias, bucket = target(path)
            s3 = client(alias)
            existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
            if bucket in existing and not flags & {"--ignore-existing", "-p"}:
                print(
                    f"mc: <ERROR> Unable to make bucket `{path}`. Your previous request to create the "
                    "named bucket succeeded and you already own it.",
                    file=sys.stderr,
                )
                return 1
            if bucket not in existing:
                s3.create_bucket(Bucket=bucket)
            print(f"Bucket created successfully `{path}`.")
        case ["ilm", "rule", "add", path] if days:
            alias, bucket = target(path)
            rule = {
                "ID": f"expire-{days}d",
                "Status": "Enabled",
                "Filter": {"Prefix": ""},
                "Expiration": {"Days": int(days)},
            }
            client(alias).put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [rule]})
            print(f"Lifecycle configuration rule added with ID `{rule['ID']}` to {path}.")
        case ["ilm", "rule", "rm", path] if "--all" in flags:
            alias, bucket = target(path)
            client(alias).delete_bucket_lifecycle(Bucket=bucket)
            print(f"Removed all lifecycle rules for `{path}`.")
        case ["ls", path]:
            alias, bucket = target(path)
            s3 = client(alias)
            if not bucket:
                for b in s3.list_buckets().get("Buckets", []):
                    print(f"{b['Name']}/")
            else:
                for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
                    print(f"{obj['Size']:>10}B {obj['Key']}")
        case _:
            print(f"mc stand-in: unsupported command: {' '.join(argv)}\n{__doc__}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        sys.exit(main(sys.argv[1:]))
    except (BotoCoreError, ClientError) as exc:
        sys.exit(f"mc: <ERROR> {exc}")
