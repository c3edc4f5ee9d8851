"""Real servers on loopback, each in its own process so a test can kill or restart it.

Shared by `python -m harness up`, the integration tests and bench/batch.py: redis-server
(AOF on, so a restart keeps the queue), moto's S3 server (standing in for MinIO, S3 API only),
the batch API and the batch worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal, TypeVar

import httpx

from runtime.batch.redis_client import BATCH_ACL_RULES, BATCH_ACL_USER, MEMGUARD_ACL_RULES, MEMGUARD_ACL_USER

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]


_PORTS_FLOOR = 20000
_handed_out: set[int] = set()


def _ephemeral_floor() -> int:
    """Where the kernel starts handing out ephemeral ports (bind(0) and every outgoing connection)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_slice() -> range:
    """This pytest-xdist worker's own share of the ports below the ephemeral range (all of it outside xdist).

    A port probed free and handed to a server that binds it a minute later (vLLM loads its model
    first) must not be taken meanwhile. Inside the ephemeral range any outgoing connection or
    Ray's bind(0) could take it, and the other worker could probe the same port: both happened in
    CI (the batch worker died with uvicorn's startup failure). Below it, split per worker, neither can.
    """
    ports = range(_PORTS_FLOOR, max(_ephemeral_floor(), _PORTS_FLOOR + 1000))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count < 2:
        return ports
    share = len(ports) // count
    start = ports.start + int(worker[2:]) % count * share
    return range(start, start + share)


def free_port() -> int:
    """A loopback port that is free now and that nothing else this suite runs will be handed."""
    ports = _port_slice()
    pick = random.SystemRandom()
    for _ in range(200):
        port = pick.choice(ports)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {ports.start}-{ports.stop - 1} after 200 tries")


def wait_for(check: Callable[[], T | Literal[False] | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `check` until it returns something truthy (`cond and value` reads well); raise TimeoutError
    naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def find_binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/usr/lib/postgresql/15/bin")
    if path is None:
        raise FileNotFoundError(f"{name} not found: run `make setup` (installs redis-server, postgresql, haproxy)")
    return path


class Process:
    """A child process with a readiness check; stop() is SIGTERM then SIGKILL, kill() is SIGKILL."""

    def __init__(self, name: str, log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> Mapping[str, str]:
        return {}

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 60) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.environment()},
            start_new_session=True,  # its own process group: kill() takes vLLM's engine process with it
        )
        log.close()
        try:
            wait_for(self._ready_or_dead, timeout, f"{self.name} to start (log: {self.log_path})", interval=0.1)
        except BaseException:
            self.kill()  # leave nothing running behind a failed start
            raise

    def _ready_or_dead(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{tail}")
        try:
            return self.ready()
        except (OSError, httpx.HTTPError):
            return False

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash of the machine's service would."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM and wait (a clean shutdown), then clear out anything left in its group."""
        if self.process is not None and self.running:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        self.kill()


class RedisServer(Process):
    """redis-server with the stacks' two users: `url` is the batch services' ACL user (what they run
    as in the stacks, infra.components.redis), `admin_url` the default user (flushes, INFO)."""

    def __init__(self, log_dir: Path, port: int | None = None):
        super().__init__("redis", log_dir)
        self.port = port or free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="redis-", dir=log_dir))
        self.admin_password = "admin-" + os.urandom(8).hex()
        self.batch_password = "batch-" + os.urandom(8).hex()
        self.memguard_password = "memguard-" + os.urandom(8).hex()

    @property
    def url(self) -> str:
        return f"redis://{BATCH_ACL_USER}:{self.batch_password}@127.0.0.1:{self.port}/0"

    @property
    def memguard_url(self) -> str:
        """The memory guards' ACL user (runtime.memguard): its pause keys only."""
        return f"redis://{MEMGUARD_ACL_USER}:{self.memguard_password}@127.0.0.1:{self.port}/0"

    @property
    def admin_url(self) -> str:
        return f"redis://:{self.admin_password}@127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        batch_hash = hashlib.sha256(self.batch_password.encode()).hexdigest()
        memguard_hash = hashlib.sha256(self.memguard_password.encode()).hexdigest()
        return [
            find_binary("redis-server"),
            "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.data_dir),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "yes",
            "--requirepass", self.admin_password, "--user", BATCH_ACL_USER, "on", f"#{batch_hash}", *BATCH_ACL_RULES,
            "--user", MEMGUARD_ACL_USER, "on", f"#{memguard_hash}", *MEMGUARD_ACL_RULES,
        ]  # fmt: skip

    def ready(self) -> bool:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis.from_url(self.admin_url, socket_timeout=1, retry=Retry(NoBackoff(), 0))
        try:
            return bool(client.ping())
        except redis.ConnectionError:  # not listening yet, or still loading its AOF
            return False
        finally:
            client.close()


