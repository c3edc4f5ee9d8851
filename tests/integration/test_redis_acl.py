"""The batch services' Redis user, tried as someone who took over the batch API or a worker would:
real redis-server started with the command the stacks render (infra.components.redis), the batch
user's password checked against the SHA-256 the server was given. Also what that command does for
the server itself: a crafted DUMP payload is refused by RESTORE (it would crash Redis when read), and
a full Redis refuses writes rather than evicting keys."""

from __future__ import annotations

import hashlib
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from harness.servers import Process, find_binary, free_port
from infra.components.redis import BATCH_HASH_ENV, MEMGUARD_HASH_ENV, server_command
from runtime.batch.keys import PREFIX, memory_pause
from runtime.batch.redis_client import BATCH_ACL_USER, MEMGUARD_ACL_USER

ADMIN_PASSWORD = secrets.token_hex(16)
MAXMEMORY = 256 * 1024**2
BATCH_PASSWORD = secrets.token_hex(24)
MEMGUARD_PASSWORD = secrets.token_hex(24)


class StackRedis(Process):
    """redis-server as the compose file runs it: `sh -c <the component's command>`, secrets in the environment."""

    def __init__(self, log_dir: Path, maxmemory: int = MAXMEMORY):
        super().__init__("redis-acl", log_dir)
        self.port = free_port()
        self.maxmemory = maxmemory
        self.data_dir = log_dir / "data"
        self.data_dir.mkdir()

    def command(self) -> list[str]:
        server = server_command("127.0.0.1", self.port, self.maxmemory).replace(
            "exec redis-server", f"exec {find_binary('redis-server')}"
        )
        return ["sh", "-c", f"cd {self.data_dir} && {server}"]

    def environment(self) -> dict[str, str]:
        return {
            "REDIS_PASSWORD": ADMIN_PASSWORD,
            BATCH_HASH_ENV: hashlib.sha256(BATCH_PASSWORD.encode()).hexdigest(),
            MEMGUARD_HASH_ENV: hashlib.sha256(MEMGUARD_PASSWORD.encode()).hexdigest(),
        }

    def ready(self) -> bool:
        return bool(redis.Redis(port=self.port, password=ADMIN_PASSWORD, socket_timeout=1).ping())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackRedis]:
    started = StackRedis(tmp_path_factory.mktemp("redis-acl"))
    started.start()
    yield started
    started.stop()


@pytest.fixture
def batch(server: StackRedis) -> Iterator[redis.Redis]:
    client = redis.Redis(port=server.port, username=BATCH_ACL_USER, password=BATCH_PASSWORD, decode_responses=True)
    yield client
    client.close()


def test_the_batch_user_logs_in_with_its_password_only(server: StackRedis) -> None:
    def login(**credentials: str) -> None:
        redis.Redis(port=server.port, retry=Retry(NoBackoff(), 0), **credentials).ping()  # one try each

    digest = hashlib.sha256(BATCH_PASSWORD.encode()).hexdigest()
    for credentials in (
        {"username": BATCH_ACL_USER, "password": ADMIN_PASSWORD},
        {"username": BATCH_ACL_USER, "password": digest},  # the hash is what the server holds, not a password
        {},
    ):
        with pytest.raises(redis.AuthenticationError):
            login(**credentials)
    login(username=BATCH_ACL_USER, password=BATCH_PASSWORD)


def test_the_batch_user_does_what_the_batch_service_does_on_its_keys(batch: redis.Redis) -> None:
    key = f"{PREFIX}acl-test:{secrets.token_hex(4)}"
    batch.hset(key, mapping={"a": "1"})
    batch.zadd(f"{key}:z", {"x": 1})
    assert batch.eval("return redis.call('HGET', KEYS[1], 'a')", 1, key) == "1"  # Lua, as the job store's scripts
    pipe = batch.pipeline(transaction=True)
    pipe.watch(key)
    pipe.multi()
    pipe.hincrby(key, "a", 1)
    assert pipe.execute() == [2]
    assert f"{PREFIX}" in next(iter(batch.scan_iter(match=f"{PREFIX}acl-test:*")))  # the backup's scan
    dumped = batch.dump(key)
    batch.restore(f"{key}:restored", 0, dumped, replace=True)  # the backup's restore
    assert batch.hgetall(f"{key}:restored") == {"a": "2"}
    assert batch.blpop([f"{key}:wake"], timeout=0.1) is None


@pytest.mark.parametrize(
    "command",
    [
        ("CONFIG", "SET", "dir", "/tmp"),
        ("CONFIG", "GET", "requirepass"),
        ("ACL", "SETUSER", "intruder", "on", ">pw", "+@all", "~*"),
        ("ACL", "LIST"),
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("KEYS", "*"),
        ("DEBUG", "SLEEP", "0"),
        ("MODULE", "LIST"),
        ("REPLICAOF", "203.0.113.1", "6379"),
        ("SHUTDOWN", "NOSAVE"),
        ("CLIENT", "KILL", "TYPE", "normal"),
        ("SET", "not-ours", "x"),  # outside the batch keys
        ("GET", "not-ours"),
        ("EVAL", "return redis.call('SET', 'not-ours', 'x')", "0"),
    ],
)
def test_the_batch_user_is_refused_what_only_the_operator_may_do(batch: redis.Redis, command: tuple[str, ...]) -> None:
    # NOPERM; a script touching another key, or DEBUG (off for every user), are refused in their own words.
    with pytest.raises(redis.exceptions.ResponseError, match=r"no permissions|can't access|command not allowed"):
        batch.execute_command(*command)


