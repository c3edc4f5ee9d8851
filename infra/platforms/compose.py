"""The compose platform: one docker compose project per GB10 host, shipped and applied over SSH.

The compose file and mounted files are rendered here and copied with CopyToRemote into the host's
project directory (`<remoteDir>/<host>`); secrets go to `.secrets.env` there through the up
command's stdin (never a file in the plan or a plain input). Every service runs on the host
network and binds the address `bind_address` gives it. `up` carries a content hash in `triggers`
and returns once every service is healthy; `docker compose down` runs only when the stack is
destroyed (a separate teardown command), so a replaced `up` never takes the services down.
"""

from __future__ import annotations

import functools
import graphlib
import hashlib
import shlex
from dataclasses import dataclass, replace
from typing import TypedDict

import pulumi
import yaml
from pulumi_command import remote

from infra.components.host import Gb10Host
from infra.config import RaySettings
from infra.memory import check_host_budgets
from infra.platforms import Rollout
from infra.render.compose import DOCKER_SOCKET_ENV, PROJECT_NAME, project_name, render_compose, service_entry
from infra.services import Exposure, HostPath, Reload, ServiceSpec, files_digest, host_port, secret_output

COMPOSE_FILE = "docker-compose.yml"
SECRETS_FILE = ".secrets.env"
ANY_ADDRESSES = {"0.0.0.0", "::"}
# `up --wait` allows the slowest health check's start period plus this for its retries and starts.
WAIT_MARGIN_S = 300


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


def _compose_here(host: str, *args: str) -> str:
    """A docker compose command for the host's project, run in its project directory."""
    base = f"docker compose --project-name {project_name(host)} --env-file {SECRETS_FILE} -f {COMPOSE_FILE}"
    return f"{base} {' '.join(args)}"


def _compose(project_dir: str, host: str, *args: str) -> str:
    return f"cd {shlex.quote(project_dir)} && {_compose_here(host, *args)}"


def wait_timeout_s(specs: list[ServiceSpec]) -> int:
    """Seconds `up --wait` may take: the slowest chain of start periods plus a margin. A service starts once
    its depends_on are healthy, so the servers of several models on one host (one after another) add up."""
    by_name = {spec.name: spec for spec in specs}

    @functools.cache
    def ready_by(name: str) -> int:
        spec = by_name[name]
        own = spec.healthcheck.start_period_s if spec.healthcheck else 0
        return own + max((ready_by(d) for d in spec.depends_on if d in by_name), default=0)

    return max((ready_by(spec.name) for spec in specs), default=0) + WAIT_MARGIN_S


@dataclass(frozen=True)
class ReloadStep:
    """A reloadable service of the project (ServiceSpec.reload) and the digest of its files now."""

    service: str
    digest: str
    files: tuple[tuple[str, str], ...]  # (file name in the project directory, its path in the container)
    reload: Reload


