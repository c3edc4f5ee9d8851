"""The kubernetes platform: every ServiceSpec as objects in one namespace, and Ray via KubeRay.

A spec becomes a Deployment (StatefulSet when stateful, Job when one-shot), a ClusterIP Service
named like the spec, a Secret for its secret variables, a ConfigMap for its files and PVCs for
its volumes. GPU specs request `nvidia.com/gpu` and are pinned to the GB10 node by its label.
Public HTTP ports get an Ingress rule `<name>.<ingressDomain>`; nothing gets a NodePort or
LoadBalancer. This stack pulls images from the registry and builds nothing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, overload

import pulumi
import pulumi_kubernetes as k8s

from infra.config import PROJECT, ConfigError, KubernetesSettings, RaySettings, stack_file
from infra.platforms import Rollout
from infra.render import kubernetes as render
from infra.services import Exposure, ServiceSpec, secret_output

KUBERAY_CHART = "kuberay-operator"
KUBERAY_REPO = "https://ray-project.github.io/kuberay-helm/"
RAY_CLUSTER_NAME = "ray"
RAY_AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"  # the variable infra.components.ray_cluster delivers the token as
RAY_AUTH_SECRET = "ray-auth-token"  # KubeRay authOptions.secretName: the token under the key auth_token
# The Ray in our images (requirements-offload.txt); KubeRay reads it from `rayVersion`.
RAY_VERSION = "2.60.0"
# Ray's dashboard agent in each Ray pod answers GET /api/healthz for its own raylet (and, on the
# head, its own GCS) since Ray 2.53, without auth. KubeRay probes the same endpoint for such versions.
RAY_AGENT_PORT = 52365
RAY_HEALTH_PATH = "/api/healthz"
# Our images, by repository name, and the config key holding the digest each one is pulled by.
PINNED_IMAGES = {"vllm-gb10": "vllmImageDigest", "vllm-gb10-runtime": "runtimeImageDigest"}
# pulumi-kubernetes waits 10 minutes by default for a Deployment or StatefulSet to become ready, then
# fails the `up`. The vLLM image is ~20 GB: its first pull on a node (and a new digest's top layers) can
# take longer than that on an ordinary link, so workloads that run it get an hour.
LARGE_IMAGES = frozenset({"vllm-gb10"})
FIRST_PULL_TIMEOUTS = pulumi.CustomTimeouts(create="60m", update="60m")
# KubeRay (v1.7.0, raycluster_controller.go shouldRecreatePodsForUpgrade) recreates a RayCluster's pods
# when its spec changes only with upgradeStrategy.type Recreate (the CRD allows Recreate and None);
# without it a new image digest never reaches running Ray pods.
RAY_UPGRADE_STRATEGY = {"type": "Recreate"}


class KubernetesPlatform:
    nodes_addressable = False  # pods are reached through Services; Ray workers have none
    host_state_dirs = False  # pods move between nodes: state lives in volumes or ConfigMaps
    host_docker = False  # the nodes run containerd: the memory guard pauses, never sheds
    serves_tls = False  # the Ingress terminates TLS; behind it the Services speak plain HTTP in the cluster

    def __init__(self, settings: KubernetesSettings, *, image_pull_secret: pulumi.Input[str] | None = None):
        self.settings = settings
        self._digests = {"vllm-gb10": settings.vllm_image_digest, "vllm-gb10-runtime": settings.runtime_image_digest}
        for repository, digest in self._digests.items():
            if not digest:
                key = PINNED_IMAGES[repository]
                raise ConfigError(
                    f"{stack_file(pulumi.get_stack())}: {PROJECT}:{key}: required on kubernetes: the {repository} "
                    f"image is pulled by digest, the part after @ of stack stella's output {_output(repository)}: "
                    f"pulumi config set {key} $(pulumi stack output {_output(repository)} --stack stella | cut -d@ -f2)"
                )
        provider_args: dict[str, Any] = {}
        if settings.kubeconfig:
            provider_args["kubeconfig"] = settings.kubeconfig
        if settings.context:
            provider_args["context"] = settings.context
        self.provider = k8s.Provider("k8s", **provider_args)
        self.namespace = k8s.core.v1.Namespace(
            "namespace",
            metadata={"name": settings.namespace, "labels": {"app.kubernetes.io/part-of": render.PART_OF}},
            opts=pulumi.ResourceOptions(provider=self.provider),
        )
        pull_secret = ""
        if image_pull_secret is not None:
            pull_secret = "registry-pull"
            k8s.core.v1.Secret(
                pull_secret,
                metadata={"name": pull_secret, "namespace": settings.namespace},
                type="kubernetes.io/dockerconfigjson",
                string_data={".dockerconfigjson": pulumi.Output.secret(image_pull_secret)},
                opts=self._opts(None),
            )
        self.placement = render.ClusterPlacement(
            namespace=settings.namespace,
            gpu_label_key=settings.gpu_node_label_key,
            gpu_label_value=settings.gpu_node_label_value,
            storage_class=settings.storage_class,
            image_pull_secret=pull_secret,
        )
        self._public: list[tuple[str, int]] = []
        self._tls: tuple[pulumi.Output[str], pulumi.Output[str]] | None = None
        self._workloads: list[pulumi.Resource] = []  # long-running Deployments and StatefulSets
        self._checks: list[tuple[ServiceSpec, pulumi.Resource]] = []

    def _opts(self, parent: pulumi.Resource | None, **extra: Any) -> pulumi.ResourceOptions:
        depends = [self.namespace, *extra.pop("depends_on", [])]
        return pulumi.ResourceOptions(parent=parent, provider=self.provider, depends_on=depends, **extra)

    @overload
    def pin(self, image: str) -> str: ...
    @overload
    def pin(self, image: pulumi.Input[str]) -> pulumi.Input[str]: ...
    def pin(self, image: pulumi.Input[str]) -> pulumi.Input[str]:
        """Our images pulled by digest (`repo:tag@sha256:…`, the tag kept for readers; the kubelet uses
        the digest); third-party references unchanged."""
        if not isinstance(image, str) or "@" in image:
            return image
        digest = self._digests.get(self._repository(image))
        return f"{image}@{digest}" if digest else image

    def deploy(self, spec: ServiceSpec, parent: pulumi.Resource) -> None:
        self._deploy(spec, parent)

    def _deploy(
        self, spec: ServiceSpec, parent: pulumi.Resource, depends_on: list[pulumi.Resource] | None = None
    ) -> None:
        large = self._repository(spec.image) in LARGE_IMAGES
        spec = replace(
            spec,
            image=self.pin(spec.image),
            sidecars=tuple(replace(sidecar, image=self.pin(sidecar.image)) for sidecar in spec.sidecars),
        )
        placement, name = self.placement, spec.name
        opts = self._opts(parent)
        self._secret_env(spec, opts)
        if spec.files:
            k8s.core.v1.ConfigMap(  # type: ignore[call-overload]
                f"{name}-files",
                metadata=render.metadata(render.files_name(spec), placement),
                data={f.filename: f.content for f in spec.files},
                opts=opts,
            )
        if not spec.stateful:
            for volume in spec.volumes:
                claim = render.claim_name(spec, volume)
                k8s.core.v1.PersistentVolumeClaim(  # type: ignore[call-overload]
                    claim,
                    metadata=render.metadata(claim, placement),
                    spec=render.claim_spec(volume, placement),
                    # Model weights and data outlive a `pulumi destroy` of the workload.
                    opts=self._opts(parent, retain_on_delete=True),
                )
        kind, body = render.workload(spec, placement)
        resource_class = {
            "Deployment": k8s.apps.v1.Deployment,
            "StatefulSet": k8s.apps.v1.StatefulSet,
            "Job": k8s.batch.v1.Job,
        }[kind]
        workload_opts = self._opts(
            parent, depends_on=depends_on or [], custom_timeouts=FIRST_PULL_TIMEOUTS if large else None
        )
        metadata = render.metadata(name, placement)
        if spec.optional:  # observability only: `pulumi up` does not wait for it, nor do the post-deploy checks
            metadata["annotations"] = {render.SKIP_AWAIT_ANNOTATION: "true"}
        workload = resource_class(name, metadata=metadata, spec=body, opts=workload_opts)
        if not spec.one_shot and not spec.optional:
            self._workloads.append(workload)
        if spec.ports and not spec.one_shot:
            k8s.core.v1.Service(  # type: ignore[call-overload]
                f"{name}-service",
                metadata=render.metadata(name, placement),
                spec=render.service_spec(spec),
                opts=opts,
            )
        if spec.admitted is not None and spec.ports:
            k8s.networking.v1.NetworkPolicy(  # type: ignore[call-overload]
                f"{name}-ingress",
                metadata=render.metadata(name, placement),
                spec=render.network_policy_spec(spec),
                opts=opts,
            )
        for port in spec.ports:
            if port.exposure is Exposure.PUBLIC and port.name == "http":
                self._public.append((name, port.published or port.container))

    @staticmethod
    def _repository(image: pulumi.Input[str]) -> str:
        """`registry/vllm-gb10:tag@sha256:…` -> `vllm-gb10` ('' for an image not yet known)."""
        return image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0] if isinstance(image, str) else ""

    def _secret_env(self, spec: ServiceSpec, opts: pulumi.ResourceOptions) -> None:
        """The spec's secret variables as one Secret its containers read by secretKeyRef."""
        if spec.secrets:
            k8s.core.v1.Secret(  # type: ignore[call-overload]
                f"{spec.name}-env",
                metadata=render.metadata(render.secret_name(spec), self.placement),
                type="Opaque",
                string_data={s.env: secret_output(s.value) for s in spec.secrets},
                opts=opts,
            )

    def run_after_deploy(self, spec: ServiceSpec, parent: pulumi.Resource) -> None:
        """A Job, declared in finish() to depend on every Deployment and StatefulSet: it starts once Pulumi
        has seen them ready (vLLM's first image pull included), Pulumi waits for it to complete, and the
        check itself retries until the servers answer."""
        self._checks.append((replace(spec, one_shot=True), parent))

    def deploy_ray(
        self, name: str, head: ServiceSpec, workers: list[ServiceSpec], settings: RaySettings, parent: pulumi.Resource
    ) -> None:
        """The KubeRay operator from its Helm chart, then a RayCluster (head + GPU worker group).

        The specs give image, memory and shm; KubeRay writes the `ray start` commands itself.
        A Service named like the head spec makes the head reachable by the same name as on compose.
        """
        placement = self.placement
        # Ray's token: KubeRay's authOptions set RAY_AUTH_MODE and RAY_AUTH_TOKEN (from the Secret named
        # here, key auth_token) in every Ray container, so the specs' own copies are dropped.
        (token,) = [s.value for s in head.secrets if s.env == RAY_AUTH_TOKEN_ENV]
        head, *workers = [
            replace(
                spec,
                image=self.pin(spec.image),
                environment={k: v for k, v in spec.environment.items() if k != "RAY_AUTH_MODE"},
                secrets=tuple(s for s in spec.secrets if s.env != RAY_AUTH_TOKEN_ENV),
            )
            for spec in (head, *workers)
        ]
        k8s.core.v1.Secret(  # type: ignore[call-overload]
            f"{name}-auth-token",
            metadata=render.metadata(RAY_AUTH_SECRET, placement),
            type="Opaque",
            string_data={"auth_token": secret_output(token)},
            opts=self._opts(parent),
        )
        for spec in (head, *workers[:1]):  # one worker group: its pods share the first worker's Secret
            self._secret_env(spec, self._opts(parent))
        operator = k8s.helm.v3.Release(
            f"{name}-operator",
            name="kuberay-operator",
            chart=KUBERAY_CHART,
            version=self.settings.kuberay_version,
            namespace=placement.namespace,
            repository_opts={"repo": KUBERAY_REPO},
            values={
                "resources": {
                    "requests": {"cpu": "100m", "memory": "256Mi"},
                    "limits": {"cpu": "500m", "memory": "512Mi"},
                },
                "watchNamespace": [placement.namespace],
                "singleNamespaceInstall": True,
            },
            opts=self._opts(parent),
        )
        head_ports = {
            "gcs-server": settings.gcs_port,
            "dashboard": settings.dashboard_port,
            "client": settings.client_port,
            "metrics": settings.metrics_port,  # Prometheus scrapes the head through the Service
        }
        head_container = _ray_container(head, placement, ports=head_ports)
        head_group = {
            "rayStartParams": {
                "port": str(settings.gcs_port),
                "dashboard-host": "0.0.0.0",
                "dashboard-port": str(settings.dashboard_port),
                "ray-client-server-port": str(settings.client_port),
                "num-cpus": "0",  # no tasks on the head
                "num-gpus": "0",
                "metrics-export-port": str(settings.metrics_port),
            },
            "template": {
                "metadata": {"labels": render.labels(head.name)},
                "spec": _ray_pod(head, placement, head_container),
            },
        }
        worker_groups = []
        if workers:
            worker = workers[0]
            worker_groups.append(
                {
                    "groupName": "gb10",
                    "replicas": len(workers),
                    "minReplicas": len(workers),
                    "maxReplicas": len(workers),
                    "rayStartParams": {"num-gpus": "1", "metrics-export-port": str(settings.metrics_port)},
                    "template": {
                        "metadata": {"labels": render.labels(worker.name)},
                        "spec": _ray_pod(worker, placement, _ray_container(worker, placement, ports={})),
                    },
                }
            )
        k8s.apiextensions.CustomResource(
            f"{name}-cluster",
            api_version="ray.io/v1",
            kind="RayCluster",
            metadata=render.metadata(RAY_CLUSTER_NAME, placement),
            spec={
                "rayVersion": RAY_VERSION,
                "authOptions": {"mode": "token", "secretName": RAY_AUTH_SECRET},
                "upgradeStrategy": RAY_UPGRADE_STRATEGY,
                "headGroupSpec": head_group,
                "workerGroupSpecs": worker_groups,
            },
            opts=self._opts(parent, depends_on=[operator]),
        )
        k8s.core.v1.Service(  # type: ignore[call-overload]
            f"{head.name}-service",
            metadata=render.metadata(head.name, placement),
            spec={
                "type": "ClusterIP",
                "selector": {"ray.io/cluster": RAY_CLUSTER_NAME, "ray.io/node-type": "head"},
                "ports": [{"name": n, "port": p, "targetPort": p, "protocol": "TCP"} for n, p in head_ports.items()],
            },
            opts=self._opts(parent),
        )

    def internal_host(self, host: str, service: str) -> str:
        return f"{service}.{self.settings.namespace}.svc.cluster.local"

    def internal_address(self, host: str, port: int, service: str, exposure: Exposure = Exposure.INTERNAL) -> str:
        return f"{self.internal_host(host, service)}:{port}"

    def bind_address(self, host: str, exposure: Exposure) -> str:
        """Every interface of the pod: its Service (ClusterIP) and Ingress decide who reaches it."""
        return "0.0.0.0"

    def probe_address(self, host: str, exposure: Exposure) -> str:
        return "127.0.0.1"

    def external_address(self, host: str, port: int, service: str) -> str:
        return f"{service}.{self.settings.ingress_domain}"

    def terminate_tls(self, cert_pem: pulumi.Output[str], key_pem: pulumi.Output[str]) -> None:
        self._tls = (cert_pem, key_pem)

    def roll(self, rollout: Rollout) -> None:
        """Nothing to declare: each Deployment rolls by its own strategy. The load balancer's keeps one pod
        serving (maxUnavailable 0); vLLM's is Recreate, since a single GB10 node has one GPU and the new
        pod cannot start beside the old one: on one node a vLLM change is an outage of that model."""

    def finish(self) -> None:
        """The public HTTP endpoints: HTTPRoutes on the configured Gateway (whose listener holds the
        certificate: the Gateway is the cluster's, not ours), else one Ingress serving TLS with ours.
        Then the post-deploy checks, after every workload."""
        self._publish()
        for spec, parent in self._checks:
            self._deploy(spec, parent, depends_on=list(self._workloads))

    def _publish(self) -> None:
        if not self._public:
            return
        if self.settings.gateway_name:
            for name, port in sorted(self._public):
                k8s.apiextensions.CustomResource(
                    f"{name}-route",
                    api_version="gateway.networking.k8s.io/v1",
                    kind="HTTPRoute",
                    metadata=render.metadata(name, self.placement),
                    spec=render.http_route_spec(
                        name,
                        port,
                        hostname=f"{name}.{self.settings.ingress_domain}",
                        gateway=self.settings.gateway_name,
                        gateway_namespace=self.settings.gateway_namespace,
                    ),
                    opts=self._opts(None),
                )
            return
        if self._tls is None:
            raise ValueError("the Ingress needs a certificate: terminate_tls() before finish()")
        cert_pem, key_pem = self._tls
        k8s.core.v1.Secret(  # type: ignore[call-overload]
            "public-tls",
            metadata=render.metadata(render.TLS_SECRET, self.placement),
            type="kubernetes.io/tls",
            string_data={"tls.crt": cert_pem, "tls.key": secret_output(key_pem)},
            opts=self._opts(None),
        )
        k8s.networking.v1.Ingress(  # type: ignore[call-overload]
            "public-ingress",
            metadata={
                **render.metadata("public", self.placement),
                **render.ingress_annotations(self.settings.ingress_class),
            },
            spec=render.ingress_spec(self._public, self.settings.ingress_domain, self.settings.ingress_class),
            opts=self._opts(None),
        )


