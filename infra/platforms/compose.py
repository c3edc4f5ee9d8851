"""The compose platform: one docker compose project per GB10 host, shipped and applied over SSH.

The compose file and mounted files are rendered here and copied with CopyToRemote; secrets go to
`.secrets.env` through the up command's stdin (never a file in the plan or a plain input).
`up` carries a content hash in `triggers`; `docker compose down` runs only when the stack is
destroyed (a separate teardown command), so a replaced `up` never takes the services down.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import replace
from typing import TypedDict

import pulumi
from pulumi_command import remote

from infra.components.host import Gb10Host
from infra.config import RaySettings
from infra.render.compose import PROJECT_NAME, render_compose
from infra.services import ServiceSpec

COMPOSE_FILE = "docker-compose.yml"
SECRETS_FILE = ".secrets.env"


def _sha256(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def secrets_env(values: dict[str, str]) -> str:
    """Env-file text; single-quoted so compose takes every character literally."""
    lines = []
    for key, value in sorted(values.items()):
        if "'" in value or "\n" in value:
            raise ValueError(f"secret {key} contains a quote or newline, which an env file cannot hold")
        lines.append(f"{key}='{value}'")
    return "\n".join(lines) + "\n"


def _compose(remote_dir: str, *args: str) -> str:
    base = f"docker compose --project-name {PROJECT_NAME} --env-file {SECRETS_FILE} -f {COMPOSE_FILE}"
    return f"cd {shlex.quote(remote_dir)} && {base} {' '.join(args)}"


def up_script(remote_dir: str, content_hash: str) -> str:
    return "\n".join(
        [
            "set -eu",
            f"# content sha256 {content_hash}",
            f"cd {shlex.quote(remote_dir)}",
            f"umask 077 && cat > {SECRETS_FILE}",
            _compose(remote_dir, "pull --quiet --ignore-buildable"),
            # GB10: page cache counts as used unified memory at vLLM start-up (DESIGN.md).
            "sync && (sudo -n sh -c 'echo 3 > /proc/sys/vm/drop_caches' 2>/dev/null "
            "|| echo 'warning: page caches not dropped (needs passwordless sudo)' >&2)",
            _compose(remote_dir, "up -d --remove-orphans"),
            _compose(remote_dir, "ps --format '{{.Name}} {{.Status}}'"),
        ]
    )


def down_script(remote_dir: str) -> str:
    # Volumes are kept: model cache, Redis AOF, Postgres and MinIO data outlive the stack.
    compose_file = shlex.quote(f"{remote_dir}/{COMPOSE_FILE}")
    return f"if [ -f {compose_file} ]; then {_compose(remote_dir, 'down --remove-orphans')}; fi"


class ComposeProjectArgs(TypedDict):
    host: Gb10Host
    remote_dir: str
    specs: list[ServiceSpec]


class ComposeProject(pulumi.ComponentResource):
    """The services of one host as a docker compose project."""

    compose_file: pulumi.Output[str]
    files: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: ComposeProjectArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("vllm-gb10:compose:ComposeProject", name, None, opts)
        host, remote_dir, specs = args["host"], args["remote_dir"], args["specs"]
        child = pulumi.ResourceOptions(parent=self, depends_on=[host.ready])

        self.compose_file = pulumi.Output.all(*[_resolved(s) for s in specs]).apply(
            lambda resolved: render_compose(list(resolved), host.bind_ip)
        )
        self.files = {f.filename: pulumi.Output.from_input(f.content) for s in specs for f in s.files}
        copies = [
            remote.CopyToRemote(
                f"{name}-{COMPOSE_FILE}",
                connection=host.connection,
                source=self.compose_file.apply(pulumi.StringAsset),
                remote_path=f"{remote_dir}/{COMPOSE_FILE}",
                opts=child,
            )
        ]
        for filename, content in sorted(self.files.items()):
            copies.append(
                remote.CopyToRemote(
                    f"{name}-{filename}",
                    connection=host.connection,
                    source=content.apply(pulumi.StringAsset),
                    remote_path=f"{remote_dir}/{filename}",
                    opts=child,
                )
            )
        teardown = remote.Command(
            f"{name}-teardown",
            connection=host.connection,
            create="true",
            delete=down_script(remote_dir),
            opts=child,
        )
        secret_values = {s.env: s.value for spec in specs for s in spec.secrets}
        # Output.all() of no values resolves to a list, hence from_input for a host without secrets.
        values = pulumi.Output.all(**secret_values) if secret_values else pulumi.Output.from_input({})
        env_text = pulumi.Output.secret(values.apply(secrets_env))
        content_hash = pulumi.Output.all(self.compose_file, *self.files.values()).apply(lambda parts: _sha256(*parts))
        script = content_hash.apply(lambda h: up_script(remote_dir, h))
        remote.Command(
            f"{name}-up",
            connection=host.connection,
            create=script,
            update=script,
            stdin=env_text,
            # The hash stays readable in diffs; a changed secret re-runs `update` through stdin.
            triggers=[content_hash],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[host.ready, teardown, *copies]),
        )
        self.register_outputs({"composeFile": self.compose_file, "services": [s.name for s in specs]})


def _resolved(spec: ServiceSpec) -> pulumi.Output[ServiceSpec]:
    """The spec with its image, environment and file contents as plain text."""
    return pulumi.Output.all(
        pulumi.Output.from_input(spec.image),
        pulumi.Output.from_input(spec.environment),
        *[pulumi.Output.from_input(f.content) for f in spec.files],
    ).apply(
        lambda r: replace(
            spec,
            image=r[0],
            environment=r[1],
            files=tuple(replace(f, content=c) for f, c in zip(spec.files, r[2:], strict=True)),
        )
    )


class ComposePlatform:
    """Collects specs per host; `finish` declares one ComposeProject per host that has any."""

    nodes_addressable = True

    def __init__(self, hosts: dict[str, Gb10Host], remote_dir: str):
        self._hosts = hosts
        self._remote_dir = remote_dir
        self._specs: dict[str, list[ServiceSpec]] = {name: [] for name in hosts}
        self.projects: dict[str, ComposeProject] = {}

    def deploy(self, spec: ServiceSpec, parent: pulumi.Resource) -> None:
        if spec.host not in self._hosts:
            raise ValueError(f"service {spec.name} placed on unknown host {spec.host!r}")
        self._specs[spec.host].append(spec)

    def deploy_ray(
        self, name: str, head: ServiceSpec, workers: list[ServiceSpec], settings: RaySettings, parent: pulumi.Resource
    ) -> None:
        for spec in (head, *workers):
            self.deploy(spec, parent)

    def internal_host(self, host: str, service: str) -> str:
        return self._hosts[host].bind_ip

    def internal_address(self, host: str, port: int, service: str) -> str:
        return f"{self.internal_host(host, service)}:{port}"

    def external_address(self, host: str, port: int, service: str) -> str:
        return f"{self._hosts[host].address}:{port}"

    def finish(self) -> None:
        for name, specs in self._specs.items():
            if specs:
                host = self._hosts[name]
                self.projects[name] = ComposeProject(
                    f"{name}-compose",
                    {"host": host, "remote_dir": self._remote_dir, "specs": specs},
                    opts=pulumi.ResourceOptions(parent=host),
                )