def up_script(
    project_dir: str,
    host: str,
    content_hash: str,
    wait_timeout: int,
    mounted_files: tuple[str, ...] = (),
    state_dirs: tuple[HostPath, ...] = (),
    reloads: tuple[ReloadStep, ...] = (),
    services: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
) -> str:
    """Write the secrets, then bring the project up and wait until every service is healthy; then
    reload in place each reloadable service whose files changed; then start the optional services.

    `--pull missing` pulls only images the host lacks (an image built or loaded there is used as
    it is); `--wait` fails the command when a service does not become healthy, or a one-shot set-up
    does not complete, within `wait_timeout` seconds. With `optional` services (observability only:
    the DCGM exporter) the first `up` names the others (`services`), and each optional one is started
    after them: one that does not come up is a warning with its last log lines, not a failed deploy.
    """
    required = tuple(s for s in services if s not in optional) if optional else ()
    up = _compose_here(host, f"up -d --pull missing --remove-orphans --wait --wait-timeout {wait_timeout}", *required)
    return "\n".join(
        [
            "set -eu",
            f"# content sha256 {content_hash}",
            f"cd {shlex.quote(project_dir)}",
            f"(umask 077 && cat > {SECRETS_FILE})",
            # The mounted files hold no secret, and the services read them as their own non-root users,
            # whatever umask the SSH user's copies were made with.
            *([f"chmod 0644 {' '.join(shlex.quote(f) for f in mounted_files)}"] if mounted_files else []),
            *_state_dir_lines(state_dirs),
            # The memory guard mounts the socket of the engine this compose talks to (compose.DOCKER_SOCKET_SOURCE).
            f'case "${{DOCKER_HOST:-}}" in unix://*) export {DOCKER_SOCKET_ENV}="${{DOCKER_HOST#unix://}}" ;; esac',
            # GB10: page cache counts as used unified memory at vLLM start-up (DESIGN.md).
            "sync && (sudo -n sh -c 'echo 3 > /proc/sys/vm/drop_caches' 2>/dev/null "
            "|| echo 'warning: page caches not dropped (needs passwordless sudo)' >&2)",
            f"if ! {up}; then",
            *_failure_report(host),
            "fi",
            *(line for step in reloads for line in _reload_lines(host, step, wait_timeout)),
            *(line for name in optional for line in _optional_lines(host, name, wait_timeout)),
            _compose_here(host, "ps --format '{{.Name}} {{.Status}}'"),
        ]
    )


def _optional_lines(host: str, name: str, wait_timeout: int) -> list[str]:
    """Start an optional service; if it does not become healthy, say so and go on (it serves nothing)."""
    up = _compose_here(host, f"up -d --pull missing --no-deps --wait --wait-timeout {wait_timeout} {name}")
    logs = _compose_here(host, f"logs --no-color --no-log-prefix --tail 25 {name}")
    return [
        f"if ! {up}; then",
        f"  echo 'warning: {name} did not come up on {host}; it is observability only, so the deploy goes on"
        " (the dashboard panels that read it stay empty, and Prometheus shows its target down). Its last log"
        " lines:' >&2",
        f"  {logs} >&2 || true",
        "fi",
    ]


def _reload_lines(host: str, step: ReloadStep, wait_timeout: int) -> list[str]:
    """Reload `step.service` in place when its files differ from the last ones it took (a stamp file).

    Its container keeps running, so no connection is cut (HAProxy: master-worker reload, the old
    worker finishes its streams). The new files are checked inside the container first; a failing
    check leaves the running configuration as it is and fails the `up` with the check's words. A
    container that does not see the new content (a file replaced under its bind mount, not rewritten)
    is recreated instead, and says so.
    """
    name, how = step.service, step.reload
    stamp = shlex.quote(f".reloaded-{name}.sha256")
    logs = 'docker logs --since "$since" "$cid" 2>&1'
    stale = " || ".join(
        f'! docker exec "$cid" cat {shlex.quote(mount)} | cmp -s - {shlex.quote(file)}' for file, mount in step.files
    )
    recreate = _compose_here(host, f"up -d --no-deps --force-recreate --wait --wait-timeout {wait_timeout} {name}")
    return [
        f'if [ "$(cat {stamp} 2>/dev/null || true)" != {step.digest} ]; then',
        f"  cid=$({_compose_here(host, f'ps -q {name}')})",
        f"  if {stale}; then",
        f"    echo '{name}: its container does not see the new files: recreating it' >&2",
        f"    {recreate}",
        "  else",
        f'    if ! docker exec "$cid" {" ".join(shlex.quote(a) for a in how.check)} >&2; then',
        f"      echo '{name}: the new configuration fails its check (above); {name} keeps running the one it has' >&2",
        "      exit 1",
        "    fi",
        "    since=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)",
        f'    docker kill -s {how.signal} "$cid" >/dev/null',
        "    waited=0",
        f"    until {logs} | grep -qF {shlex.quote(how.success_log)}; do",
        f"      if {logs} | grep -qF {shlex.quote(how.failure_log)} || [ $waited -ge {how.timeout_s} ]; then",
        f"        echo '{name}: the reload did not take; its log since the signal:' >&2",
        f"        {logs} | tail -25 >&2",
        "        exit 1",
        "      fi",
        "      waited=$((waited + 1)) && sleep 1",
        "    done",
        f"    echo '{name}: reloaded in place ({how.signal}); its container kept running' >&2",
        "  fi",
        f"  echo {step.digest} > {stamp}",
        "fi",
    ]