def test_the_rendered_command_holds_no_password() -> None:
    rendered = server_command("10.10.10.1", 6379, MAXMEMORY)
    for option in ("--sanitize-dump-payload yes", f"--maxmemory {MAXMEMORY} ", "--maxmemory-policy noeviction"):
        assert option in rendered
    with pytest.raises(ValueError, match="maxmemory 0: must be positive"):
        server_command("10.10.10.1", 6379, 0)
    assert '"$REDIS_PASSWORD"' in rendered and f'"#${BATCH_HASH_ENV}"' in rendered
    completed = subprocess.run(["sh", "-n", "-c", rendered], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr


def crc64(data: bytes) -> int:
    """Redis's CRC-64 (Jones polynomial, reflected), which a DUMP payload ends with (little-endian)."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x95AC9329AC4BC9B5 if crc & 1 else 0)
    return crc


def with_valid_crc(payload: bytes) -> bytes:
    """A DUMP payload (type, value, 2-byte RDB version) with the checksum RESTORE checks first."""
    return payload + crc64(payload).to_bytes(8, "little")


# A stream whose listpack holds a bad entry count (Redis's tests/integration/corrupt-dump.tcl, "NPD in
# streamIteratorGetID"; RDB version 9): the header is sound, so a shallow check restores it, and
# XREVRANGE then fails an assertion that takes the server down.
CORRUPT_STREAM = with_valid_crc(
    b"\x0f\x01\x10\x00\x00\x01\x73\xbd\x68\x48\x71\x00\x00\x00\x00\x00\x00\x00\x00\x40\x42\x42\x00\x00\x00\x18"
    b"\x00\x03\x01\x00\x01\x02\x01\x84\x69\x74\x65\x6d\x05\x85\x76\x61\x6c\x75\x65\x06\x00\x01\x02\x01\x00"
    b"\x01\x00\x01\x01\x01\x00\x01\x05\x01\x02\x01\x00\x01\x01\x01\x01\x01\x82\x5f\x31\x03\x05\x01\x02\x01"
    b"\x00\x01\x02\x01\x01\x01\x02\x01\x48\x01\xff\x03\x81\x00\x00\x01\x73\xbd\x68\x48\x71\x02\x01\x07\x6d"
    b"\x79\x67\x72\x6f\x75\x70\x81\x00\x00\x01\x73\xbd\x68\x48\x71\x00\x01\x00\x00\x01\x73\xbd\x68\x48\x71"
    b"\x00\x00\x00\x00\x00\x00\x00\x00\x72\x48\x68\xbd\x73\x01\x00\x00\x01\x01\x05\x41\x6c\x69\x63\x65\x72"
    b"\x48\x68\xbd\x73\x01\x00\x00\x01\x00\x00\x01\x73\xbd\x68\x48\x71\x00\x00\x00\x00\x00\x00\x00\x00\x09"
    b"\x00"
)


def test_the_payload_is_the_upstream_one_with_a_checksum_redis_accepts() -> None:
    assert CORRUPT_STREAM[-10:-8] == b"\x09\x00"  # RDB version 9: every Redis since 5 restores it
    assert crc64(b"123456789") == 0xE9C6D914C4B8D9CA  # Redis's own crc64 test vector


def test_restore_refuses_a_crafted_payload_that_would_crash_redis_when_read(
    server: StackRedis, batch: redis.Redis
) -> None:
    key = f"{PREFIX}crafted:{secrets.token_hex(4)}"
    with pytest.raises(redis.exceptions.ResponseError, match="Bad data format"):
        batch.restore(key, 0, CORRUPT_STREAM)
    assert batch.exists(key) == 0  # nothing restored, so nothing in the AOF either
    assert batch.xrevrange(key, "725", "233") == [] and batch.ping()  # the read that crashed it: still up


def test_a_full_redis_refuses_writes_and_evicts_nothing(tmp_path: Path) -> None:
    small = StackRedis(tmp_path, maxmemory=8 * 1024**2)
    small.start()
    try:
        client = redis.Redis(port=small.port, username=BATCH_ACL_USER, password=BATCH_PASSWORD)
        written = []
        with pytest.raises(redis.exceptions.OutOfMemoryError, match="used memory > 'maxmemory'"):
            for n in range(1000):  # 100 MB: far past the ceiling
                client.set(f"{PREFIX}fill:{n}", b"x" * 100_000)
                written.append(f"{PREFIX}fill:{n}")
        assert written and client.exists(*written) == len(written)  # every key written is still there
        assert client.get(written[0]) == b"x" * 100_000
        client.close()
    finally:
        small.stop()


@pytest.mark.parametrize(
    "command",
    [
        ("GET", memory_pause("stella")),  # it writes its key; reading is not its business
        ("SET", f"{PREFIX}queue", "x"),  # a batch key
        ("DEL", f"{PREFIX}batches"),
        ("KEYS", "*"),
        ("FLUSHALL",),
        ("CONFIG", "GET", "requirepass"),
        ("EVAL", "return 1", "0"),
    ],
)
def test_the_memory_guards_user_sets_and_deletes_its_pause_keys_and_nothing_else(
    server: StackRedis, command: tuple[str, ...]
) -> None:
    """Whoever takes over a memory guard (which holds the Docker socket) gets nothing of the batch data."""
    guard = redis.Redis(port=server.port, username=MEMGUARD_ACL_USER, password=MEMGUARD_PASSWORD)
    try:
        assert guard.set(memory_pause("stella"), "{}", ex=10) and guard.delete(memory_pause("stella")) == 1
        with pytest.raises(redis.exceptions.ResponseError, match=r"no permissions"):
            guard.execute_command(*command)
    finally:
        guard.close()
