"""The batch services' Redis user, tried as someone who took over the batch API or a worker would:
real redis-server started with the command the stacks render (infra.components.redis), the batch
user's password checked against the SHA-256 the server was given."""

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
from infra.components.redis import BATCH_HASH_ENV, server_command
from runtime.batch.keys import PREFIX
from runtime.batch.redis_client import BATCH_ACL_USER

ADMIN_PASSWORD = secrets.token_hex(16)
BATCH_PASSWORD = secrets.token_hex(24)


class StackRedis(Process):
    """redis-server as the compose file runs it: `sh -c <the component's command>`, secrets in the environment."""

    def __init__(self, log_dir: Path):
        super().__init__("redis-acl", log_dir)
        self.port = free_port()
        self.data_dir = log_dir / "data"
        self.data_dir.mkdir()

    def command(self) -> list[str]:
        server = server_command("127.0.0.1", self.port).replace(
            "exec redis-server", f"exec {find_binary('redis-server')}"
        )
        return ["sh", "-c", f"cd {self.data_dir} && {server}"]

    def environment(self) -> dict[str, str]:
        return {"REDIS_PASSWORD": ADMIN_PASSWORD, BATCH_HASH_ENV: hashlib.sha256(BATCH_PASSWORD.encode()).hexdigest()}

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
    rendered = server_command("10.10.10.1", 6379)
    assert '"$REDIS_PASSWORD"' in rendered and f'"#${BATCH_HASH_ENV}"' in rendered
    completed = subprocess.run(["sh", "-n", "-c", rendered], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
