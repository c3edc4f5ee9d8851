"""Generated credentials: a RandomPassword child whose result is always treated as secret."""

from __future__ import annotations

import base64
import hashlib

import pulumi
import pulumi_random as random


def generated_password(name: str, parent: pulumi.Resource, length: int = 32) -> pulumi.Output[str]:
    # Letters and digits only: the value goes through env files, URLs and shell without quoting.
    password = random.RandomPassword(name, length=length, special=False, opts=pulumi.ResourceOptions(parent=parent))
    return pulumi.Output.secret(password.result)


def generated_key_base64(name: str, parent: pulumi.Resource) -> pulumi.Output[str]:
    """A 32-byte key, base64 (what RustFS's RUSTFS_SSE_S3_MASTER_KEY takes): the SHA-256 of a generated
    40-character password (62^40, about 238 bits), so the plan's mocks and the env files need nothing new."""
    password = generated_password(name, parent, length=40)
    return pulumi.Output.secret(
        password.apply(lambda p: base64.b64encode(hashlib.sha256(p.encode()).digest()).decode())
    )