def _ray_container(spec: ServiceSpec, placement: render.ClusterPlacement, *, ports: dict[str, int]) -> dict[str, Any]:
    body = render.container(spec)
    body.pop("args", None)  # KubeRay builds the `ray start` command line from rayStartParams
    body.pop("command", None)
    # Probes run against this pod's own Ray (its dashboard agent), as KubeRay's do: the spec's
    # `ray health-check --address=ray-head…` went through the Service, which routes only to Ready
    # pods, so the head never became Ready. KubeRay keeps probes set here instead of its own.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        body.pop(probe, None)
    if spec.healthcheck is not None:
        check = replace(spec.healthcheck, http_path=RAY_HEALTH_PATH, http_port=RAY_AGENT_PORT, interval_s=5)
        body["startupProbe"] = render.probe(check, failure_threshold=render.startup_failure_threshold(check))
        body["readinessProbe"] = render.probe(check)
        body["livenessProbe"] = render.probe(check)
    body["name"] = "ray-head" if ports else "ray-worker"
    if ports:
        body["ports"] = [{"name": n, "containerPort": p} for n, p in ports.items()]
    return body


def _ray_pod(spec: ServiceSpec, placement: render.ClusterPlacement, container: dict[str, Any]) -> dict[str, Any]:
    pod = render.pod_spec(spec, placement, claims=True)
    pod["containers"] = [container]
    return pod


def _output(repository: str) -> str:
    return {"vllm-gb10": "vllmImage", "vllm-gb10-runtime": "runtimeImage"}[repository]
