"""Generated credentials: a RandomPassword child whose result is always treated as secret."""

from __future__ import annotations

import pulumi
import pulumi_random as random


def generated_password(name: str, parent: pulumi.Resource, length: int = 32) -> pulumi.Output[str]:
    # Letters and digits only: the value goes through env files, URLs and shell without quoting.
    password = random.RandomPassword(name, length=length, special=False, opts=pulumi.ResourceOptions(parent=parent))
    return pulumi.Output.secret(password.result)
