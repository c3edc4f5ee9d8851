"""docker-compose.yml for one host, from resolved ServiceSpecs (images and files already text).

The file carries no secret: each secret is a `${VAR:?}` interpolation filled from the env file
that the platform delivers over SSH stdin. Every literal `$` is escaped for the same reason.
"""

from __future__ import annotations

import yaml

from infra.services import Exposure, ServiceSpec

PROJECT_NAME = "vllm-gb10"
ANY_ADDRESS = "0.0.0.0"


def _escape(value: str) -> str:
    return value.replace("$", "$$")


def _service(spec: ServiceSpec, bind_ip: str) -> dict:
    out: dict = {"image": spec.image, "container_name": f"{PROJECT_NAME}-{spec.name}"}
    if spec.entrypoint is not None:
        out["entrypoint"] = [_escape(a) for a in spec.entrypoint]
    if spec.command:
        out["command"] = [_escape(a) for a in spec.command]
    env = {k: _escape(str(v)) for k, v in sorted(spec.environment.items())}
    for secret in spec.secrets:
        env[secret.env] = f"${{{secret.env}:?{secret.env} missing from the secrets env file}}"
    if env:
        out["environment"] = env
    if spec.host_network:
        out["network_mode"] = "host"
    else:
        ports = [
            f"{ANY_ADDRESS if p.exposure is Exposure.PUBLIC else bind_ip}:{p.published}:{p.container}"
            for p in spec.ports
            if p.published is not None
        ]
        if ports:
            out["ports"] = ports
    mounts = [f"{v.name}:{v.mount_path}" for v in spec.volumes]
    mounts += [f"./{f.filename}:{f.mount_path}:ro" for f in spec.files]
    mounts += [f"{h.host_path}:{h.mount_path}:ro" for h in spec.host_paths]
    if mounts:
        out["volumes"] = mounts
    if spec.healthcheck is not None:
        hc = spec.healthcheck
        out["healthcheck"] = {
            "test": ["CMD", *(_escape(a) for a in hc.command)],
            "interval": f"{hc.interval_s}s",
            "timeout": f"{hc.timeout_s}s",
            "retries": hc.retries,
            "start_period": f"{hc.start_period_s}s",
        }
    if spec.depends_on:
        out["depends_on"] = {name: {"condition": "service_healthy"} for name in spec.depends_on}
    out["restart"] = "on-failure" if spec.one_shot else "unless-stopped"
    limits: dict = {"memory": spec.memory_limit}
    if spec.cpu_limit is not None:
        limits["cpus"] = str(spec.cpu_limit)
    resources: dict = {"limits": limits}
    if spec.gpu or spec.gpu_visible:  # docker does not hand a GPU out exclusively: both are a reservation
        resources["reservations"] = {"devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}
    out["deploy"] = {"resources": resources}
    if spec.shm_size:
        out["shm_size"] = spec.shm_size
    out["logging"] = {"driver": "json-file", "options": {"max-size": "50m", "max-file": "5"}}
    out["labels"] = {"dev.vllm-gb10.service": spec.name, "dev.vllm-gb10.host": spec.host}
    return out


def compose_document(specs: list[ServiceSpec], bind_ip: str) -> dict:
    """The compose document for the specs placed on one host."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate service names on one host: {names}")
    one_shots = {s.name for s in specs if s.one_shot}
    services = {}
    for spec in specs:
        missing = set(spec.depends_on) - set(names)
        if missing:
            raise ValueError(f"{spec.name} depends on services not on this host: {sorted(missing)}")
        service = _service(spec, bind_ip)
        for dep in spec.depends_on:
            if dep in one_shots:
                service["depends_on"][dep]["condition"] = "service_completed_successfully"
        services[spec.name] = service
    volumes = sorted({v.name for s in specs for v in s.volumes})
    doc: dict = {"name": PROJECT_NAME, "services": services}
    if volumes:
        doc["volumes"] = {name: {} for name in volumes}
    return doc


def render_compose(specs: list[ServiceSpec], bind_ip: str) -> str:
    doc = compose_document(specs, bind_ip)
    header = "# Rendered by infra/render/compose.py - do not edit by hand.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, width=120)
