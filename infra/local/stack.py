"""`make stack-up` / `make stack-down`: a compose stack applied for real on this machine.

up: a Docker Engine (the machine's, else a private dockerd), the stand-in images for third-party
images that cannot be pulled here, one real sshd per host address, then the program applied as
`pulumi up` would (infra.local.engine) after the policy pack passed on its plan. It writes the stack
outputs, secrets shown, to <state>/outputs.json (the shape of `pulumi stack output --json
--show-secrets`) and returns once compose reports every service healthy.
down: every delete script in reverse order, the stack's volumes, the hosts' sshd and a private
dockerd; then checks that no container, process or listening port of the stack is left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.config import PROJECT, Platform, StackConfig, load
from infra.local import engine as local_engine
from infra.local.docker_engine import Engine, engine_mounts, ensure_engine, private_paths, stop_private_engine
from infra.local.hosts import LoopbackHost, client_key, start_host, stop_host
from infra.local.processes import listeners, wait_until
from infra.local.state import State
from infra.plan import PROJECT_DIR, build_plan
from infra.plan.stackfile import read_stack_file

LABEL = "dev.vllm-gb10.service"
HEALTHY_TIMEOUT_S = 300
Log = Callable[[str], None]


class StackError(RuntimeError):
    """The local stack cannot go up or down: what is wrong, and where."""


@dataclass(frozen=True)
class LocalStack:
    stack: str = "local"
    project_dir: Path = PROJECT_DIR
    state_dir: Path = PROJECT_DIR / "build" / "stack"
    overrides: dict[str, str] = field(default_factory=dict)  # bare key -> raw value, as `pulumi config set`
    # A private dockerd's data root (the image cache) lives here, shared by every state dir of a checkout.
    engine_dir: Path = PROJECT_DIR / "build" / "stack"
    keep_failed: bool = False  # leave a failed first `up` standing, to look at it (then `down`)

    @property
    def outputs_file(self) -> Path:
        return self.state_dir / "outputs.json"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"


def _config_values(local: LocalStack) -> tuple[dict[str, str], list[str]]:
    stack_file = read_stack_file(local.project_dir, local.stack)
    values = dict(stack_file.values)
    for key, value in local.overrides.items():
        values[f"{PROJECT}:{key}"] = value
    return values, list(stack_file.secret_keys)


def _stack_config(local: LocalStack, values: dict[str, str]) -> StackConfig:
    prefix = f"{PROJECT}:"
    present = [k.removeprefix(prefix) for k in values if k.startswith(prefix)]
    cfg = load(lambda key: values.get(prefix + key), local.stack, present)
    if cfg.platform is not Platform.COMPOSE:
        raise StackError(f"stack {local.stack} is a {cfg.platform.value} stack; only compose stacks run locally")
    return cfg


def _loopback_hosts(cfg: StackConfig) -> list[LoopbackHost]:
    return [LoopbackHost(h.name, h.address, h.ssh_port) for h in cfg.hosts]


def _ports(value: Any, name: str = "") -> set[int]:
    """Every port a stack config names (fields called *port)."""
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, dict):
        return {p for k, v in value.items() for p in _ports(v, k)}
    if isinstance(value, list | tuple):
        return {p for v in value for p in _ports(v, name)}
    return {value} if name.endswith("port") and isinstance(value, int) and value > 0 else set()


def _link_local_torch(project_dir: Path, log: Log) -> None:
    """Offline builds: link a local torch CPU wheel (pip's find-links) into .whl/ for images/Dockerfile.cpu."""
    target = project_dir / ".whl"
    for folder in filter(None, os.environ.get("PIP_FIND_LINKS", "").split()):
        for wheel in Path(folder).glob("torch-*+cpu-*.whl") if Path(folder).is_dir() else []:
            link = target / wheel.name
            if not link.exists():
                target.mkdir(exist_ok=True)
                try:
                    os.link(wheel, link)
                except OSError:
                    shutil.copy2(wheel, link)
                log(f"linked {wheel} into .whl/ for the CPU vLLM image")


def up(local: LocalStack, log: Log = print) -> dict[str, Any]:
    """Bring the stack up (or re-apply it); returns the outputs with secrets shown."""
    started = time.monotonic()
    local.state_dir.mkdir(parents=True, exist_ok=True)
    values, secret_keys = _config_values(local)
    cfg = _stack_config(local, values)
    hosts = _loopback_hosts(cfg)
    state = State.load(local.state_file)
    fresh = not state.resources
    if fresh:
        addresses = {h.address for h in cfg.hosts} | {h.bind_ip for h in cfg.hosts}
        taken = listeners(addresses, _ports(cfg) | {h.ssh_port for h in cfg.hosts})
        if taken:
            lines = [f"  {ip}:{port} is taken by {who}" for (ip, port), who in sorted(taken.items())]
            raise StackError("ports the stack needs are already in use:\n" + "\n".join(lines))
    docker = ensure_engine(local.engine_dir)
    log(f"docker engine: {'private dockerd' if docker.private else 'this machine'} at {docker.host}")
    try:
        _prepare_images(local, docker, log)
        private_key, _ = client_key(local.state_dir)
        pinned = [start_host(local.state_dir, h, docker.env) for h in hosts]
        for started_host in pinned:
            log(f"host {started_host.host.name}: sshd on {started_host.host.address}:{started_host.host.ssh_port}")
        hosts_raw = json.loads(values[f"{PROJECT}:hosts"])
        keys = {p.host.name: p.host_key for p in pinned}
        for raw in hosts_raw:
            raw["hostKey"] = keys[raw["name"]]  # what a user pastes from ssh-keyscan
        values[f"{PROJECT}:hosts"] = json.dumps(hosts_raw)
        for host in cfg.hosts:
            values[f"{PROJECT}:{host.private_key_secret}"] = private_key
            secret_keys.append(f"{PROJECT}:{host.private_key_secret}")
        _check_policies(local, values, log)
        log(f"applying stack {local.stack} ({'create' if fresh else 'update'}):")
        recording = local_engine.apply(
            local.stack,
            values,
            sorted(set(secret_keys)),
            state,
            docker_env=docker.env,
            project_dir=local.project_dir,
            log=log,
        )
    except BaseException:
        if fresh and not local.keep_failed:
            log("up failed on a fresh stack: taking down what it started")
            down(local, log=log, verify=False)
        raise
    outputs = dict(sorted(recording.outputs.items()))
    _write_private(local.outputs_file, json.dumps(outputs, indent=2) + "\n")
    # A change on one host can restart services on another (Ray workers rejoin a recreated head).
    try:
        wait_until(lambda: not _unhealthy_containers(docker.env), HEALTHY_TIMEOUT_S, "every service healthy", 1.0)
    except TimeoutError:
        raise StackError("services not healthy after apply: " + ", ".join(_unhealthy_containers(docker.env))) from None
    log(f"stack {local.stack} is up in {time.monotonic() - started:.0f} s; every service healthy.")
    for name, value in outputs.items():
        shown = "[secret]" if name in recording.secret_outputs else json.dumps(value)
        log(f"  {name}: {shown}")
    log(f"outputs with secrets: {local.outputs_file}")
    return outputs


def _prepare_images(local: LocalStack, docker: Engine, log: Log) -> None:
    from infra.local.images import build_standins

    _link_local_torch(local.project_dir, log)
    build_standins(docker.env, local.engine_dir / "standins", log=log)


def _check_policies(local: LocalStack, values: dict[str, str], log: Log) -> None:
    """As `pulumi up --policy-pack policies`: mandatory violations stop the apply before anything changes."""
    overrides = {k.removeprefix(f"{PROJECT}:"): v for k, v in values.items()}
    plan = build_plan(local.stack, local.project_dir, overrides)
    for violation in plan.violations:
        log(f"policy: {violation}")
    if plan.mandatory_violations:
        raise StackError(f"{len(plan.mandatory_violations)} mandatory policy violations; nothing was applied")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _docker(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(["docker", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise StackError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _unhealthy_containers(env: dict[str, str]) -> list[str]:
    """Containers of the stack that are neither healthy nor a one-shot that exited 0."""
    rows = _docker(env, "ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}\t{{.Status}}").splitlines()
    bad = []
    for row in rows:
        name, _, status = row.partition("\t")
        if "(healthy)" in status or status.startswith("Exited (0)"):
            continue
        bad.append(f"{name} ({status})")
    return bad


def leftovers(local: LocalStack, env: dict[str, str] | None, cfg: StackConfig) -> list[str]:
    """What of the stack is still there: containers, sshd processes, listening ports on its addresses."""
    found = []
    if env is not None:
        try:
            found += [
                f"container {n}"
                for n in _docker(env, "ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}").split()
            ]
        except (StackError, FileNotFoundError):
            pass
    addresses = {h.address for h in cfg.hosts} | {h.bind_ip for h in cfg.hosts}
    found += [
        f"{ip}:{port} held by {who}"
        for (ip, port), who in listeners(addresses, _ports(cfg) | {h.ssh_port for h in cfg.hosts}).items()
        if ip in addresses
    ]
    return found


def down(local: LocalStack, log: Log = print, *, verify: bool = True) -> None:
    """Destroy the stack and stop everything `up` started; raises if anything is left."""
    values, _ = _config_values(local)
    cfg = _stack_config(local, values)
    state = State.load(local.state_file)
    errors: list[str] = []
    docker: Engine | None = None
    try:
        docker = ensure_engine(local.engine_dir)
    except RuntimeError as err:
        errors.append(str(err))
    if state.resources and docker is not None:
        for loopback in _loopback_hosts(cfg):  # the delete scripts run over SSH, like every other script
            try:
                start_host(local.state_dir, loopback, docker.env)
            except RuntimeError as err:
                errors.append(str(err))
        log(f"destroying stack {local.stack}:")
        try:
            local_engine.destroy(state, log)
        except RuntimeError as err:
            errors.append(str(err))
    if docker is not None:
        _remove_stack_leftovers(docker.env, cfg, log)
    for host in cfg.hosts:
        stop_host(local.state_dir, host.name)
    local.state_file.unlink(missing_ok=True)
    local.outputs_file.unlink(missing_ok=True)
    # The private dockerd is ours: stop it, unless another local stack (another state dir) still runs on it.
    if (
        docker is not None
        and docker.private
        and not _docker(docker.env, "ps", "-aq", "--filter", f"label={LABEL}").split()
    ):
        stop_private_engine(local.engine_dir)
        log(f"stopped the private dockerd ({private_paths(local.engine_dir)['socket']})")
        errors += [f"mount {point} (the private dockerd's)" for point in engine_mounts(local.engine_dir)]
    if verify:
        left = leftovers(local, None if (docker is None or docker.private) else docker.env, cfg)
        if left or errors:
            raise StackError("stack-down left things behind:\n" + "\n".join([*errors, *left]))
    log(f"stack {local.stack} is down; nothing of it is left running.")


def _remove_stack_leftovers(env: dict[str, str], cfg: StackConfig, log: Log) -> None:
    """The local stack keeps no data: its compose projects' volumes go too (a real host keeps them)."""
    projects = [f"vllm-gb10-{h.name}" for h in cfg.hosts]
    for project in projects:
        names = _docker(env, "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}").split()
        if names:
            _docker(env, "volume", "rm", "-f", *names)
            log(f"removed volumes of {project}: {', '.join(names)}")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m infra.local", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--stack", default="local", help="a compose stack whose hosts are loopback addresses")
    parser.add_argument(
        "--state-dir", type=Path, default=LocalStack().state_dir, help="state, keys, outputs, dockerd data"
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, as `pulumi config set`",
    )
    parser.add_argument("--keep-failed", action="store_true", help="leave a failed first up standing, to inspect it")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.config:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--config {item!r}: expected KEY=VALUE")
        overrides[key] = value
    local = LocalStack(
        stack=args.stack, state_dir=args.state_dir.resolve(), overrides=overrides, keep_failed=args.keep_failed
    )
    try:
        if args.command == "up":
            up(local)
        else:
            down(local)
    except (StackError, local_engine.ApplyError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