class S3Server(Process):
    """moto's S3 server: the S3 API that MinIO serves in production."""

    def __init__(self, log_dir: Path, port: int | None = None, *, no_auth_actions: int | None = None):
        super().__init__("s3", log_dir)
        self.port = port or free_port()
        # IAM access control on after this many unauthenticated actions (moto's INITIAL_NO_AUTH_ACTION_COUNT):
        # the policy tests' first calls make an admin user, every later call is checked against IAM policies.
        self.no_auth_actions = no_auth_actions

    def environment(self) -> Mapping[str, str]:
        return {} if self.no_auth_actions is None else {"INITIAL_NO_AUTH_ACTION_COUNT": str(self.no_auth_actions)}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/moto-api/", timeout=1).status_code < 500


RUNTIME_IMAGE_ENV = {"MALLOC_ARENA_MAX": "2"}  # what images/Dockerfile.runtime sets for the API's process


class BatchApi(Process):
    def __init__(
        self, log_dir: Path, env: Mapping[str, str], port: int | None = None, *, internal_port: int | None = None
    ):
        super().__init__("batch-api", log_dir)
        self.port = port or free_port()
        self.internal_port = internal_port
        self.env = {**RUNTIME_IMAGE_ENV, **env}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        internal = ["--internal-host", "127.0.0.1", "--internal-port", str(self.internal_port)]
        return [
            sys.executable,
            "-m",
            "runtime.batch.api",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *(internal if self.internal_port else []),
        ]

    def environment(self) -> Mapping[str, str]:
        return self.env

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/health", timeout=2).status_code == 200


class BatchWorker(Process):
    def __init__(
        self, log_dir: Path, env: Mapping[str, str], *, engine_factory: str | None = None, name: str = "worker"
    ):
        super().__init__(name, log_dir)
        self.port = free_port()
        self.env = {**env, "BATCH_WORKER_METRICS_PORT": str(self.port)}
        self.engine_factory = engine_factory

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        extra = ["--engine-factory", self.engine_factory] if self.engine_factory else []
        return [sys.executable, "-m", "runtime.batch.worker", *extra]

    def environment(self) -> Mapping[str, str]:
        return self.env

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/health", timeout=2).status_code == 200


class MemoryGuard(Process):
    """The host memory guard (`python -m runtime.memguard`) reading a /proc-shaped directory the test
    rewrites (MEMGUARD_PROC_ROOT), with its metrics on a free loopback port."""

    def __init__(self, log_dir: Path, env: Mapping[str, str], *, name: str = "memguard"):
        super().__init__(name, log_dir)
        self.port = free_port()
        self.env = {**env, "MEMGUARD_METRICS_HOST": "127.0.0.1", "MEMGUARD_METRICS_PORT": str(self.port)}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "runtime.memguard"]

    def environment(self) -> Mapping[str, str]:
        return self.env

    def ready(self) -> bool:
        try:
            return "memguard_last_sample_timestamp_seconds" in httpx.get(f"{self.url}/metrics", timeout=2).text
        except httpx.TransportError:
            return False


def batch_env(redis: RedisServer, s3: S3Server, **overrides: str) -> dict[str, str]:
    """BATCH_* variables for a local API/worker pair on these servers."""
    env = {
        "BATCH_REDIS_URL": redis.url,
        "BATCH_S3_ENDPOINT_URL": s3.url,
        "BATCH_S3_BUCKET": "batch-local",
        "BATCH_S3_ACCESS_KEY_ID": "local",
        "BATCH_S3_SECRET_ACCESS_KEY": "local-secret",
        "BATCH_MODEL": "tiny-llama",
        "BATCH_BOOTSTRAP_API_KEY": "sk-local-" + os.urandom(12).hex(),
        "BATCH_WEBHOOK_SECRET": os.urandom(16).hex(),
        "BATCH_ENGINE": "offline",
        "VLLM_LOGGING_STREAM": "ext://sys.stderr",
    }
    env.update({f"BATCH_{k.upper()}": v for k, v in overrides.items()})
    return env


# Offline-engine settings for the tiny CPU model: small KV budget, quick eager start.
TINY_MODEL_VLLM_ARGS = {
    "max_model_len": 512,
    "kv_cache_memory_bytes": 64 * 1024 * 1024,
    "enforce_eager": True,
    "seed": 0,
}


def tiny_model_args(model_path: Path) -> dict[str, str]:
    """batch_env overrides that point the offline engine at the tiny model."""
    return {"model_path": str(model_path), "vllm_args": json.dumps(TINY_MODEL_VLLM_ARGS)}


def _as_postgres_user(command: list[str]) -> list[str]:
    """Postgres refuses to run as root; as root, run it as the `postgres` user Debian's package made."""
    if os.geteuid() != 0:
        return command
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *command]


