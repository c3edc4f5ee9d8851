"""Read a stack file (Pulumi.<stack>.yaml) into the flat string config the Pulumi runtime takes.

Encrypted values (`secure: v1:…`) cannot be decrypted without the Pulumi CLI, and secrets are
usually not in the file at all; the offline plan stands in a placeholder for each, marked secret.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from infra.config import PROJECT, SECRET_KEYS, ConfigError, stack_file


@dataclass(frozen=True)
class StackFileConfig:
    values: dict[str, str]  # full key (vllm-gb10:x) -> raw string, as the runtime holds it
    secret_keys: list[str]
    placeholders: list[str]  # secret keys the plan made up
    stand_ins: list[str] = field(default_factory=list)  # other required keys the plan made up (digests)


def placeholder(key: str) -> str:
    return f"placeholder-{key}"


# Keys a kubernetes stack must set (the digests of what stack stella pushed) that only a deployed stella
# can give: the plan stands in a digest made from the key's name (never the all-zero one, which config
# refuses), and says so.
KUBERNETES_DIGEST_KEYS = ("vllmImageDigest", "runtimeImageDigest")


def stand_in_digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(placeholder(key).encode()).hexdigest()


def read_stack_file(project_dir: Path, stack: str) -> StackFileConfig:
    path = project_dir / stack_file(stack)
    if not path.is_file():
        raise ConfigError(f"{path.name}: no such stack file in {project_dir}")
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path.name}: not valid YAML: {err}") from None
    raw = document.get("config") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path.name}: config: must be a mapping of keys to values")
    values: dict[str, str] = {}
    secrets: list[str] = []
    for key, value in raw.items():
        full = key if ":" in key else f"{PROJECT}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            values[full] = placeholder(full.split(":", 1)[1])
            secrets.append(full)
        elif isinstance(value, str):
            values[full] = value
        else:
            values[full] = json.dumps(value)
    needed = set(SECRET_KEYS)
    hosts = raw.get(f"{PROJECT}:hosts") or []
    if isinstance(hosts, list):
        needed |= {h["privateKeySecret"] for h in hosts if isinstance(h, dict) and "privateKeySecret" in h}
    made_up = []
    for key in sorted(needed):
        full = f"{PROJECT}:{key}"
        # Unset on purpose: no registry login, or a generated CA instead of the operator's certificate.
        optional = key in {"tlsCertificate", "tlsPrivateKey"} or (
            key == "registryPassword" and f"{PROJECT}:registryUsername" not in values
        )
        if full not in values and not optional:
            values[full] = placeholder(key)
            secrets.append(full)
            made_up.append(key)
    stand_ins = []
    if values.get(f"{PROJECT}:platform") == "kubernetes":
        for key in KUBERNETES_DIGEST_KEYS:
            if f"{PROJECT}:{key}" not in values:
                values[f"{PROJECT}:{key}"] = stand_in_digest(key)
                stand_ins.append(key)
    return StackFileConfig(values=values, secret_keys=sorted(secrets), placeholders=made_up, stand_ins=stand_ins)
