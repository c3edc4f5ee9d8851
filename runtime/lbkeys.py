"""API keys of the load balancer: `python -m runtime.lbkeys [--dir DIR] create NAME | list | revoke NAME`.

The keys directory (compose: `<remoteDir>/<lb host>/lb-keys` on the load balancer's host, mounted
into HAProxy) holds `api-keys.map`, one `<sha256 hex of the key> <name>` line per key, and HAProxy's
admin socket. A change is written to the file (so it survives a restart) and applied to the
running HAProxy through the socket (`add map` / `del map`), so it takes effect on the next request
without a reload or redeploy. Only digests are stored: a new key is printed once. Standard library
only, so it runs in any image with Python, e.g. on the load balancer's host:

    docker run --rm --user 0 -v /opt/vllm-gb10/stella/lb-keys:/keys RUNTIME_IMAGE python -m runtime.lbkeys create alice

(as root: HAProxy's admin socket belongs to HAProxy's user, mode 0600, and the map to the deploy user)

On kubernetes the directory is a volume of the load balancer's pod, shared with its sidecar `keys`
(this image, HAProxy's uid), which `init` seeded with an empty map and which `hold`s for `kubectl exec`:

    kubectl -n NAMESPACE exec deploy/lb -c keys -- python -m runtime.lbkeys create alice
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path

MAP_FILE = "api-keys.map"
SOCKET_FILE = "admin.sock"
# Where HAProxy reads the map: the runtime API names a map by the path in haproxy.cfg.
HAPROXY_MAP_PATH = "/usr/local/etc/haproxy/keys/" + MAP_FILE
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
DEFAULT_DIR = "/keys"  # where the keys directory is mounted for this CLI (docker run -v, the pod's sidecar)


class KeysError(Exception):
    """A request the keys directory or HAProxy refused; the message says why."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_map(path: Path) -> dict[str, str]:
    """name -> digest, in file order; a malformed line is an error naming it."""
    entries: dict[str, str] = {}
    if not path.exists():
        return entries
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            raise KeysError(f"{path}:{number}: expected '<sha256 hex> <name>', got {line!r}")
        entries[parts[1]] = parts[0]
    return entries


def write_map(path: Path, entries: dict[str, str]) -> None:
    """Replace the file atomically (HAProxy may read it at any restart); readable by HAProxy's user."""
    text = "".join(f"{key_digest} {name}\n" for name, key_digest in entries.items())
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, prefix=".api-keys-") as tmp:
        tmp.write(text)
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)


def haproxy(socket_path: Path, command: str) -> str:
    """One command on HAProxy's admin socket; its answer (empty means done)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(str(socket_path))
        conn.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode().strip()


def apply_live(directory: Path, verb: str, entry: str, map_path: str) -> str:
    """`add map` / `del map` on the running HAProxy; a missing socket (HAProxy down) is no error."""
    sock = directory / SOCKET_FILE
    if not sock.exists():
        return "HAProxy's admin socket is not there: the change applies when HAProxy next starts"
    answer = haproxy(sock, f"{verb} map {map_path} {entry}")
    if answer and not (verb == "del" and "not found" in answer.lower()):
        raise KeysError(f"HAProxy refused '{verb} map': {answer}")
    return "applied to the running HAProxy"


def create(directory: Path, name: str, map_path: str) -> tuple[str, str]:
    if not NAME.match(name):
        raise KeysError(f"key name {name!r}: letters, digits and . _ @ - only, at most 64")
    path = directory / MAP_FILE
    entries = read_map(path)
    if name in entries:
        raise KeysError(f"a key named {name!r} exists; revoke it first")
    key = "sk-lb-" + secrets.token_urlsafe(32)
    entries[name] = digest(key)
    write_map(path, entries)
    return key, apply_live(directory, "add", f"{entries[name]} {name}", map_path)


def revoke(directory: Path, name: str, map_path: str) -> str:
    path = directory / MAP_FILE
    entries = read_map(path)
    if name not in entries:
        raise KeysError(f"no key named {name!r} in {path} (see `list`)")
    key_digest = entries.pop(name)
    write_map(path, entries)
    return apply_live(directory, "del", key_digest, map_path)


def init(directory: Path) -> str:
    """An empty map where there is none (HAProxy refuses to start without its map file); an existing
    one is left as it is."""
    path = directory / MAP_FILE
    if path.exists():  # read, so a malformed file is named now, not when HAProxy fails to start on it
        return f"{path}: kept ({len(read_map(path))} keys)"
    write_map(path, {})
    return f"{path}: created, empty"


def hold() -> None:
    """Stay up, doing nothing, until SIGTERM or SIGINT: the sidecar that `kubectl exec` runs this CLI in."""
    received = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: received.set())
    print("holding until SIGTERM (kubectl exec runs this CLI here)", file=sys.stderr, flush=True)
    while not received.wait(3600):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.lbkeys", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, default=Path(DEFAULT_DIR), help=f"the keys directory (default {DEFAULT_DIR})"
    )
    parser.add_argument("--map-path", default=HAPROXY_MAP_PATH, help="the map's path as haproxy.cfg names it")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("create", help="make a key; printed once").add_argument("name")
    commands.add_parser("list", help="key names (never the keys)")
    commands.add_parser("revoke", help="delete a key by name; refused on the next request").add_argument("name")
    commands.add_parser("init", help="an empty map file where there is none (before HAProxy starts)")
    commands.add_parser("hold", help="stay up until SIGTERM (the kubernetes sidecar)")
    args = parser.parse_args(argv)
    if args.command == "hold":
        hold()
        return 0
    if not args.dir.is_dir():
        print(f"error: {args.dir} is not a directory (the load balancer's keys directory)", file=sys.stderr)
        return 2
    try:
        if args.command == "create":
            key, applied = create(args.dir, args.name, args.map_path)
            print(f"created {args.name}: {applied}", file=sys.stderr)
            print(key)  # stdout holds the key alone
        elif args.command == "list":
            for name in read_map(args.dir / MAP_FILE):
                print(name)
        elif args.command == "init":
            print(init(args.dir), file=sys.stderr)
        else:
            print(f"revoked {args.name}: {revoke(args.dir, args.name, args.map_path)}", file=sys.stderr)
    except (KeysError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
