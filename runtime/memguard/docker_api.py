"""Stopping the guard's configured containers through the Docker Engine API, and nothing else.

The Docker socket is root-equivalent, so what the guard may do with it is narrowed here, in one
class: it lists and stops containers of its own host's compose project (label
`com.docker.compose.project`) whose service (label `dev.vllm-gb10.service`) is in its shed list, and
only those; it never starts, creates, execs or removes anything. A name outside the list is refused
before any request. Plain httpx over the unix socket (the runtime image has httpx, not the docker SDK).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "dev.vllm-gb10.service"  # infra/render/compose.py labels every service so


class DockerError(RuntimeError):
    """The Docker Engine refused or failed a call; the message names the call and its answer."""


@dataclass(frozen=True)
class Container:
    id: str
    service: str
    state: str  # Docker's: running, exited, created, paused, restarting, ...


class Shedder:
    """The shed list's containers in one compose project: their states, and stop."""

    def __init__(self, socket_path: str, project: str, services: tuple[str, ...], *, stop_timeout_s: int = 30):
        if not project:
            raise ValueError("memory guard: a compose project is required to shed containers")
        if len(set(services)) != len(services):
            raise ValueError(f"memory guard: the shed list names a service twice: {list(services)}")
        self.project = project
        self.services = services
        self.stop_timeout_s = stop_timeout_s
        transport = httpx.HTTPTransport(uds=socket_path)
        # The stop call waits for the container's own grace period, plus a margin.
        self._http = httpx.Client(transport=transport, base_url="http://docker", timeout=stop_timeout_s + 30)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise DockerError(f"{method} {path}: {exc!r}") from exc
        if response.status_code >= 400:
            raise DockerError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response

    def containers(self) -> list[Container]:
        """The shed list's containers of this project (any state), in shed order."""
        filters = {"label": [f"{PROJECT_LABEL}={self.project}"]}
        found = self._call("GET", "/containers/json", params={"all": "1", "filters": json.dumps(filters)}).json()
        by_service: dict[str, list[Container]] = {}
        for item in found:
            labels = item.get("Labels") or {}
            service = labels.get(SERVICE_LABEL, "")
            if labels.get(PROJECT_LABEL) == self.project and service in self.services:
                by_service.setdefault(service, []).append(Container(item["Id"], service, item.get("State", "")))
        return [c for service in self.services for c in by_service.get(service, [])]

    def stop(self, container: Container) -> None:
        """Stop one container of the shed list (its own grace period: SIGTERM, then SIGKILL)."""
        if container.service not in self.services:
            raise DockerError(f"refused: service {container.service!r} is not in the shed list {list(self.services)}")
        labels = self._call("GET", f"/containers/{container.id}/json").json().get("Config", {}).get("Labels") or {}
        if labels.get(PROJECT_LABEL) != self.project or labels.get(SERVICE_LABEL) != container.service:
            raise DockerError(f"refused: container {container.id[:12]} is not {container.service!r} of {self.project}")
        self._call("POST", f"/containers/{container.id}/stop", params={"t": str(self.stop_timeout_s)})

    def stop_next(self) -> Container | None:
        """Stop the first running container in shed order; None when none is running."""
        for container in self.containers():
            if container.state == "running":
                self.stop(container)
                return container
        return None
