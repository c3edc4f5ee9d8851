"""KV-cache policy: size vLLM for a host and a model (`python -m runtime.kvcache plan ...`)."""

from runtime.kvcache.hosts import PROFILES, HostProfile, load_profiles
from runtime.kvcache.model import ModelConfigError, ModelShape, load_model_shape
from runtime.kvcache.policy import KvPlan, PlanError, Target, engine_args_to_flags, plan, report, tokens_for_budget

__all__ = [
    "PROFILES",
    "HostProfile",
    "KvPlan",
    "ModelConfigError",
    "ModelShape",
    "PlanError",
    "Target",
    "engine_args_to_flags",
    "load_model_shape",
    "load_profiles",
    "plan",
    "report",
    "tokens_for_budget",
]