class PostgresServer(Process):
    """A throwaway Postgres cluster (initdb into a temp dir, loopback only): trust auth, or with
    `password` SCRAM-SHA-256 over TCP as the stacks' server (the superuser `postgres` has it)."""

    def __init__(self, log_dir: Path, port: int | None = None, *, password: str | None = None):
        super().__init__("postgres", log_dir)
        self.port = port or free_port()
        self.password = password
        # Under /tmp, not log_dir: as root the server runs as `postgres`, which cannot enter
        # pytest's private temp folders.
        self.data_dir = Path(tempfile.mkdtemp(prefix="pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postgres", "postgres")
        auth = ["-A", "trust"]
        with tempfile.NamedTemporaryFile("w", prefix="pg-password-", suffix=".txt") as password_file:
            if password is not None:  # initdb wants an empty data directory: the file lives beside it
                password_file.write(password + "\n")
                password_file.flush()
                if os.geteuid() == 0:
                    shutil.chown(password_file.name, "postgres", "postgres")
                auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={password_file.name}"]
            subprocess.run(
                _as_postgres_user(
                    [find_binary("initdb"), "-D", str(self.data_dir), "-U", "postgres", *auth, "-E", "UTF8"]
                ),
                check=True,
                capture_output=True,
            )

    @property
    def dsn(self) -> str:
        user = f"postgres:{self.password}" if self.password is not None else "postgres"
        return f"postgresql://{user}@127.0.0.1:{self.port}/postgres"

    def command(self) -> list[str]:
        return _as_postgres_user(
            [
                find_binary("postgres"), "-D", str(self.data_dir), "-p", str(self.port), "-h", "127.0.0.1",
                "-k", str(self.data_dir), "-c", "fsync=off", "-c", "full_page_writes=off",
            ]
        )  # fmt: skip

    def stop(self, timeout: float = 30) -> None:
        super().stop(timeout)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.dsn, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False


class RayHead(Process):
    """A one-node Ray cluster (`ray start --head --block`) with the dashboard, Jobs API and client server.

    Its drivers and workers run this Python with the repository on PYTHONPATH, as the images do.
    `num_gpus` may declare GPUs the machine lacks, to exercise how tasks ask for them. Ray's token
    authentication is on, with a token of its own: clients need `client_env` in their environment.
    `node_env` is what the node holds for its jobs, as the stacks' nodes hold OFFLOAD_DSN.
    """

    def __init__(
        self, log_dir: Path, *, num_cpus: int = 2, num_gpus: int = 0, node_env: Mapping[str, str] | None = None
    ):
        super().__init__("ray-head", log_dir)
        self.node_env = dict(node_env or {})
        self.gcs_port, self.dashboard_port, self.client_port = free_port(), free_port(), free_port()
        # Not Ray's fixed defaults (dashboard agent 52365): a local stack's Ray head on this machine holds them.
        self.agent_port, self.metrics_port = free_port(), free_port()
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.token = os.urandom(16).hex()

    @property
    def client_env(self) -> dict[str, str]:
        """What a driver, `ray job` client or ray:// client needs to be let in."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def jobs_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def command(self) -> list[str]:
        return [
            # runtime.ray_node, as the stacks' Ray containers: a loaded machine can miss Ray's fixed 30 s start.
            sys.executable, "-m", "runtime.ray_node",
            str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={self.client_port}",
            f"--num-cpus={self.num_cpus}", f"--num-gpus={self.num_gpus}", f"--temp-dir={self.temp_dir}",
            f"--dashboard-agent-listen-port={self.agent_port}", f"--metrics-export-port={self.metrics_port}",
        ]  # fmt: skip

    def environment(self) -> Mapping[str, str]:
        return {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(ROOT),
            "RAY_USAGE_STATS_ENABLED": "0",
            **self.node_env,
            **self.client_env,
            # umap-learn's and pynndescent's numba functions are cached here, so each fresh worker
            # does not compile them again.
            "NUMBA_CACHE_DIR": str(self.temp_dir / "numba"),
        }

    def ready(self) -> bool:
        """The Jobs API answers and lists no jobs yet (the job manager is up, not just the server)."""
        response = httpx.get(f"{self.jobs_url}/api/jobs/", headers={"Authorization": f"Bearer {self.token}"}, timeout=2)
        return response.status_code == 200

    def stop(self, timeout: float = 30) -> None:
        super().stop(timeout)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class VllmServer(Process):
    """vLLM's OpenAI server (CPU build here) on a local model, with priority scheduling as in the stacks."""

    def __init__(self, log_dir: Path, model_path: Path, *, name: str = "vllm", served_name: str = "tiny-llama"):
        super().__init__(name, log_dir)
        self.port = free_port()
        self.model_path, self.served_name = model_path, served_name

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        from runtime.batch.engines.offline import model_flags

        flags = model_flags(str(self.model_path), self.served_name, TINY_MODEL_VLLM_ARGS)
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", *flags,
            "--host", "127.0.0.1", "--port", str(self.port), "--scheduling-policy", "priority",
        ]  # fmt: skip

    def environment(self) -> Mapping[str, str]:
        return {"VLLM_LOGGING_STREAM": "ext://sys.stderr"}

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
