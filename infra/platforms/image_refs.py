"""Third-party image references: pinned as `name:tag@sha256:…` in the components; a stack with
`pullByDigest: false` runs them by tag alone.

Why the switch exists: a digest names the bytes a registry published, so it resolves only against
a registry (or an image pulled from one). Stack `local` runs on a machine without a registry, with
stand-ins built here and tagged with the upstream `name:tag` (infra/local/images.py); the digest of
a locally built image can never equal upstream's. Everything else about the stack stays the same:
the wrapper only drops the `@sha256:…` from the references of the specs it deploys.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pulumi

from infra.config import RaySettings
from infra.platforms import ServicePlatform
from infra.services import ServiceSpec

DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def tag_only(ref: str) -> str:
    """`redis:8.8.3@sha256:…` -> `redis:8.8.3`; a reference without a digest is returned unchanged."""
    return DIGEST.sub("", ref)


def _tag_only(spec: ServiceSpec) -> ServiceSpec:
    if isinstance(spec.image, str):
        return replace(spec, image=tag_only(spec.image))
    return spec  # our own images (outputs of the builds) carry the digest of what was pushed: keep it


class TagOnlyImages:
    """A platform that deploys what `inner` would, with third-party images referenced by tag alone."""

    def __init__(self, inner: ServicePlatform):
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def deploy(self, spec: ServiceSpec, parent: pulumi.Resource) -> None:
        self._inner.deploy(_tag_only(spec), parent)

    def run_after_deploy(self, spec: ServiceSpec, parent: pulumi.Resource) -> None:
        self._inner.run_after_deploy(_tag_only(spec), parent)

    def deploy_ray(
        self, name: str, head: ServiceSpec, workers: list[ServiceSpec], settings: RaySettings, parent: pulumi.Resource
    ) -> None:
        self._inner.deploy_ray(name, _tag_only(head), [_tag_only(w) for w in workers], settings, parent)


def with_image_refs(platform: ServicePlatform, pull_by_digest: bool) -> ServicePlatform:
    return platform if pull_by_digest else TagOnlyImages(platform)
