"""Attacks on the batch API from issue #32, each replayed against real servers: the API process, real
redis-server and moto S3, clients over loopback.

- A caller without a key sends a huge body: refused (401) before it is read, so the API's memory
  does not grow with it; a caller with a key gets 413 past the limits, also before the body is read.
- A tenant names another tenant's upload as an `s3://` input of the seeds' API: refused.
- Slow `input_file_url`s: a total deadline ends each, and while they trickle the API still serves.
- Oversized metadata (the seeds' `job_name`, an upload's file name): refused, nothing stored.
- /docs, /redoc, /openapi.json need a key; a rotated bootstrap key stops working.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from harness.servers import BatchApi, RedisServer, batch_env, free_port, wait_for
from tests.integration.batch_fixtures import chat_lines
from tests.integration.test_batch_security import admin_cli

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
BUCKET = "batch-attacks"
URL_DEADLINE_S = 3  # BATCH_INPUT_URL_TIMEOUT_SECONDS of the module's API


class Trickle:
    """A loopback HTTP server that answers 200 and then sends its body one byte at a time, a byte
    every 0.2 s, until `release()`: a slow input_file_url that never trips a per-read timeout."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.open = 0
        self.opened = 0
        lock = threading.Lock()
        trickle = self
        body = (chat_lines(1, model="instant")[0] + "\n").encode() * 1000

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection does

            def do_GET(self) -> None:
                with lock:
                    trickle.open += 1
                    trickle.opened += 1
                try:
                    self.send_response(200)
                    self.end_headers()
                    for byte in body:
                        if trickle.released.wait(0.2):  # the pace of the attack, not a synchronisation
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                except OSError:  # the API hung up: its deadline
                    pass
                finally:
                    with lock:
                        trickle.open -= 1

            def log_message(self, *_args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # many fetches connect at once
            daemon_threads = True

        self.port = free_port()
        self.server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/in.jsonl"

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Api:
    env: dict[str, str]
    api: BatchApi
    keys: dict[str, str]  # alice, bob (tenants), admin (the bootstrap key)
    trickle: Trickle

    def http(self, who: str | None, timeout: float = 60) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[who]}"} if who else {}
        return httpx.Client(base_url=self.api.url, headers=headers, timeout=timeout)


@pytest.fixture(scope="module")
def target(redis_server, s3_server, tmp_path_factory) -> Iterator[Api]:
    redis.Redis.from_url(redis_server.admin_url).flushdb()
    trickle = Trickle()
    env = batch_env(
        redis_server,
        s3_server,
        s3_bucket=BUCKET,
        model="instant",
        engine="http",
        max_file_bytes=str(1 * MiB),
        input_url_timeout_seconds=str(URL_DEADLINE_S),
        url_allowlist=f"127.0.0.1:{trickle.port}",
    )
    env["BATCH_VLLM_BASE_URL"] = "http://127.0.0.1:9/v1"  # no worker runs: nothing is ever sent there
    api = BatchApi(tmp_path_factory.mktemp("batch-attacks"), env)
    api.start()
    try:
        keys = {"admin": env["BATCH_BOOTSTRAP_API_KEY"]}
        for name in ("alice", "bob"):
            created = admin_cli(env, "keys", "create", name)
            assert created.returncode == 0, created.stderr
            keys[name] = created.stdout.strip()
        yield Api(env, api, keys, trickle)
    finally:
        api.stop()
        trickle.close()


def upload(http: httpx.Client, data: bytes, name: str = "in.jsonl") -> httpx.Response:
    return http.post("/v1/files", files={"file": (name, data)}, data={"purpose": "batch"})


def seed_job(http: httpx.Client, input_file_url: str, **extra: object) -> httpx.Response:
    return http.post("/v1/batch", json={"model": "instant", "input_file_url": input_file_url, **extra})


ONE_LINE = chat_lines(1, model="instant")[0].encode()


