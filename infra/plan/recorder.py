"""Run the Pulumi program under Pulumi's mock monitor and record what it declares.

The recording monitor sees every registration with its parent and with secret markers intact,
so the plan masks exactly the inputs that Pulumi would encrypt in state.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml

from infra.config import PROJECT
from infra.local import tls as local_tls
from infra.plan import pulumi_sdk
from infra.plan.context_hash import context_hash
from infra.plan.pulumi_sdk import is_secret, sync_await, unwrap_secret

MASK = "[secret]"


@dataclass
class RecordedResource:
    type: str
    name: str
    parent: str | None
    inputs: dict[str, Any]  # raw, secret markers intact
    depends_on: list[str] = field(default_factory=list)  # names of explicit dependencies (not in plan.json)
    custom_timeouts: dict[str, str] = field(default_factory=dict)  # create/update/delete as set (not in plan.json)


@dataclass
class Recording:
    resources: list[RecordedResource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)
    generated_secrets: set[str] = field(default_factory=set)


def mock_secret(name: str) -> str:
    return "mock" + hashlib.sha256(name.encode()).hexdigest()[:28]


def _pem(kind: str, name: str) -> str:
    return f"-----BEGIN {kind}-----\nplan:{name}\n-----END {kind}-----\n"


def plan_tls_outputs(typ: str, name: str) -> dict[str, str]:
    """Stand-ins for pulumi_tls's outputs in the offline plan: named after their resource, so two plans
    are identical (the local engine makes real ones, infra/local/tls.py)."""
    if typ == local_tls.PRIVATE_KEY:
        return {"privateKeyPem": _pem("PRIVATE KEY", name), "publicKeyPem": _pem("PUBLIC KEY", name)}
    if typ == local_tls.CERT_REQUEST:
        return {"certRequestPem": _pem("CERTIFICATE REQUEST", name)}
    return {"certPem": _pem("CERTIFICATE", name)}


IMAGE = "docker-build:index:Image"


def image_context_hash(inputs: dict[str, Any]) -> str:
    """The `contextHash` pulumi-docker-build would store for an Image with these inputs (paths are
    relative to the working directory, as the provider reads them)."""
    context = Path(inputs["context"]["location"])
    dockerfile = inputs.get("dockerfile", {}).get("location")
    return context_hash(context, Path(dockerfile) if dockerfile else context / "Dockerfile")


def image_digest(inputs: dict[str, Any]) -> str:
    """A stand-in for the pushed digest: a function of what goes into the image (context hash, build
    args, platforms, target), not of its tag, so it changes exactly when a rebuild would make new bytes.
    (On a cold cache unpinned dependencies would make new bytes too: images/ pins every one.)"""
    made_of = {k: inputs.get(k) for k in ("buildArgs", "platforms", "target")}
    made_of["contextHash"] = image_context_hash(inputs)
    return "sha256:" + hashlib.sha256(json.dumps(made_of, sort_keys=True).encode()).hexdigest()


class PlanMocks(pulumi.runtime.Mocks):
    """Deterministic provider outputs, so that two plans of the same code are identical."""

    def __init__(self, recording: Recording):
        self.recording = recording

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        outputs = dict(args.inputs)
        if args.typ == "random:index/randomPassword:RandomPassword":
            value = mock_secret(args.name)[: int(args.inputs.get("length", 32))]
            self.recording.generated_secrets.add(value)
            outputs["result"] = value
        elif args.typ == IMAGE:
            tag = args.inputs["tags"][0]
            digest = image_digest(args.inputs)
            outputs.update(contextHash=image_context_hash(args.inputs), digest=digest, ref=f"{tag}@{digest}")
        elif args.typ.startswith("command:remote:"):
            outputs.setdefault("stdout", "")
            outputs.setdefault("stderr", "")
        elif args.typ in local_tls.TYPES:
            outputs.update(plan_tls_outputs(args.typ, args.name))
            if args.typ == local_tls.PRIVATE_KEY:
                self.recording.generated_secrets.add(outputs["privateKeyPem"])
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], None]:
        return {}, None


class RecordingMonitor(pulumi_sdk.MockMonitor):
    def __init__(self, mocks: pulumi.runtime.Mocks, recording: Recording):
        super().__init__(mocks)
        self.recording = recording

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            top_level = not request.parent or "::pulumi:pulumi:Stack::" in request.parent
            parent = None if top_level else request.parent.split("::")[-1]
            inputs = pulumi_sdk.deserialize_properties(request.object)
            if request.type == IMAGE:
                # The provider's Diff compares this hash like an input (image.go: diff["contextHash"]).
                inputs["contextHash"] = image_context_hash(inputs)
            self.recording.resources.append(
                RecordedResource(
                    type=request.type,
                    name=request.name,
                    parent=parent,
                    inputs=inputs,
                    depends_on=sorted(urn.split("::")[-1] for urn in request.dependencies),
                    custom_timeouts={
                        k: v for k in ("create", "update", "delete") if (v := getattr(request.customTimeouts, k, ""))
                    },
                )
            )
        return response


def run_program(stack: str, config: dict[str, str], secret_keys: list[str]) -> Recording:
    """Run infra.program.main for `stack` with `config`; raises what the program raises."""
    from infra.components.host import PLAN_RUN_STAMP, pinned_run_stamp
    from infra.program import main  # the program imports pulumi resources; keep this import late

    recording = Recording()
    mocks = PlanMocks(recording)
    monitor = RecordingMonitor(mocks, recording)
    with pinned_run_stamp(PLAN_RUN_STAMP):  # a plan is a pure function of code and config
        pulumi_sdk.run_program(
            main, mocks, monitor, project=PROJECT, stack=stack, config=config, secret_keys=secret_keys
        )
    collect_stack_outputs(recording)
    return recording


def collect_stack_outputs(recording: Recording) -> None:
    """The program's exports, resolved, into `recording`; every plan test reads them."""
    for name, value in pulumi_sdk.root_outputs().items():
        output = pulumi.Output.from_input(value)
        recording.outputs[name] = sync_await(output.future())
        if sync_await(output.is_secret()):
            recording.secret_outputs.add(name)


