"""What the local engine remembers between runs, as Pulumi's state does: one JSON file, mode 0600.

It holds each resource's inputs (to tell create from update from no-op, and to run delete scripts
on `down`) and outputs (so generated passwords stay the same across applies). It holds secrets in
plain text, like an unencrypted local Pulumi backend would, so it lives under build/ with mode 0600.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi


def plain(value: Any) -> Any:
    """Inputs as JSON: assets become their text, so a changed file is a changed input."""
    if isinstance(value, pulumi.StringAsset):
        return {"asset_text": value.text}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(plain(value), sort_keys=True).encode()).hexdigest()


@dataclass
class ResourceState:
    type: str
    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    order: int


@dataclass
class State:
    path: Path
    resources: dict[str, ResourceState] = field(default_factory=dict)  # by type::name
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @staticmethod
    def key(type_: str, name: str) -> str:
        return f"{type_}::{name}"

    @classmethod
    def load(cls, path: Path) -> State:
        state = cls(path)
        if path.is_file():
            raw = json.loads(path.read_text())
            state.resources = {k: ResourceState(**v) for k, v in raw["resources"].items()}
        return state

    def get(self, type_: str, name: str) -> ResourceState | None:
        with self._lock:
            return self.resources.get(self.key(type_, name))

    def put(self, type_: str, name: str, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        with self._lock:
            previous = self.resources.get(self.key(type_, name))
            order = previous.order if previous else max((r.order for r in self.resources.values()), default=0) + 1
            self.resources[self.key(type_, name)] = ResourceState(type_, name, plain(inputs), plain(outputs), order)
            self._save()

    def remove(self, type_: str, name: str) -> None:
        with self._lock:
            self.resources.pop(self.key(type_, name), None)
            self._save()

    def newest_first(self) -> list[ResourceState]:
        with self._lock:
            return sorted(self.resources.values(), key=lambda r: r.order, reverse=True)

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"resources": {k: vars(v) for k, v in self.resources.items()}}, out, indent=1, default=str)
        tmp.replace(self.path)