def peak_growth(pid: int, action) -> tuple[int, object]:
    """How far the process's resident memory peaked above where it was, around `action()`: its
    high-water mark (VmHWM, reset to the current RSS first) less its RSS (psutil) before."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := current RSS
    before = psutil.Process(pid).memory_info().rss
    result = action()
    status = Path(f"/proc/{pid}/status").read_text()
    (hwm_kb,) = [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")]
    return hwm_kb * 1024 - before, result


def test_a_huge_body_without_a_key_is_refused_before_it_is_read(target: Api) -> None:
    body = b'{"input_file_id": "' + b"x" * (64 * MiB) + b'", "endpoint": "/v1/chat/completions"}'
    with target.http(None) as http:
        growth, response = peak_growth(
            target.api.pid, lambda: http.post("/v1/batches", content=body, headers={"Content-Type": "application/json"})
        )
    assert response.status_code == 401, response.text[:300]
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert growth < 16 * MiB, f"the API's memory peaked {growth / MiB:.0f} MiB above its start for a 64 MiB body"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the size is only known while reading
        for _ in range(64):
            yield b"x" * MiB

    with target.http(None) as http:
        growth, response = peak_growth(
            target.api.pid, lambda: http.post("/v1/files", content=chunked(), headers={"Content-Type": "text/plain"})
        )
    assert response.status_code == 401, response.text[:300]
    assert growth < 16 * MiB, f"the API's memory peaked {growth / MiB:.0f} MiB above its start for a 64 MiB upload"


def test_a_body_over_the_limits_is_refused_with_413_before_it_is_read(target: Api) -> None:
    json_body = b'{"input_file_id": "' + b"x" * (8 * MiB) + b'", "endpoint": "/v1/chat/completions"}'
    with target.http("alice") as http:
        declared = http.post("/v1/batches", content=json_body, headers={"Content-Type": "application/json"})
        assert declared.status_code == 413, declared.text[:300]
        error = declared.json()["error"]
        assert error["code"] == "request_too_large" and "1048576" in error["message"], error

        def chunked() -> Iterator[bytes]:
            for _ in range(8):
                yield b"x" * MiB

        streamed = http.post("/v1/batches", content=chunked(), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413, streamed.text[:300]

        upload = http.post(
            "/v1/files", files={"file": ("in.jsonl", b"x" * (4 * MiB))}, data={"purpose": "batch"}
        )  # the module's BATCH_MAX_FILE_BYTES is 1 MiB
        assert upload.status_code == 413, upload.text[:300]
        assert upload.json()["error"]["code"] == "request_too_large"
        # within the limit, an upload still works
        fine = http.post(
            "/v1/files",
            files={"file": ("in.jsonl", chat_lines(1, model="instant")[0].encode())},
            data={"purpose": "batch"},
        )
        assert fine.status_code == 200, fine.text


def test_an_s3_input_cannot_name_another_tenants_file(target: Api) -> None:
    secret = chat_lines(3, model="instant", prefix="alice-secret-")
    with target.http("alice") as alice:
        uploaded = alice.post(
            "/v1/files", files={"file": ("in.jsonl", "\n".join(secret).encode())}, data={"purpose": "batch"}
        )
        assert uploaded.status_code == 200, uploaded.text
    alice_file = uploaded.json()["id"]

    with target.http("bob") as bob:
        for url in (
            f"s3://{BUCKET}/files/{alice_file}",  # another tenant's upload
            f"s3://{BUCKET}/files/file-{'0' * 32}",  # no such file: the same answer
            f"s3://{BUCKET}/backups/redis/x.jsonl.gz",  # not a file at all
        ):
            job = bob.post("/v1/batch", json={"model": "instant", "input_file_url": url})
            if job.status_code == 200:  # the attack worked: read the copy back
                batch = bob.get(f"/v1/batches/{job.json()['job_id']}").json()
                leaked = bob.get(f"/v1/files/{batch['input_file_id']}/content").text
                pytest.fail(f"{url}: bob ran a job on it and read back {leaked[:200]!r}")
            assert job.status_code == 400, (url, job.text)
            error = job.json()["error"]
            assert error["param"] == "input_file_url" and error["code"] == "invalid_input_file", error
            assert "not one of your files" in error["message"] and f"s3://{BUCKET}/files/<file id>" in error["message"]

        # bob's own upload is a valid s3:// input
        own = bob.post(
            "/v1/files",
            files={"file": ("in.jsonl", "\n".join(chat_lines(2, model="instant")).encode())},
            data={"purpose": "batch"},
        ).json()["id"]
        job = bob.post("/v1/batch", json={"model": "instant", "input_file_url": f"s3://{BUCKET}/files/{own}"})
        assert job.status_code == 200, job.text
    with target.http("admin") as admin:  # the operator reads any tenant's file
        job = admin.post("/v1/batch", json={"model": "instant", "input_file_url": f"s3://{BUCKET}/files/{alice_file}"})
        assert job.status_code == 200, job.text


def test_a_slow_input_url_ends_at_the_total_deadline(target: Api) -> None:
    with target.http("alice") as http:
        response = http.post("/v1/batch", json={"model": "instant", "input_file_url": target.trickle.url})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "input_file_url", error
    assert (
        f"not read within {URL_DEADLINE_S} s" in error["message"]
        and "BATCH_INPUT_URL_TIMEOUT_SECONDS" in error["message"]
    ), error


def test_slow_input_urls_do_not_take_the_apis_threads(target: Api, tmp_path) -> None:
    """More slow fetches than any thread pool of the API has threads (asyncio's default: at most 32),
    all in flight at once, and an upload (S3, in a thread) still completes meanwhile. The module's
    API ends a fetch after 3 s: this one keeps the default deadline, so the fetches stay open."""
    fetches = 40
    trickle = Trickle()
    env = {**target.env, "BATCH_URL_ALLOWLIST": f"127.0.0.1:{trickle.port}"}
    del env["BATCH_INPUT_URL_TIMEOUT_SECONDS"]
    api = BatchApi(tmp_path, env)
    api.start()
    pool = ThreadPoolExecutor(fetches)
    try:
        with httpx.Client(
            base_url=api.url, headers={"Authorization": f"Bearer {target.keys['bob']}"}, timeout=120
        ) as http:
            pending = [
                pool.submit(http.post, "/v1/batch", json={"model": "instant", "input_file_url": trickle.url})
                for _ in range(fetches)
            ]
            try:
                wait_for(lambda: trickle.open == fetches, 60, f"{fetches} slow fetches in flight")
            except TimeoutError:
                pytest.fail(f"only {trickle.open} of {fetches} slow fetches were in flight at once")
            upload = http.post(
                "/v1/files",
                files={"file": ("in.jsonl", chat_lines(1, model="instant")[0].encode())},
                data={"purpose": "batch"},
            )
            assert upload.status_code == 200, upload.text
            assert trickle.open == fetches and trickle.opened == fetches  # none ended meanwhile
            trickle.release()
            answers = [f.result() for f in pending]
        assert {a.status_code for a in answers} == {400}, [a.text for a in answers if a.status_code != 400][:1]
    finally:
        trickle.close()
        pool.shutdown(wait=True)
        api.stop()


def test_seed_metadata_and_file_names_follow_openais_limits(target: Api) -> None:
    upload = chat_lines(1, model="instant")[0].encode()
    with target.http("alice") as http:
        own = http.post("/v1/files", files={"file": ("in.jsonl", upload)}, data={"purpose": "batch"}).json()["id"]
        url = f"s3://{BUCKET}/files/{own}"
        long_name = http.post(
            "/v1/batch", json={"model": "instant", "input_file_url": url, "metadata": {"job_name": "n" * 513}}
        )
        assert long_name.status_code == 400, long_name.text
        assert long_name.json()["error"]["param"] == "metadata.job_name", long_name.text
        huge = http.post(
            "/v1/batch", json={"model": "instant", "input_file_url": url, "metadata": {"job_name": "n" * (30 * MiB)}}
        )
        assert huge.status_code == 413, huge.text[:300]
        fits = http.post(
            "/v1/batch", json={"model": "instant", "input_file_url": url, "metadata": {"job_name": "n" * 512}}
        )
        assert fits.status_code == 200, fits.text
        long_url = http.post(
            "/v1/batch", json={"model": "instant", "input_file_url": f"https://example.com/{'u' * 2048}"}
        )
        assert long_url.status_code == 400 and long_url.json()["error"]["param"] == "input_file_url", long_url.text
        long_file = http.post("/v1/files", files={"file": ("f" * 513, upload)}, data={"purpose": "batch"})
        assert long_file.status_code == 400 and long_file.json()["error"]["param"] == "file", long_file.text
    stored = redis.Redis.from_url(target.env["BATCH_REDIS_URL"])
    names = [json.loads(stored.get(k)).get("filename", "") for k in stored.scan_iter("vgb:file:*")]
    assert max(map(len, names)) <= 512, "an oversized file name was stored"


def test_api_docs_need_a_key(target: Api) -> None:
    with target.http(None) as anonymous, target.http("alice") as alice:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
            assert anonymous.get(path).status_code == 401, path
        assert alice.get("/openapi.json").json()["info"]["title"] == "vllm-gb10 batch API"
        assert alice.get("/docs").status_code == 404  # off: its page could not send the key
        assert anonymous.get("/health").status_code == 200  # the one open route


def test_a_rotated_bootstrap_key_stops_working(redis_server, s3_server, tmp_path) -> None:
    own_redis = RedisServer(tmp_path)  # a Redis of its own: rotating drops the module API's admin key
    own_redis.start()
    try:
        env = batch_env(own_redis, s3_server, s3_bucket=BUCKET, model="instant", engine="http")
        env["BATCH_VLLM_BASE_URL"] = "http://127.0.0.1:9/v1"
        old_key = env["BATCH_BOOTSTRAP_API_KEY"]
        first = BatchApi(tmp_path, env)
        first.start()
        first.stop()
        rotated = {**env, "BATCH_BOOTSTRAP_API_KEY": env["BATCH_BOOTSTRAP_API_KEY"] + "-rotated"}
        second = BatchApi(tmp_path, rotated)
        second.start()
        try:
            old = httpx.get(f"{second.url}/metrics", headers={"Authorization": f"Bearer {old_key}"}, timeout=10)
            assert old.status_code == 401, f"the rotated-out key still answers {old.status_code}"
            new_key = rotated["BATCH_BOOTSTRAP_API_KEY"]
            new = httpx.get(f"{second.url}/metrics", headers={"Authorization": f"Bearer {new_key}"}, timeout=10)
            assert new.status_code == 200, new.text  # an admin's route
            listed = admin_cli(env | {"BATCH_REDIS_URL": own_redis.url}, "keys", "list")
            assert [line.split()[-1] for line in listed.stdout.splitlines()] == ["bootstrap"], listed.stdout
        finally:
            second.stop()
    finally:
        own_redis.stop()