def masked(value: Any, known_secrets: set[str], inside_secret: bool = False) -> Any:
    """Inputs as a plan shows them: secrets masked, assets by digest.

    Pulumi marks a whole object secret when any value in it is (an SSH connection is secret
    because of its key). Inside such an object the plan masks only the leaves that hold a secret
    value, so the host, user and pinned host key of a connection stay readable.
    """
    if is_secret(value):
        inner = unwrap_secret(value)
        return masked(inner, known_secrets, True) if isinstance(inner, dict | list) else MASK
    if isinstance(value, pulumi.StringAsset):
        if inside_secret:
            return MASK
        return {"asset": "text", "sha256": hashlib.sha256(value.text.encode()).hexdigest()}
    if isinstance(value, dict):
        return {k: masked(v, known_secrets, inside_secret) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [masked(v, known_secrets, inside_secret) for v in value]
    if inside_secret and isinstance(value, str) and any(s in value for s in known_secrets):
        return MASK
    return value


K8S_SECRET = "kubernetes:core/v1:Secret"
PUBLIC_SECRET_KEYS = {"tls.crt", "ca.crt"}  # the certificate halves of a kubernetes.io/tls Secret


def masked_inputs(res: RecordedResource, known_secrets: set[str]) -> dict[str, Any]:
    """A resource's inputs as the plan shows them: `masked`, and every value of a Kubernetes Secret
    but a certificate masked too, derived ones included (a password's SCRAM verifier is no known value)."""
    inputs: dict[str, Any] = masked(res.inputs, known_secrets)
    if res.type == K8S_SECRET:
        for key in ("stringData", "data"):
            if isinstance(inputs.get(key), dict):
                inputs[key] = {k: v if k in PUBLIC_SECRET_KEYS else MASK for k, v in inputs[key].items()}
    return inputs


def unmarked_secrets(value: Any, known_secrets: set[str], path: str = "") -> list[str]:
    """Paths of strings holding a known secret that no secret marker covers (a leak to state)."""
    if is_secret(value):
        return []
    if isinstance(value, pulumi.StringAsset):
        value = value.text
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in unmarked_secrets(v, known_secrets, f"{path}.{k}")]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in unmarked_secrets(v, known_secrets, f"{path}[{i}]")]
    if isinstance(value, str) and any(s in value for s in known_secrets):
        return [path.lstrip(".")]
    return []


K8S_PREFIX = "kubernetes:"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"


def _as_written(value: Any, known_secrets: set[str]) -> Any:
    """Integral numbers back to ints (the gRPC Struct carried them as doubles); known secrets masked."""
    if isinstance(value, dict):
        return {k: _as_written(v, known_secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_written(v, known_secrets) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and any(secret in value for secret in known_secrets):
        return MASK
    return value


MANIFEST_KEYS = {"apiVersion", "kind", "metadata", "spec", "data", "stringData", "type"}


def kubernetes_manifest(res: RecordedResource, known_secrets: set[str]) -> dict[str, Any]:
    """The object as `kubectl apply` would take it, secret values masked."""
    inputs = _as_written(masked_inputs(res, known_secrets), known_secrets)
    return {k: v for k, v in inputs.items() if k in MANIFEST_KEYS}


def generated_files(recording: Recording, known_secrets: set[str]) -> dict[str, str]:
    """host/filename -> text for every file the compose platform copies to a host; on kubernetes,
    k8s/<kind>-<name>.yaml for every object and k8s/helm-<name>.yaml for every Helm release."""
    files = {}
    for res in recording.resources:
        if res.type == HELM_RELEASE:
            release = _as_written(masked(res.inputs, known_secrets), known_secrets)
            keep = ("name", "chart", "version", "namespace", "repositoryOpts", "values")
            files[f"k8s/helm-{release['name']}.yaml"] = yaml.safe_dump(
                {k: release.get(k) for k in keep}, sort_keys=True
            )
            continue
        if res.type.startswith(K8S_PREFIX) and "apiVersion" in res.inputs:
            manifest = kubernetes_manifest(res, known_secrets)
            name = manifest["metadata"]["name"]
            files[f"k8s/{manifest['kind'].lower()}-{name}.yaml"] = yaml.safe_dump(manifest, sort_keys=True)
            continue
        if res.type != "command:remote:CopyToRemote":
            continue
        source = unwrap_secret(res.inputs["source"])
        if not isinstance(source, pulumi.StringAsset):
            continue
        # <remoteDir>/<host>/<file>: the host's compose project directory (infra.components.host)
        host, filename = str(res.inputs["remotePath"]).rsplit("/", 2)[-2:]
        files[f"{host}/{filename}"] = source.text
    return dict(sorted(files.items()))