# A service is in trouble unless it is healthy, running without a health check, or a one-shot that exited 0.
_TROUBLED = (
    'awk -F\'|\' \'!($3 == "healthy" || ($2 == "running" && $3 == "") || ($2 == "exited" && $4 == "0")) {print $1}\''
)


def _failure_report(host: str) -> list[str]:
    """On a failed `up --wait`: every service's state, then the last log lines of those in trouble, on stderr.

    Compose alone says only "container x is unhealthy"; what a user needs next is that container's
    own last words (a bad flag, a port taken, out of memory), without another SSH session.
    """
    logs = _compose_here(host, 'logs --no-color --no-log-prefix --tail 25 "$service"')
    states = _compose_here(host, "ps -a --format '{{.Service}}|{{.State}}|{{.Health}}|{{.ExitCode}}'")
    return [
        f"  echo 'services on {host} not healthy; their state (service|state|health|exit code):' >&2",
        f"  {states} >&2 || true",
        f"  for service in $({states} | {_TROUBLED}); do",
        '    echo "--- last log lines of $service:" >&2',
        f"    {logs} >&2 || true",
        "  done",
        "  exit 1",
    ]


def _state_dir_lines(state_dirs: tuple[HostPath, ...]) -> list[str]:
    """Create each writable state directory and its seed files once; never overwrite what is there.
    Sticky and world-writable (1777), as /tmp: a service's own user (HAProxy's) creates its socket
    there, while files others made (the keys map, 0644) stay theirs."""
    lines = []
    for state in state_dirs:
        directory = shlex.quote(state.host_path)
        lines.append(f"mkdir -p {directory} && chmod 1777 {directory}")
        for seed in state.seed_files:
            path = shlex.quote(f"{state.host_path}/{seed}")
            lines.append(f"[ -e {path} ] || (touch {path} && chmod 0644 {path})")
    return lines


# How long a host's servers may take to pass HAProxy's health checks once its `up` has returned healthy.
READY_TIMEOUT_S = 120


ROLL_STEP = "# roll step {step}: {action} {host}'s servers"


def lb_step_script(
    action: str,
    host: str,
    servers: tuple[str, ...],
    keys_dir: str,
    image: str,
    timeout_s: int,
    digest: str,
    step: int,
) -> str:
    """`python -m runtime.lbdrain` in the runtime image, against the admin socket in the keys directory.

    The container gets that directory alone, no network, and of root's powers only the one that opens
    a socket owned by HAProxy's user (mode 0600). No socket yet (the first `up`): nothing to do.
    """
    keys = shlex.quote(keys_dir)
    tool = " ".join(
        [
            "docker run --rm --network none --read-only --user 0 --cap-drop ALL --cap-add DAC_OVERRIDE",
            f"-v {keys}:/keys {shlex.quote(image)} python -m runtime.lbdrain --dir /keys",
            f"{action} {' '.join(shlex.quote(s) for s in servers)} --timeout-s {timeout_s}",
        ]
    )
    return "\n".join(
        [
            "set -eu",
            ROLL_STEP.format(step=step, action=action, host=host),
            f"# for a change of its serving services (sha256 {digest})",
            f"if [ ! -S {keys}/admin.sock ]; then",
            f"  echo 'no load balancer running yet: nothing to {action} for {host}' >&2",
            "  exit 0",
            "fi",
            tool,
        ]
    )


