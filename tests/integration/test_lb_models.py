"""Several offered models behind the load balancer (issue 20), tried on a real HAProxy with the rendered
config and Lua service: stand-in vLLM backends per model, routing on the request body's `model`, 503
with Retry-After for an offered model whose servers are all down, 404 for one not offered, and
`GET /v1/models` with `loaded` flags that follow the backends going down and up."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.lb_harness import BackendProcess, Haproxy
from harness.servers import free_port, wait_for
from infra.render.haproxy import Backend, LoadBalancerConfig, ModelRoute, render_haproxy_cfg, render_models_lua
from tests.conftest import require_binary

pytestmark = pytest.mark.integration
KEY = "sk-stack-operator-key-for-the-models-test"
VLLM_KEY = "vllm-internal-key"
MODELS = ("alpha", "org/beta-1.5B")  # the default model first; a served name with / . and digits


@dataclass
class Balancer:
    url: str
    backends: dict[str, list[BackendProcess]]  # served name -> its stand-in servers
    haproxy: Haproxy

    def post(self, body: object, key: str | None = KEY, timeout: float = 10) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, headers=headers, timeout=timeout)

    def models(self, key: str | None = KEY) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(f"{self.url}/v1/models", headers=headers, timeout=10)

    def loaded(self) -> dict[str, bool]:
        return {m["id"]: m["loaded"] for m in self.models().json()["data"]}


@pytest.fixture
def balancer(tmp_path: Path) -> Iterator[Balancer]:
    require_binary("haproxy")
    backends = {
        model: [BackendProcess(f"{i}-{host}", free_port()) for host in ("stella", "nova")]
        for i, model in enumerate(MODELS)
    }
    routes = tuple(
        ModelRoute(model, tuple(Backend(host, b.address) for host, b in zip(("stella", "nova"), servers, strict=True)))
        for model, servers in backends.items()
    )
    keys = tmp_path / "stack-keys.map"
    keys.write_text(f"{hashlib.sha256(KEY.encode()).hexdigest()} operator\n")
    lua = tmp_path / "models.lua"
    lua.write_text(render_models_lua(routes))
    port, stats_port = free_port(), free_port()
    config = render_haproxy_cfg(
        LoadBalancerConfig(
            backends=routes[0].servers,
            bind=f"127.0.0.1:{port}",
            stats_bind=f"127.0.0.1:{stats_port}",
            check_interval_ms=200,
            api_key_maps=(str(keys),),
            backend_key_env="VLLM_API_KEY",
            models=routes,
            models_lua=str(lua),
        )
    )
    haproxy = Haproxy(config, port, stats_port, env={"VLLM_API_KEY": VLLM_KEY})
    found = Balancer(f"http://127.0.0.1:{port}", backends, haproxy)
    try:
        wait_for(lambda: _answers(found) and all(found.loaded().values()), 15, "every model loaded")
        yield found
    finally:
        haproxy.stop()
        for servers in backends.values():
            for server in servers:
                server.kill()


def _answers(balancer: Balancer) -> bool:
    try:
        return balancer.models().status_code == 200
    except httpx.HTTPError:
        return False


def test_each_request_goes_to_its_models_servers(balancer: Balancer) -> None:
    for i, model in enumerate(MODELS):
        for session in range(6):
            answer = balancer.post({"model": model, "messages": [{"role": "user", "content": "hi"}]} | {"s": session})
            assert answer.status_code == 200, answer.text
            assert answer.json()["backend"].startswith(f"{i}-"), (model, answer.json())
            assert answer.json()["authorization"] == f"Bearer {VLLM_KEY}"  # the client's key never reaches vLLM
    # The model may come after a long prompt (the openai client sends messages first): still routed by it.
    long = {"messages": [{"role": "user", "content": "x" * 100_000}], "model": MODELS[1]}
    assert balancer.post(long).json()["backend"].startswith("1-")
    # No JSON model (not JSON, or no "model"): the default model's backend, as with one model.
    assert balancer.post({"messages": []}).json()["backend"].startswith("0-")
    plain = httpx.post(
        f"{balancer.url}/v1/completions", content=b"not json", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    )
    assert plain.status_code == 200 and plain.json()["backend"].startswith("0-")


def test_a_model_not_offered_gets_404_naming_the_offered_ones(balancer: Balancer) -> None:
    for asked in ("gamma", 'quo"te\\', "alph"):
        refused = balancer.post({"model": asked, "messages": []})
        assert refused.status_code == 404, refused.text
        error = refused.json()["error"]  # valid JSON even when the name needs escaping
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert error["message"] == f"The model `{asked}` does not exist. Offered models: alpha, org/beta-1.5B."


def test_the_key_is_checked_before_the_model(balancer: Balancer) -> None:
    assert balancer.post({"model": "gamma"}, key="sk-wrong").status_code == 401
    assert balancer.models(key=None).status_code == 401
    assert httpx.get(f"{balancer.url}/health", timeout=10).status_code == 200


def test_models_lists_every_offered_model_and_follows_its_servers(balancer: Balancer) -> None:
    listed = balancer.models()
    assert listed.status_code == 200 and listed.headers["content-type"] == "application/json"
    body = listed.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == list(MODELS)
    for entry in body["data"]:
        assert entry["object"] == "model" and entry["owned_by"] == "vllm-gb10" and entry["loaded"] is True
        assert abs(entry["created"] - time.time()) < 60

    beta = balancer.backends[MODELS[1]]
    beta[0].kill()  # one server of two down: still loaded, and its requests go to the other
    wait_for(lambda: balancer.haproxy.process.poll() is None and _down(balancer, "vllm-2", "stella"), 10, "down")
    assert balancer.loaded() == {MODELS[0]: True, MODELS[1]: True}
    assert balancer.post({"model": MODELS[1]}).json()["backend"] == "1-nova"

    beta[1].kill()  # every server of beta down
    wait_for(lambda: balancer.loaded() == {MODELS[0]: True, MODELS[1]: False}, 10, "beta not loaded")
    started = time.monotonic()
    refused = balancer.post({"model": MODELS[1], "messages": []}, timeout=5)
    elapsed = time.monotonic() - started
    assert refused.status_code == 503, refused.text
    assert elapsed < 1.0, f"answered in {elapsed:.2f} s: queued instead of refused"
    assert refused.headers["Retry-After"] == "10"
    error = refused.json()["error"]
    assert error["code"] == "model_not_loaded" and error["type"] == "server_error" and error["param"] == "model"
    assert MODELS[1] in error["message"]
    assert balancer.post({"model": MODELS[0]}).json()["backend"].startswith("0-")  # alpha unaffected

    beta[1].start()  # back: loaded again once its health checks pass, and served
    wait_for(lambda: balancer.loaded()[MODELS[1]], 10, "beta loaded again")
    assert balancer.post({"model": MODELS[1]}).json()["backend"] == "1-nova"


def _down(balancer: Balancer, backend: str, server: str) -> bool:
    text = httpx.get(f"http://127.0.0.1:{balancer.haproxy.stats_port}/stats;csv", timeout=5).text
    for line in text.splitlines():
        fields = line.split(",")
        if fields[:2] == [backend, server]:
            return fields[17].startswith("DOWN")
    return False
