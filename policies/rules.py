"""The vllm-gb10 CrossGuard rules, as plain functions and policy objects.

This module never constructs a `PolicyPack` (its constructor serves forever): `policies/__main__.py`
does that for `pulumi preview --policy-pack policies`, and `python -m infra.plan` and the tests
call the policies here directly.

Rules read what actually reaches the hosts or the cluster: the docker-compose.yml that a
`command:remote:CopyToRemote` ships and Kubernetes workload specs, both as Workloads (parsed in
policies/workloads.py), image builds and SSH connections. What a compose data service exposes is the
address it listens on, judged against the host's cluster address.
Policies see secret values unwrapped, so "no plain-text secret" is judged on those artefacts: a
secret-named variable must be filled from the secrets env file (`${VAR:?}`) or a Kubernetes
Secret, never written as a literal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from policies.workloads import (
    DATA_SERVICE,
    RAY_CLUSTER,
    Workload,
    compose_document,
    compose_workloads,
    dig,
    pod_specs,
    pod_workloads,
    workloads,
)

# An access key ID is an identifier, not a secret (AWS and MinIO treat it so).
SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|ACCESS_?KEY(?!_?ID)|PRIVATE_?KEY|CREDENTIAL)", re.I)
# Names that hold an access key ID under another name: RustFS's root access key is the S3 user name
# (its secret is RUSTFS_SECRET_KEY).
ACCESS_KEY_ID_NAMES = frozenset({"RUSTFS_ACCESS_KEY"})
INTERPOLATION = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:?[?-][^}]*)?\}$")
URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]*:[^/@\s$]+@")
# The S3 servers the stacks have run: RustFS now, MinIO before (its images left Docker Hub in 2026).
S3_SERVER_IMAGE = re.compile(r"(^|/)(rustfs/rustfs|minio/minio)[:@]")
# Secrets by their shape, wherever they appear on a command line (raw vLLM args, scripts).
SECRET_LITERALS = (
    (re.compile(r"(?<![\w-])--api-key[= ](?![\"']?\$)\S"), "--api-key is given a literal key"),
    (re.compile(r"\bhf_[A-Za-z0-9]{20,}"), "a Hugging Face token"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), "an API key (sk-…)"),
)
VLLM_SERVER = re.compile(r"vllm\.entrypoints\.openai\.api_server|\bvllm serve\b")
ANY_ADDRESS = {"", "0.0.0.0", "::", "[::]", "*"}


def _config(args: Any, key: str) -> Any:
    """A policy's config value. The engine fills in each key's schema default (default_config()), so
    the defaults live in the schemas below and nowhere else."""
    config = args.get_config()
    if key not in config:
        raise KeyError(f"policy config has no {key!r}; its schema default should have been applied")
    return config[key]


# --- mandatory -------------------------------------------------------------------------------------


def image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    return ":" in last and not last.endswith(":latest")


def validate_images_pinned(args: ResourceValidationArgs, report: ReportViolation) -> None:
    images = [(w.name, w.image) for w in workloads(args.resource_type, args.props, args.name)]
    if args.resource_type == "docker-build:index:Image":
        images += [("build", str(tag)) for tag in args.props.get("tags") or []]
        if not args.props.get("tags"):
            report("image build has no tag: push a versioned tag, never an untagged or latest image", None)
    for where, image in images:
        if not image_is_pinned(image):
            report(f"{where}: image {image!r} is not pinned (use a version tag or a digest, never latest)", None)


def validate_no_plaintext_secrets(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for w in workloads(args.resource_type, args.props, args.name):
        for key, value in w.env.items():
            if value is None or value == "" or INTERPOLATION.match(value):
                continue
            named_secret = SECRET_NAME.search(key) and key not in ACCESS_KEY_ID_NAMES
            if named_secret or URL_WITH_PASSWORD.search(value):
                report(
                    f"{w.name}: environment {key} holds a literal secret; take it from the secrets file or a Secret",
                    None,
                )
        if re.search(r"--requirepass\s+(?![\"']?\$)\S", w.command_text):
            report(f"{w.name}: --requirepass is given a literal password", None)
        for pattern, what in SECRET_LITERALS:
            if pattern.search(w.command_text):
                report(
                    f"{w.name}: its command line holds {what}; pass secrets through the secrets file or a Secret", None
                )
    if args.resource_type == "kubernetes:core/v1:ConfigMap":
        for key in args.props.get("data") or {}:
            if SECRET_NAME.search(key):
                report(f"ConfigMap key {key} looks like a secret; use a Secret", None)
    if args.resource_type == "docker-build:index:Image":
        for key in args.props.get("buildArgs") or {}:
            if SECRET_NAME.search(key):
                report(f"build arg {key} looks like a secret; build args stay in the image history (use secrets)", None)


def validate_ray_token_auth(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """A Ray cluster without token auth runs code for anyone who reaches its dashboard port."""
    if args.resource_type == RAY_CLUSTER:
        mode = dig(args.props, ("spec", "authOptions", "mode"))
        if mode != "token":
            report(f"RayCluster {args.name}: spec.authOptions.mode is {mode!r}, not 'token' (KubeRay 1.5.1+)", None)
        return
    for w in workloads(args.resource_type, args.props, args.name):
        if not re.search(r"\bray start\b", w.command_text):
            continue
        if w.env.get("RAY_AUTH_MODE") != "token":
            report(f"{w.name}: a Ray node without RAY_AUTH_MODE=token runs code for anyone on the network", None)
        token = w.env.get("RAY_AUTH_TOKEN", "")
        if not token or not INTERPOLATION.match(token):
            report(f"{w.name}: RAY_AUTH_TOKEN must come from the secrets file (${{RAY_AUTH_TOKEN:?…}})", None)


def validate_data_services_private(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if _config(args, "allowPublicDataServices"):
        return
    for w in workloads(args.resource_type, args.props, args.name):
        if not w.is_data_service:
            continue
        for ip, port in w.published:
            if ip in ANY_ADDRESS:
                report(f"{w.name}: port {port} is published on every interface; bind it to the cluster address", None)
        if re.search(r"--dashboard-host[= ](0\.0\.0\.0|::)\b", w.command_text):
            report(f"{w.name}: the Ray dashboard listens on every interface", None)
        elif w.host_network and not w.one_shot:
            _check_listen_addresses(w, report)
    if args.resource_type == "kubernetes:core/v1:Service":
        kind = dig(args.props, ("spec", "type")) or "ClusterIP"
        name = str(dig(args.props, ("metadata", "name")) or args.name)
        if kind in {"LoadBalancer", "NodePort"} and DATA_SERVICE.search(name):
            report(f"Service {name} of a data service is of type {kind}; keep it ClusterIP", None)


def _check_listen_addresses(w: Workload, report: ReportViolation) -> None:
    """On the host network a data service is as private as the addresses it listens on."""
    addresses = w.listen_addresses
    if not addresses:
        report(f"{w.name}: on the host network with no listen address, it listens on every interface", None)
    for address in addresses:
        if address in ANY_ADDRESS:
            report(f"{w.name}: listens on every interface ({address or 'any'}); bind it to the cluster address", None)
        elif w.cluster_address is not None and address != w.cluster_address:
            report(f"{w.name}: listens on {address}, not the host's cluster address {w.cluster_address}", None)


def validate_vllm_memory_utilization(args: ResourceValidationArgs, report: ReportViolation) -> None:
    ceiling = float(_config(args, "maxGpuMemoryUtilization"))
    for w in workloads(args.resource_type, args.props, args.name):
        if not VLLM_SERVER.search(w.command_text):
            continue
        found = re.search(r"--gpu-memory-utilization[= ]([0-9.]+)", w.command_text)
        if found is None:
            report(
                f"{w.name}: --gpu-memory-utilization not set; vLLM's default (0.92) runs out of memory on GB10", None
            )
        elif float(found.group(1)) > ceiling:
            report(
                f"{w.name}: --gpu-memory-utilization {found.group(1)} is above {ceiling} (GB10 unified memory)", None
            )
        if "--swap-space" in w.command_text:
            report(f"{w.name}: --swap-space does nothing in vLLM's V1 engine; size the KV cache instead", None)


def validate_ssh_host_key_pinned(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not args.resource_type.startswith("command:remote:"):
        return
    connection = args.props.get("connection") or {}
    if not connection.get("hostKey"):
        report(f"SSH connection to {connection.get('host', '?')} does not pin a host key (hostKey)", None)


def validate_memory_limits(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for w in workloads(args.resource_type, args.props, args.name):
        if not w.memory_limit:
            report(f"{w.name}: no memory limit", None)


def validate_redis_persistence(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for w in workloads(args.resource_type, args.props, args.name):
        # redis-server takes the last of a repeated option: `--appendonly yes ... --appendonly no` is no AOF.
        settings = re.findall(r"--appendonly\s+(\S+)", w.command_text)
        if re.search(r"(^|/)redis[:@]", w.image) and (not settings or settings[-1].strip("'\"") != "yes"):
            report(f"{w.name}: Redis runs without AOF persistence (--appendonly yes); queued jobs would be lost", None)


def _last_option(command: str, option: str) -> str | None:
    """The value redis-server takes for `--option` (the last one given), unquoted; None when absent."""
    found = re.findall(rf"--{re.escape(option)}\s+(\S+)", command)
    return found[-1].strip("'\"").lower() if found else None


def validate_redis_hardened(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for w in workloads(args.resource_type, args.props, args.name):
        if not re.search(r"(^|/)redis[:@]", w.image):
            continue
        if _last_option(w.command_text, "sanitize-dump-payload") != "yes":
            report(
                f"{w.name}: Redis restores DUMP payloads unchecked (--sanitize-dump-payload yes); a crafted one "
                "crashes it, again after each restart",
                None,
            )
        maxmemory = _last_option(w.command_text, "maxmemory")
        if maxmemory is None or re.fullmatch(r"0+[a-z]*", maxmemory):
            report(f"{w.name}: Redis has no --maxmemory; at the rate limit it runs out of memory", None)
        if _last_option(w.command_text, "maxmemory-policy") != "noeviction":
            report(
                f"{w.name}: Redis may evict keys when full (--maxmemory-policy noeviction); evicted keys are lost jobs",
                None,
            )


def validate_gpu_on_gb10(args: StackValidationArgs, report: ReportViolation) -> None:
    pattern = str(_config(args, "gpuPattern"))
    label_key = str(_config(args, "nodeLabelKey"))
    label_values = set(_config(args, "nodeLabelValues"))
    gb10_hosts = {
        str((r.props.get("connection") or {}).get("host"))
        for r in args.resources
        if r.resource_type == "command:remote:Command"
        and "REQUIRE_GPU=1" in str(r.props.get("create", ""))
        and f"GPU_PATTERN={pattern}" in str(r.props.get("create", ""))
    }
    for r in args.resources:
        document = compose_document(r.resource_type, r.props)
        if document is not None:
            host = str((r.props.get("connection") or {}).get("host"))
            gpu = [w.name for w in compose_workloads(document) if w.gpu]
            if gpu and host not in gb10_hosts:
                report(f"GPU services {gpu} on {host}, which no preflight checks for a {pattern} GPU", r.urn)
        for where, spec in pod_specs(r.resource_type, r.props, r.name):
            if any(w.gpu for w in pod_workloads(r.resource_type, where, spec)):
                if not _pinned_to_node(spec, label_key, label_values):
                    report(
                        f"{where}: GPU pod not pinned to the GB10 node ({label_key} in {sorted(label_values)})", r.urn
                    )


def _pinned_to_node(spec: dict[str, Any], key: str, values: set[str]) -> bool:
    if str((spec.get("nodeSelector") or {}).get(key)) in values:
        return True
    terms = dig(
        spec, ("affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution", "nodeSelectorTerms")
    )
    for term in terms or []:
        for expression in term.get("matchExpressions") or []:
            if expression.get("key") == key and expression.get("operator") == "In":
                if set(expression.get("values") or []) & values:
                    return True
    return False


# --- advisory --------------------------------------------------------------------------------------


def _flag(command: list[str], flag: str) -> str | None:
    """The value of `flag` in an argv (`--flag value` or `--flag=value`)."""
    for i, part in enumerate(command):
        if part == flag and i + 1 < len(command):
            return command[i + 1]
        if part.startswith(flag + "="):
            return part.split("=", 1)[1]
    return None


def validate_result_lifecycle(args: StackValidationArgs, report: ReportViolation) -> None:
    """Across the stack: the bucket set-up may be another object (a Kubernetes Job) than the S3 server.

    Judged on what the set-up does, not on a string: every bucket the batch services write results to
    (their BATCH_S3_ENDPOINT_URL and BATCH_S3_BUCKET) must be the --endpoint and --bucket of a set-up
    (`python -m runtime.batch.bucket`, which puts the rule and reads it back) whose --expire-days is
    within the limit. A stack that still uses MinIO's `mc ilm rule add --expire-days N` is judged by N.
    """
    limit = int(_config(args, "maxDays"))
    services = [w for r in args.resources for w in workloads(r.resource_type, r.props, r.name)]
    servers = [w for w in services if S3_SERVER_IMAGE.search(w.image)]
    if not servers:
        return
    setups = [w for w in services if re.search(r"-m runtime\.batch\.bucket\b", w.command_text)]
    if not setups:
        rules = [int(m.group(1)) for w in services for m in re.finditer(r"--expire-days[= ](\d+)", w.command_text)]
        if not rules:
            report(f"S3 server ({servers[0].name}) has no lifecycle rule: batch results never expire", None)
        elif max(rules) > limit:
            report(f"S3 results expire after {max(rules)} days, more than {limit}", None)
        return
    expiring = {}
    for setup in setups:
        days = _flag(setup.command, "--expire-days")
        target = (_flag(setup.command, "--endpoint"), _flag(setup.command, "--bucket"))
        if days is None or not days.isdigit():
            report(
                f"{setup.name}: the bucket set-up puts no lifecycle rule (--expire-days): batch results never expire",
                None,
            )
        elif int(days) > limit:
            report(f"{setup.name}: S3 results expire after {days} days, more than {limit}", None)
        else:
            expiring[target] = int(days)
    written = {
        (w.env.get("BATCH_S3_ENDPOINT_URL"), w.env["BATCH_S3_BUCKET"]) for w in services if w.env.get("BATCH_S3_BUCKET")
    }
    for endpoint, bucket in sorted(written, key=str):
        if (endpoint, bucket) not in expiring:
            report(
                f"batch results go to bucket {bucket!r} at {endpoint}, which no set-up gives a lifecycle rule "
                f"(set-ups: {', '.join(f'{b!r} at {e}' for e, b in expiring) or 'none that sets one'})",
                None,
            )


def validate_s3_scoped_credentials(args: StackValidationArgs, report: ReportViolation) -> None:
    """Across the stack: no batch service (a workload with BATCH_S3_BUCKET) signs as the S3 server's root
    user (its RUSTFS_ACCESS_KEY, or MinIO's MINIO_ROOT_USER), for its data or its backups, and each
    scoped user it names is one a bucket set-up of that endpoint and bucket makes (--batch-user or
    --backup-user of `python -m runtime.batch.bucket`, runtime.batch.s3_users)."""
    services = [w for r in args.resources for w in workloads(r.resource_type, r.props, r.name)]
    roots = {
        key
        for w in services
        if S3_SERVER_IMAGE.search(w.image)
        for key in (w.env.get("RUSTFS_ACCESS_KEY"), w.env.get("MINIO_ROOT_USER"))
        if key
    }
    made: dict[tuple[str | None, str | None], set[str]] = {}
    for setup in services:
        if re.search(r"-m runtime\.batch\.bucket\b", setup.command_text):
            users = {_flag(setup.command, "--batch-user"), _flag(setup.command, "--backup-user")} - {None}
            target = (_flag(setup.command, "--endpoint"), _flag(setup.command, "--bucket"))
            made.setdefault(target, set()).update(u for u in users if u)
    for w in services:
        bucket = w.env.get("BATCH_S3_BUCKET")
        if not bucket:
            continue
        target = (w.env.get("BATCH_S3_ENDPOINT_URL"), bucket)
        for variable in ("BATCH_S3_ACCESS_KEY_ID", "BATCH_BACKUP_S3_ACCESS_KEY_ID"):
            key = w.env.get(variable)
            if variable == "BATCH_S3_ACCESS_KEY_ID" and not key:
                report(f"{w.name}: no {variable}: it cannot be told apart from the S3 server's root user", None)
            elif key in roots:
                report(f"{w.name}: {variable} is the S3 server's root user ({key}), not a bucket-scoped one", None)
            elif key and key not in made.get(target, set()):
                report(
                    f"{w.name}: {variable} {key!r} is no user a bucket set-up of {bucket!r} at {target[0]} makes "
                    f"(--batch-user/--backup-user; made: {', '.join(sorted(made.get(target, set()))) or 'none'})",
                    None,
                )


INGRESS = "kubernetes:networking.k8s.io/v1:Ingress"
HAPROXY_CFG = "haproxy.cfg"


def _haproxy_binds(text: str) -> Iterator[tuple[str, str]]:
    """(frontend, bind line) of each `bind` in a haproxy.cfg."""
    frontend = ""
    for line in text.splitlines():
        words = line.split()
        if words[:1] in (["frontend"], ["listen"], ["backend"], ["defaults"], ["global"]):
            frontend = words[1] if len(words) > 1 and words[0] in ("frontend", "listen") else ""
        elif words[:1] == ["bind"] and frontend:
            yield frontend, line.strip()


def validate_public_endpoints_tls(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """The load balancer, batch API and Grafana speak TLS (compose: each serves it; kubernetes: the
    Ingress, with a certificate for every host it routes). HAProxy's `stats` frontend is internal."""
    if args.resource_type == INGRESS:
        spec = args.props.get("spec") or {}
        covered = {h for entry in spec.get("tls") or [] if entry.get("secretName") for h in entry.get("hosts") or []}
        for rule in spec.get("rules") or []:
            if rule.get("host") not in covered:
                report(f"Ingress {args.name}: host {rule.get('host')!r} is served without TLS (spec.tls)", None)
        return
    if args.resource_type == "command:remote:CopyToRemote" and str(args.props.get("remotePath", "")).endswith(
        HAPROXY_CFG
    ):
        text = getattr(args.props.get("source"), "text", "") or ""
        for frontend, bind in _haproxy_binds(text):
            if frontend != "stats" and not re.search(r"\sssl\s.*\bcrt\s", f" {bind} "):
                report(f"{args.props['remotePath']}: frontend {frontend} `{bind}` serves clients without TLS", None)
        return
    for w in workloads(args.resource_type, args.props, args.name):
        if compose_document(args.resource_type, args.props) is None:
            continue  # kubernetes pods speak HTTP behind the Ingress, which the rule checks
        if "runtime.batch.api" in w.command_text and "TLS_CERT_PEM_B64" not in w.env:
            report(f"{w.name}: the batch API gets no certificate (TLS_CERT_PEM_B64) and serves plain HTTP", None)
        if re.search(r"(^|/)grafana[:@]", w.image) and w.env.get("GF_SERVER_PROTOCOL") != "https":
            report(f"{w.name}: Grafana serves plain HTTP (GF_SERVER_PROTOCOL is not https)", None)


# NCCL over RDMA (ncclIbHca) is the one reason a container gets more than Docker's default: the RDMA
# devices and IPC_LOCK to pin its buffers (vLLM docs serving/parallelism_scaling.md, GPUDirect RDMA).
RDMA_DEVICES = "/dev/infiniband"
RDMA_CAPABILITY = "IPC_LOCK"


def validate_least_privilege(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for w in workloads(args.resource_type, args.props, args.name):
        if w.privileged:
            report(f"{w.name}: runs privileged (every device and capability of the host); map what it needs", None)
        for device in w.devices:
            if device != RDMA_DEVICES and not device.startswith(RDMA_DEVICES + "/"):
                report(f"{w.name}: maps host device {device}; only the RDMA devices ({RDMA_DEVICES}) are allowed", None)
        for capability in w.capabilities:
            name = capability.upper().removeprefix("CAP_")
            if name != RDMA_CAPABILITY:
                report(f"{w.name}: adds capability {capability}; only {RDMA_CAPABILITY}, with the RDMA devices", None)
            elif not w.devices:
                report(f"{w.name}: adds {RDMA_CAPABILITY} without the RDMA devices it is for ({RDMA_DEVICES})", None)


RUNTIME_SOCKET = re.compile(r"(docker|containerd|crio|podman)\.sock\b")
MEMGUARD = "runtime.memguard"
DATA_STORE_IMAGE = re.compile(r"(^|/)(redis|postgres|pgvector|minio|rustfs)[:@/]")


def validate_docker_socket(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """A container runtime's socket is root on the host. Only the memory guard may have it (compose), and
    only confined: every capability dropped, no new privileges, a read-only filesystem; it may stop only
    services of its own compose project, none of them a data store, and only services that exist there."""
    document = compose_document(args.resource_type, args.props)
    found = workloads(args.resource_type, args.props, args.name)
    for w in found:
        sockets = [target for source, target in w.mounts if RUNTIME_SOCKET.search(source + " " + target)]
        if not sockets:
            continue
        if document is None:
            report(f"{w.name}: mounts the container runtime's socket ({sockets[0]}), which is root on the node", None)
            continue
        if MEMGUARD not in w.command_text:
            report(f"{w.name}: mounts the Docker socket; only the memory guard ({MEMGUARD}) may", None)
            continue
        confined = {
            "every capability dropped (cap_drop: [ALL])": "ALL" in [c.upper() for c in w.cap_drop],
            "no new privileges": w.no_new_privileges,
            "a read-only filesystem": w.read_only,
        }
        for what, holds in confined.items():
            if not holds:
                report(f"{w.name}: has the Docker socket without {what}", None)
        project = w.env.get("MEMGUARD_COMPOSE_PROJECT") or ""
        if project != document.get("name"):
            report(f"{w.name}: sheds in compose project {project!r}, not its own ({document.get('name')!r})", None)
        by_name = {other.name: other for other in found}
        for service in _json_list(w.env.get("MEMGUARD_SHED_SERVICES")):
            other = by_name.get(service)
            if other is None:
                report(f"{w.name}: MEMGUARD_SHED_SERVICES names {service!r}, which is no service of this host", None)
            elif DATA_STORE_IMAGE.search(other.image) or MEMGUARD in other.command_text:
                report(f"{w.name}: MEMGUARD_SHED_SERVICES names {service!r}, a data store or the guard itself", None)


def _json_list(value: str | None) -> list[str]:
    try:
        parsed = json.loads(value or "[]")
    except json.JSONDecodeError:
        return ["<not a JSON list>"]
    return [str(v) for v in parsed] if isinstance(parsed, list) else ["<not a JSON list>"]


def _haproxy_configs(args: ResourceValidationArgs) -> Iterator[tuple[str, str]]:
    """(where, text) of each haproxy.cfg a resource ships: compose's copy, kubernetes' ConfigMap."""
    if args.resource_type == "command:remote:CopyToRemote":
        where = str(args.props.get("remotePath", ""))
        if where.endswith(HAPROXY_CFG):
            yield where, getattr(args.props.get("source"), "text", "") or ""
    elif args.resource_type == "kubernetes:core/v1:ConfigMap":
        for key, text in (args.props.get("data") or {}).items():
            if key.endswith(HAPROXY_CFG) and isinstance(text, str):
                yield f"ConfigMap {args.name} {key}", text


# TLS 1.2 suites the load balancer may offer: ECDHE key exchange with an AEAD cipher.
ECDHE_AEAD = re.compile(r"^ECDHE-(ECDSA|RSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)$")


def validate_lb_guards(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """What keeps one tenant of the load balancer from harming the others (issue 32): no HTTP status
    marks a server down (`observe layer7` lets a client's request do it), only the OpenAI routes reach
    vLLM (its key guards none of its other paths), no body is buffered before the key is checked
    (`option http-buffer-request` waits for it before any rule), and TLS 1.2 offers ECDHE AEAD suites only."""
    for where, text in _haproxy_configs(args):
        if re.search(r"^\s*(default-)?server\b.*\bobserve\s+layer7", text, re.M):
            report(
                f"{where}: `observe layer7` lets a client's request that vLLM answers with 5xx mark a server down", None
            )
        if re.search(r"^\s*option\s+http-buffer-request", text, re.M):
            report(f"{where}: `option http-buffer-request` buffers a body before the API key is checked", None)
        if not re.search(r"^\s*http-request return status 404\b.*\bif !openai_post !openai_get\s*$", text, re.M):
            report(f"{where}: no route allow-list: every path a client sends reaches vLLM with vLLM's key", None)
        if any(frontend != "stats" and re.search(r"\sssl\s", f" {bind} ") for frontend, bind in _haproxy_binds(text)):
            ciphers = re.search(r"^\s*ssl-default-bind-ciphers\s+(\S+)", text, re.M)
            weak = [c for c in ciphers.group(1).split(":") if not ECDHE_AEAD.match(c)] if ciphers else ["the default"]
            if weak:
                report(f"{where}: TLS 1.2 offers suites other than ECDHE with AEAD: {', '.join(weak)}", None)


def validate_health_checks(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for w in workloads(args.resource_type, args.props, args.name):
        if not w.one_shot and not w.health_check:
            report(f"{w.name}: no health check", None)


def validate_restart_policies(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for w in workloads(args.resource_type, args.props, args.name):
        if not w.one_shot and w.restart not in {"always", "unless-stopped", "Always"}:
            report(f"{w.name}: restart policy {w.restart!r} does not bring a crashed service back", None)


MANDATORY = EnforcementLevel.MANDATORY
ADVISORY = EnforcementLevel.ADVISORY

POLICIES: list[Policy] = [
    ResourceValidationPolicy(
        "images-pinned", "Images carry a version tag or digest, never latest.", validate_images_pinned, MANDATORY
    ),
    ResourceValidationPolicy(
        "no-plaintext-secrets",
        "HF tokens, passwords, access and API keys reach services only as secrets.",
        validate_no_plaintext_secrets,
        MANDATORY,
    ),
    ResourceValidationPolicy(
        "data-services-private",
        "Redis, Postgres, the S3 server and Ray ports stay inside the host or cluster unless config allows.",
        validate_data_services_private,
        MANDATORY,
        PolicyConfigSchema({"allowPublicDataServices": {"type": "boolean", "default": False}}),
    ),
    ResourceValidationPolicy(
        "public-endpoints-tls",
        "The load balancer, batch API and Grafana serve TLS (compose: themselves; kubernetes: the Ingress).",
        validate_public_endpoints_tls,
        MANDATORY,
    ),
    ResourceValidationPolicy(
        "lb-guards",
        "The load balancer: only the OpenAI routes reach vLLM, no HTTP status marks a server down, no body is "
        "buffered before the key is checked, TLS 1.2 with ECDHE AEAD suites only.",
        validate_lb_guards,
        MANDATORY,
    ),
    ResourceValidationPolicy(
        "ray-token-auth",
        "Every Ray node and RayCluster requires Ray's token (RAY_AUTH_MODE=token, the token a secret).",
        validate_ray_token_auth,
        MANDATORY,
    ),
    StackValidationPolicy(
        "gpu-on-gb10",
        "GPU workloads run only on hosts or nodes checked to be GB10.",
        validate_gpu_on_gb10,
        MANDATORY,
        PolicyConfigSchema(
            {
                "gpuPattern": {"type": "string", "default": "GB10"},
                "nodeLabelKey": {"type": "string", "default": "kubernetes.io/hostname"},
                "nodeLabelValues": {"type": "array", "items": {"type": "string"}, "default": ["hw-brain-01"]},
            }
        ),
    ),
    ResourceValidationPolicy(
        "vllm-memory-utilization",
        "vLLM gpu_memory_utilization at most 0.85 on GB10 unified memory; no reliance on swap_space.",
        validate_vllm_memory_utilization,
        MANDATORY,
        PolicyConfigSchema({"maxGpuMemoryUtilization": {"type": "number", "default": 0.85, "maximum": 1}}),
    ),
    ResourceValidationPolicy(
        "ssh-host-key-pinned", "SSH connections pin the host key.", validate_ssh_host_key_pinned, MANDATORY
    ),
    ResourceValidationPolicy("memory-limits", "Every container has a memory limit.", validate_memory_limits, MANDATORY),
    ResourceValidationPolicy(
        "least-privilege",
        "No container runs privileged; only NCCL's RDMA devices and IPC_LOCK (ncclIbHca) are added to any.",
        validate_least_privilege,
        MANDATORY,
    ),
    ResourceValidationPolicy(
        "docker-socket",
        "Only the memory guard has the Docker socket (compose), confined, shedding only its own project's "
        "services that exist and are no data store; no pod mounts a container runtime's socket.",
        validate_docker_socket,
        MANDATORY,
    ),
    ResourceValidationPolicy(
        "redis-persistence", "Redis persists the queue (AOF).", validate_redis_persistence, MANDATORY
    ),
    ResourceValidationPolicy(
        "redis-hardened",
        "Redis checks restored payloads in full and has a memory ceiling that refuses writes, never evicts.",
        validate_redis_hardened,
        MANDATORY,
    ),
    StackValidationPolicy(
        "result-lifecycle",
        "Batch results in the S3 server expire within the retention period.",
        validate_result_lifecycle,
        ADVISORY,
        PolicyConfigSchema({"maxDays": {"type": "integer", "default": 7, "minimum": 1}}),
    ),
    StackValidationPolicy(
        "s3-scoped-credentials",
        "The batch services use bucket-scoped S3 users that the bucket set-up makes, never the S3 root user.",
        validate_s3_scoped_credentials,
        MANDATORY,
    ),
    ResourceValidationPolicy(
        "health-checks", "Every long-running service has a health check.", validate_health_checks, ADVISORY
    ),
    ResourceValidationPolicy(
        "restart-policies", "Every long-running service restarts after a crash.", validate_restart_policies, ADVISORY
    ),
]


def default_config() -> dict[str, dict[str, Any]]:
    """Each policy's config with its schema defaults (what the engine passes when none is set)."""
    config: dict[str, dict[str, Any]] = {}
    for policy in POLICIES:
        schema = policy.config_schema.properties if policy.config_schema else {}
        config[policy.name] = {key: spec["default"] for key, spec in schema.items() if "default" in spec}
    return config