def down_script(project_dir: str, host: str) -> str:
    # Volumes are kept: model cache, Redis AOF, Postgres and MinIO data outlive the stack.
    compose_file = shlex.quote(f"{project_dir}/{COMPOSE_FILE}")
    return f"if [ -f {compose_file} ]; then {_compose(project_dir, host, 'down --remove-orphans')}; fi"


class ComposeServiceArgs(TypedDict):
    host: Gb10Host
    spec: ServiceSpec
    project: str  # the name of the host's ComposeProject: the files' names start with it


class ComposeService(pulumi.ComponentResource):
    """One service of a host's compose project, as a child of the component that declared it (the
    load balancer, a vLLM server, the Ray head, ...), with the copies of its mounted files (haproxy.cfg,
    prometheus.yml, ...) as its own children. The host's ComposeProject renders and starts it."""

    TYPE = "vllm-gb10:compose:Service"
    copies: list[remote.CopyToRemote]

    def __init__(self, name: str, args: ComposeServiceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(self.TYPE, name, None, opts)
        host, spec, project = args["host"], args["spec"], args["project"]
        # These copies were children of the host's project before: the alias keeps an existing stack's
        # copies as they are instead of replacing them on the first `up` after the upgrade.
        old_parent = pulumi.create_urn(project, ComposeProject.TYPE, parent=host)
        self.copies = [
            remote.CopyToRemote(
                f"{project}-{f.filename}",
                connection=host.connection,
                source=pulumi.Output.from_input(f.content).apply(pulumi.StringAsset),
                remote_path=f"{host.project_dir}/{f.filename}",
                opts=pulumi.ResourceOptions(
                    parent=self, depends_on=[host.ready], aliases=[pulumi.Alias(parent=old_parent)]
                ),
            )
            for f in sorted(spec.files, key=lambda f: f.filename)
        ]
        self.register_outputs({"host": host.host_name, "container": f"{PROJECT_NAME}-{spec.name}"})


class ComposeProjectArgs(TypedDict):
    host: Gb10Host
    specs: list[ServiceSpec]
    file_copies: list[remote.CopyToRemote]  # the services' mounted files, copied by their ComposeService
    after: list[pulumi.Resource]  # other hosts' `up` commands that must have finished first


class ComposeProject(pulumi.ComponentResource):
    """The services of one host as a docker compose project: the compose file, `up` and the teardown."""

    TYPE = "vllm-gb10:compose:ComposeProject"

    compose_file: pulumi.Output[str]
    content_hash: pulumi.Output[str]
    files: dict[str, pulumi.Output[str]]
    up: remote.Command

    def __init__(self, name: str, args: ComposeProjectArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(self.TYPE, name, None, opts)
        host, specs = args["host"], args["specs"]
        project_dir, host_name = host.project_dir, host.host_name
        child = pulumi.ResourceOptions(parent=self, depends_on=[host.ready])

        self.compose_file = pulumi.Output.all(*[_resolved(s) for s in specs]).apply(
            lambda resolved: render_compose(list(resolved), host_name, host.bind_ip)
        )
        self.files = {f.filename: pulumi.Output.from_input(f.content) for s in specs for f in s.files}
        copies = [
            remote.CopyToRemote(
                f"{name}-{COMPOSE_FILE}",
                connection=host.connection,
                source=self.compose_file.apply(pulumi.StringAsset),
                remote_path=f"{project_dir}/{COMPOSE_FILE}",
                opts=child,
            ),
            *args["file_copies"],
        ]
        teardown = remote.Command(
            f"{name}-teardown",
            connection=host.connection,
            create="true",
            delete=down_script(project_dir, host_name),
            opts=child,
        )
        secret_values = {s.env: s.value for spec in specs for s in spec.secrets}
        # Output.all() of no values resolves to a list, hence from_input for a host without secrets.
        values = pulumi.Output.all(**secret_values) if secret_values else pulumi.Output.from_input({})
        env_text = secret_output(values.apply(secrets_env))
        content_hash = pulumi.Output.all(self.compose_file, *self.files.values()).apply(lambda parts: _sha256(*parts))
        self.content_hash = content_hash
        wait_timeout = wait_timeout_s(specs)
        reloadable = [(s, s.reload) for s in specs if s.reload is not None and s.files]
        script = pulumi.Output.all(content_hash, *[files_digest(s.files) for s, _ in reloadable]).apply(
            lambda hashes: up_script(
                project_dir,
                host_name,
                hashes[0],
                wait_timeout,
                tuple(sorted(self.files)),
                tuple(p for s in specs for p in s.host_paths if p.writable),
                tuple(
                    ReloadStep(s.name, digest, tuple((f.filename, f.mount_path) for f in s.files), how)
                    for (s, how), digest in zip(reloadable, hashes[1:], strict=True)
                ),
                tuple(s.name for s in specs),
                tuple(s.name for s in specs if s.optional),
            )
        )
        self.up = remote.Command(
            f"{name}-up",
            connection=host.connection,
            create=script,
            update=script,
            stdin=env_text,
            # The hash stays readable in diffs; a changed secret re-runs `update` through stdin.
            triggers=[content_hash],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[host.ready, teardown, *copies, *args["after"]]),
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
    host_state_dirs = True
    serves_tls = True  # the load balancer, batch API and Grafana each serve TLS on their public port
    host_docker = True  # the memory guard sheds through the host's Docker socket

    def terminate_tls(self, cert_pem: pulumi.Output[str], key_pem: pulumi.Output[str]) -> None:
        raise NotImplementedError("compose services serve TLS themselves (serves_tls)")

    def __init__(self, hosts: dict[str, Gb10Host], *, stack: str = "", memory_gib: dict[str, float] | None = None):
        """`memory_gib`: host -> GiB the container limits placed there may add up to (GB10 hosts)."""
        self._hosts = hosts
        self._stack = stack
        self._memory_gib = memory_gib or {}
        self._specs: dict[str, list[ServiceSpec]] = {name: [] for name in hosts}
        self._checks: list[tuple[ServiceSpec, pulumi.Resource]] = []
        self._parents: dict[str, pulumi.Resource] = {}  # service name -> the component that declared it
        self.projects: dict[str, ComposeProject] = {}
        self.services: dict[str, ComposeService] = {}
        self._rollout: Rollout | None = None
        self.rolls: dict[str, tuple[remote.Command, remote.Command]] = {}  # host -> (drain, ready), in order

    def roll(self, rollout: Rollout) -> None:
        """Each host's `up` runs between a drain and a ready command on the load balancer's host (see
        finish). They run when the host's serving services change, and not otherwise."""
        unknown = sorted(set(rollout.servers) - set(self._hosts))
        if unknown or rollout.lb_host not in self._hosts:
            raise ValueError(f"rollout names hosts the stack does not have: {unknown or [rollout.lb_host]}")
        self._rollout = rollout

    def deploy(self, spec: ServiceSpec, parent: pulumi.Resource) -> None:
        if spec.host not in self._hosts:
            raise ValueError(f"service {spec.name} placed on unknown host {spec.host!r}")
        if spec.sidecars:  # compose shares state through host directories (HostPath) instead
            raise ValueError(f"service {spec.name}: sidecars are for kubernetes pods, not compose")
        self._specs[spec.host].append(spec)
        self._parents[spec.name] = parent

    def run_after_deploy(self, spec: ServiceSpec, parent: pulumi.Resource) -> None:
        """Run the one-shot `spec` with `docker run` on its host once every host's `up` has returned; a
        failure fails `pulumi up`. It runs again whenever any host's project changed."""
        if spec.host not in self._hosts:
            raise ValueError(f"check {spec.name} placed on unknown host {spec.host!r}")
        self._checks.append((spec, parent))

    def deploy_ray(
        self, name: str, head: ServiceSpec, workers: list[ServiceSpec], settings: RaySettings, parent: pulumi.Resource
    ) -> None:
        for spec in (head, *workers):
            self.deploy(spec, parent)

    def internal_host(self, host: str, service: str) -> str:
        return self._hosts[host].bind_ip

    def internal_address(self, host: str, port: int, service: str, exposure: Exposure = Exposure.INTERNAL) -> str:
        return host_port(self.probe_address(host, exposure), port)

    def bind_address(self, host: str, exposure: Exposure) -> str:
        """The cluster address, or for public services the host's publicAddress."""
        found = self._hosts[host]
        return found.public_address if exposure is Exposure.PUBLIC else found.bind_ip

    def probe_address(self, host: str, exposure: Exposure) -> str:
        """Where the service answers: its bind address, or the cluster address when that is every interface."""
        address = self.bind_address(host, exposure)
        return self._hosts[host].bind_ip if address in ANY_ADDRESSES else address

    def external_address(self, host: str, port: int, service: str) -> str:
        return f"{self._hosts[host].address}:{port}"

    def _serving_digest(self, host: str, specs: list[ServiceSpec]) -> pulumi.Output[str]:
        """The digest of `host`'s serving services as compose runs them: the trigger of its drain and ready,
        so they run (and the roll waits) only when those change, never for a change elsewhere on the host."""
        assert self._rollout is not None
        serving = [s for s in specs if s.name in self._rollout.services[host]]
        return pulumi.Output.all(*[_resolved(s) for s in serving]).apply(
            lambda resolved: _sha256(*[yaml.safe_dump(service_entry(s), sort_keys=True) for s in resolved])
        )

    def _lb_step(
        self, action: str, host: str, digest: pulumi.Output[str], after: list[pulumi.Resource]
    ) -> remote.Command:
        """`runtime.lbdrain drain|ready` for `host`'s servers, run on the load balancer's host, triggered by
        the host's serving digest."""
        rollout = self._rollout
        assert rollout is not None
        step = len(self.rolls) + 1
        balancer = self._hosts[rollout.lb_host]
        timeout = rollout.drain_timeout_s if action == "drain" else READY_TIMEOUT_S
        script = pulumi.Output.all(digest, rollout.tool_image).apply(
            lambda parts: lb_step_script(
                action,
                host,
                rollout.servers[host],
                f"{balancer.project_dir}/{rollout.keys_dir}",
                parts[1],
                timeout,
                parts[0],
                step,
            )
        )
        # Only a change of the serving services (the trigger) replaces it, which runs `create`. Anything
        # else that changes its inputs (a new runtime image) is an update, which does nothing.
        idle = f"echo 'no change to the servers of {host}: nothing to {action}'"
        return remote.Command(
            f"{host}-{action}",
            connection=balancer.connection,
            create=script,
            update=idle,
            triggers=[digest],
            opts=pulumi.ResourceOptions(parent=self._hosts[host], depends_on=[balancer.ready, *after]),
        )

    def finish(self) -> None:
        """One project per host. A service that waits for one on another host (the batch box for the
        data host's bucket set-up) cannot say so in its compose file: its host's `up` runs after that
        host's `up`, which returns only once everything there is healthy or complete."""
        for host, size in self._memory_gib.items():
            check_host_budgets(self._stack, {host: [(s.name, s.memory_limit) for s in self._specs[host]]}, size)
        where = {spec.name: host for host, specs in self._specs.items() for spec in specs}
        after: dict[str, set[str]] = {host: set() for host in self._specs}
        local: dict[str, list[ServiceSpec]] = {}
        for host, specs in self._specs.items():
            local[host] = []
            for spec in specs:
                elsewhere = [d for d in spec.depends_on if where.get(d, host) != host]
                after[host] |= {where[d] for d in elsewhere}
                local[host].append(replace(spec, depends_on=tuple(d for d in spec.depends_on if d not in elsewhere)))
        previous_ready: list[pulumi.Resource] = []
        for name in _host_order(after, list(self._hosts)):
            rolls = self._rollout is not None and name in self._rollout.servers and bool(local[name])
            digest = self._serving_digest(name, local[name]) if rolls else None
            drain = self._lb_step("drain", name, digest, previous_ready) if digest is not None else None
            if local[name]:
                box, project = self._hosts[name], f"{name}-compose"
                for spec in local[name]:
                    self.services[spec.name] = ComposeService(
                        spec.name,
                        {"host": box, "spec": spec, "project": project},
                        opts=pulumi.ResourceOptions(parent=self._parents[spec.name]),
                    )
                self.projects[name] = ComposeProject(
                    project,
                    {
                        "host": box,
                        "specs": local[name],
                        "file_copies": [c for spec in local[name] for c in self.services[spec.name].copies],
                        "after": [*(self.projects[h].up for h in sorted(after[name])), *([drain] if drain else [])],
                    },
                    opts=pulumi.ResourceOptions(parent=box),
                )
                if drain is not None and digest is not None:
                    ready = self._lb_step("ready", name, digest, [self.projects[name].up])
                    self.rolls[name] = (drain, ready)
                    previous_ready = [ready]
        ups: list[pulumi.Resource] = [project.up for project in self.projects.values()]
        ups += [ready for _, ready in self.rolls.values()]
        hashes = [project.content_hash for project in self.projects.values()]
        for spec, parent in self._checks:
            box = self._hosts[spec.host]
            script = pulumi.Output.from_input(spec.image).apply(functools.partial(docker_run_script, spec))
            secrets = pulumi.Output.all(*[s.value for s in spec.secrets]).apply(functools.partial(_env_lines, spec))
            remote.Command(
                spec.name,
                connection=box.connection,
                create=script,
                update=script,
                stdin=secret_output(secrets) if spec.secrets else None,
                triggers=hashes,
                opts=pulumi.ResourceOptions(parent=parent, depends_on=ups),
            )


def _host_order(after: dict[str, set[str]], listed: list[str]) -> list[str]:
    """Hosts in the order the stack file lists them, except that a host comes after those it waits for:
    the order `up` runs and a change rolls in. graphlib.CycleError: hosts waiting for each other."""
    sorter = graphlib.TopologicalSorter(after)
    sorter.prepare()
    order: list[str] = []
    ready: set[str] = set()
    while sorter.is_active():
        ready |= set(sorter.get_ready())
        host = min(ready, key=listed.index)  # one at a time: a later-listed host never overtakes
        ready.remove(host)
        order.append(host)
        sorter.done(host)
    return order


def _env_lines(spec: ServiceSpec, values: list[str]) -> str:
    """The spec's secrets as `NAME=value` lines, in the order of `spec.secrets`."""
    return "".join(f"{s.env}={v}\n" for s, v in zip(spec.secrets, values, strict=True))


def docker_run_script(spec: ServiceSpec, image: str) -> str:
    """`docker run` of a one-shot check on the host network, removed when it ends. Its secrets come on
    stdin as an env file (mode 0600, removed after), never on a command line or in the script."""
    env = [f"--env={k}={v}" for k, v in sorted(spec.environment.items())]
    argv = ["docker", "run", "--rm", "--network=host", f"--name={project_name(spec.host)}-{spec.name}", *env]
    command = " ".join(shlex.quote(str(a)) for a in [image, *spec.command])
    options = " ".join(shlex.quote(str(a)) for a in argv)
    if not spec.secrets:
        return f"{options} {command}"
    return "\n".join(
        [
            "set -eu",
            "secrets=$(mktemp) && trap 'rm -f \"$secrets\"' EXIT",
            '(umask 077 && cat > "$secrets")',
            f'{options} --env-file "$secrets" {command}',
        ]
    )
