"""A small stand-in for the Pulumi engine's `up` and `destroy`, for the resource types this program uses.

The program runs under Pulumi's mock monitor (the SDK's own; no CLI here), and the monitor's
`new_resource` does what each provider would do on `pulumi up`, at the moment the program registers
the resource. The SDK registers a resource only once its inputs and `depends_on` resources are
resolved, so work happens in dependency order, as the engine orders it. What it does per type:

- command:remote:Command: runs `create` over SSH when new, `update` (else `create`) when an input
  changed, a replacement's `create` when `triggers` changed, nothing when unchanged; `delete` on destroy.
- command:remote:CopyToRemote: copies the asset over SSH when new or changed.
- docker-build:index:Image: `docker build` of the declared context and Dockerfile (the layer cache
  makes an unchanged build a no-op), tagged as declared; `ref` is the image ID, as unique as a digest.
- random:index/randomPassword:RandomPassword: a new random value, kept in state while inputs stay.
- tls:index/*: keys, a CA, certificate requests and certificates (infra/local/tls.py), kept in state
  while inputs stay and, for certificates, until their early-renewal window.

Everything else (component resources) is recorded only.
"""

from __future__ import annotations

import functools
import secrets
import string
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pulumi

from infra.components.host import pinned_run_stamp
from infra.config import PROJECT
from infra.local import tls as local_tls
from infra.local.ssh import Connection, RemoteError, copy_text, run_script
from infra.local.state import State, digest, plain
from infra.plan import pulumi_sdk
from infra.plan.pulumi_sdk import is_secret, unwrap_secret
from infra.plan.recorder import Recording, RecordingMonitor, collect_stack_outputs

COMMAND = "command:remote:Command"
COPY = "command:remote:CopyToRemote"
IMAGE = "docker-build:index:Image"
PASSWORD = "random:index/randomPassword:RandomPassword"

Log = Callable[[str], None]
Inputs = dict[str, Any]


class ApplyError(RuntimeError):
    """The apply stopped: names each resource that failed and why."""


