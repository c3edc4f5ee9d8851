"""The policy pack, for `pulumi preview --policy-pack policies`. Only this file builds the
PolicyPack: its constructor starts the analyzer server and serves forever, so nothing else
imports it (the rules live in policies/rules.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import PolicyPack

from policies.rules import POLICIES

PolicyPack(name="vllm-gb10", policies=POLICIES)
