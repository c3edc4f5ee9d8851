"""The guard's settings, from MEMGUARD_* variables (infra/components/memguard.py sets them)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, RedisDsn, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.memguard.decide import GIB, Thresholds


class GuardSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEMGUARD_", extra="ignore", frozen=True)

    host: str = Field(min_length=1, description="The host it guards: names its pause key (BATCH_MEMGUARD_HOST).")
    proc_root: Path = Field(Path("/host/proc"), description="The host's /proc (read-only), or recorded files.")
    cgroup: Path | None = Field(
        None,
        description="A cgroup directory to watch instead of the host's /proc (source.read_cgroup): a guard in a "
        "memory-limited container of its own (/sys/fs/cgroup there), or the test that runs one.",
    )
    interval_seconds: float = Field(2.0, gt=0, le=60, description="Seconds between two samples.")
    pause_available_gib: float = Field(8.0, gt=0)
    shed_available_gib: float = Field(4.0, gt=0)
    recover_available_gib: float = Field(12.0, gt=0)
    pause_psi_some: float = Field(20.0, gt=0, le=100)
    shed_psi_full: float = Field(10.0, gt=0, le=100)
    recover_seconds: float = Field(30.0, gt=0, description="Clear this long before stepping down a level.")
    shed_every_seconds: float = Field(15.0, gt=0, description="While MemAvailable stays under shed: next container.")
    shed_services: list[str] = Field(default_factory=list, description="JSON list, shed order (first goes first).")
    compose_project: str = Field("", description="The host's compose project; its containers only.")
    docker_socket: str = Field("", description="The Docker Engine's socket; empty: never shed (kubernetes).")
    stop_timeout_seconds: int = Field(30, ge=0, le=600)
    redis_url: SecretStr | None = Field(None, description="The guard's Redis ACL user; unset: no pause key.")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9105, ge=1, le=65535)

    def thresholds(self) -> Thresholds:
        def samples(seconds: float) -> int:
            return max(1, round(seconds / self.interval_seconds))

        return Thresholds(
            pause_available_bytes=int(self.pause_available_gib * GIB),
            shed_available_bytes=int(self.shed_available_gib * GIB),
            recover_available_bytes=int(self.recover_available_gib * GIB),
            pause_some_avg10=self.pause_psi_some,
            shed_full_avg10=self.shed_psi_full,
            recover_samples=samples(self.recover_seconds),
            shed_every_samples=samples(self.shed_every_seconds),
        )

    @property
    def pause_ttl_seconds(self) -> int:
        """The pause key's expiry, renewed every sample: a guard that died lets its host work again
        (its absence is alerted: MemoryGuardDown) rather than pausing it for ever."""
        return max(10, int(self.interval_seconds * 5))

    def redis_dsn(self) -> str | None:
        if self.redis_url is None:
            return None
        return str(RedisDsn(self.redis_url.get_secret_value()))