@dataclass
class Providers(pulumi.runtime.Mocks):
    """The mock monitor's hooks, doing the real work of each provider."""

    state: State
    recording: Recording
    docker_env: dict[str, str]
    project_dir: Path
    log: Log
    seen: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _idle: threading.Condition = field(init=False)
    _in_flight: int = 0
    _closed: bool = False

    def __post_init__(self) -> None:
        self._idle = threading.Condition(self._lock)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        inputs = unsecret(dict(args.inputs))
        actions = {COMMAND: self._command, COPY: self._copy, IMAGE: self._image, PASSWORD: self._password}
        action = actions.get(args.typ) or (
            functools.partial(self._tls, args.typ) if args.typ in local_tls.TYPES else None
        )
        with self._lock:
            self.seen.add(State.key(args.typ, args.name))
            if action is not None and (self.failures or self._closed):
                # As the engine does: after a failure no new operation starts (those under way finish).
                raise RuntimeError(f"{args.typ} {args.name}: not started, the apply already failed")
            self._in_flight += 1
        try:
            if action is None:
                return f"{args.name}-id", inputs
            return self._act(action, args.typ, args.name, inputs)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._idle.notify_all()

    def wait_idle(self) -> None:
        """Refuse new operations and block until none is under way, so none writes state after this returns."""
        with self._lock:
            self._closed = True
            self._idle.wait_for(lambda: self._in_flight == 0)

    def _act(
        self, action: Callable[[str, Inputs], tuple[str, Inputs]], typ: str, name: str, inputs: Inputs
    ) -> tuple[str, Inputs]:
        started = time.monotonic()
        try:
            verb, outputs = action(name, inputs)
        except Exception as err:  # the engine's boundary: record which resource failed, then fail it
            with self._lock:
                self.failures.append(f"{typ} {name}: {err if isinstance(err, RemoteError | ValueError) else repr(err)}")
            self.log(f"  ! {typ} {name}: failed")
            raise
        if verb != "same":
            mark = "+" if verb in {"created", "built"} and status_new(self.state, typ, name) else "~"
            self.log(f"  {mark} {typ} {name} ({verb}, {time.monotonic() - started:.1f} s)")
        self.state.put(typ, name, inputs, outputs)
        return f"{name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], None]:
        return {}, None

    def _previous(self, type_: str, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """'new', 'same' or 'changed', and the outputs kept in state."""
        before = self.state.get(type_, name)
        if before is None:
            return "new", {}
        return ("same" if digest(before.inputs) == digest(inputs) else "changed"), before.outputs

    def _command(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        status, before = self._previous(COMMAND, name, inputs)
        if status == "same":
            return "same", before
        conn = Connection.from_inputs(inputs["connection"])
        script = inputs.get("create")
        verb = "created"
        if status == "changed":
            previous = self.state.get(COMMAND, name)
            replaced = previous is not None and plain(previous.inputs.get("triggers")) != plain(inputs.get("triggers"))
            if not replaced:
                script, verb = inputs.get("update") or script, "updated"
            else:
                verb = "replaced"
        stdout, stderr = ("", "") if not script else run_script(name, conn, script, inputs.get("stdin"))
        return verb, {**inputs, "stdout": stdout, "stderr": stderr}

    def _copy(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        status, before = self._previous(COPY, name, inputs)
        if status == "same":
            return "same", before
        source = inputs["source"]
        if not isinstance(source, pulumi.StringAsset):
            raise ValueError(f"only text assets are supported, got {type(source).__name__}")
        copy_text(name, Connection.from_inputs(inputs["connection"]), source.text, str(inputs["remotePath"]))
        # pulumi-command updates a CopyToRemote in place (only `triggers` replace it): an upload either way.
        return ("created" if status == "new" else "updated"), inputs

    def _image(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        tag = inputs["tags"][0]
        context = self.project_dir / inputs["context"]["location"]
        dockerfile = self.project_dir / inputs["dockerfile"]["location"]
        argv = ["docker", "build", "--network", "host", "--force-rm", "-q", "-f", str(dockerfile), "-t", tag]
        for key, value in sorted((inputs.get("buildArgs") or {}).items()):
            argv += ["--build-arg", f"{key}={value}"]
        platforms = [p for p in inputs.get("platforms") or [] if p]
        if platforms:
            argv += ["--platform", platforms[0]]
        before = self.state.get(IMAGE, name)
        done = subprocess.run(
            [*argv, str(context)], capture_output=True, text=True, env={**self.docker_env, "DOCKER_BUILDKIT": "0"}
        )
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-30:])
            raise ValueError(f"docker build of {inputs['dockerfile']['location']} failed:\n{tail}")
        image_id = done.stdout.strip().splitlines()[-1]
        verb = "same" if before is not None and before.outputs.get("digest") == image_id else "built"
        # The registry would give `tag@sha256:<digest>`; an image built in place has only its ID, which
        # pins it just as well: a rebuilt image changes every compose file that runs it, on every host.
        return verb, {**inputs, "digest": image_id, "ref": image_id}

    def _tls(self, type_: str, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        status, before = self._previous(type_, name, inputs)
        renew = status == "same" and type_ in local_tls.CERTIFICATES and local_tls.due_for_renewal(before, inputs)
        if status == "same" and not renew:
            verb, outputs = "same", before
        else:
            verb, outputs = ("created" if status == "new" else "replaced"), local_tls.make(type_, inputs)
        if type_ == local_tls.PRIVATE_KEY:
            self.recording.generated_secrets.add(outputs["privateKeyPem"])
        return verb, outputs

    def _password(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        status, before = self._previous(PASSWORD, name, inputs)
        if status == "same":
            self.recording.generated_secrets.add(before["result"])
            return "same", before
        alphabet = string.ascii_letters + string.digits
        value = "".join(secrets.choice(alphabet) for _ in range(int(inputs.get("length", 32))))
        self.recording.generated_secrets.add(value)
        return "created", {**inputs, "result": value}


def unsecret(value: Any) -> Any:
    """Inputs as the provider receives them: secret markers removed at every depth."""
    if is_secret(value):
        return unsecret(unwrap_secret(value))
    if isinstance(value, dict):
        return {k: unsecret(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unsecret(v) for v in value]
    return value


def status_new(state: State, type_: str, name: str) -> bool:
    return state.get(type_, name) is None


def apply(
    stack: str,
    config: dict[str, str],
    secret_keys: list[str],
    state: State,
    *,
    docker_env: dict[str, str],
    project_dir: Path,
    log: Log = print,
) -> Recording:
    """`pulumi up`: run the program, acting on each resource; then destroy what it no longer declares."""
    from infra.program import main

    recording = Recording()
    providers = Providers(state, recording, docker_env, project_dir, log)
    monitor = RecordingMonitor(providers, recording)
    try:
        with pinned_run_stamp(datetime.now(UTC).isoformat()):  # this run's: the preflights run again
            pulumi_sdk.run_program(
                main, providers, monitor, project=PROJECT, stack=stack, config=config, secret_keys=secret_keys
            )
    except Exception as err:  # the SDK re-raises a provider's failure wrapped in its own types
        providers.wait_idle()  # the SDK returns at the first failure; operations in other threads go on
        if not providers.failures:
            raise
        raise ApplyError("\n".join(providers.failures)) from err
    if providers.failures:
        raise ApplyError("\n".join(providers.failures))
    for gone in state.newest_first():
        if State.key(gone.type, gone.name) not in providers.seen:
            _delete(gone.type, gone.name, gone.inputs, log)
            state.remove(gone.type, gone.name)
    collect_stack_outputs(recording)
    return recording


def destroy(state: State, log: Log = print) -> None:
    """`pulumi destroy`: delete scripts in reverse creation order, then forget every resource."""
    errors = []
    for res in state.newest_first():
        try:
            _delete(res.type, res.name, res.inputs, log)
        except RemoteError as err:
            errors.append(str(err))
        state.remove(res.type, res.name)
    if errors:
        raise ApplyError("\n".join(errors))


def _delete(type_: str, name: str, inputs: dict[str, Any], log: Log) -> None:
    if type_ == COMMAND and inputs.get("delete"):
        run_script(name, Connection.from_inputs(inputs["connection"]), inputs["delete"])
        log(f"  - {type_} {name} (deleted)")
