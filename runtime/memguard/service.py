"""The guard's loop: read the host, decide, act, and say so (a JSON log line and a counter per action).

Actions, in the order the levels reach them:
- pause: the key `runtime.batch.keys.memory_pause(host)` is set (and renewed every sample, with an
  expiry) while the level is PAUSE or SHED; the batch workers on this host check it before each claim
  and claim nothing while it is there. Deleted when the level is back to OK.
- shed: the next running container of the shed list is stopped (docker_api.Shedder). A stopped
  container stays stopped when memory recovers: starting it again would bring back what filled the
  memory and make the guard stop it again, minutes later, in a loop. Its stop is alerted
  (MemoryGuardShedContainer) and stays visible (`memguard_shed_container_stopped`) until an operator
  starts it (`docker start`, or the next `pulumi up`).
The guard never depends on Redis to shed: a Redis error is logged and counted, and the loop goes on.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from types import FrameType

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from runtime.batch import keys, logs
from runtime.memguard import source
from runtime.memguard.decide import Decider, Decision, Level, Sample, reason
from runtime.memguard.docker_api import DockerError, Shedder
from runtime.memguard.settings import GuardSettings

log = logging.getLogger("runtime.memguard")
registry = CollectorRegistry(auto_describe=True)
LEVEL = Gauge("memguard_level", "The guard's level: 0 ok, 1 pause, 2 shed.", registry=registry)
AVAILABLE = Gauge("memguard_mem_available_bytes", "The host's MemAvailable at the last sample.", registry=registry)
PSI_SOME = Gauge("memguard_psi_some_avg10", "PSI memory some avg10 (percent) at the last sample.", registry=registry)
PSI_FULL = Gauge("memguard_psi_full_avg10", "PSI memory full avg10 (percent) at the last sample.", registry=registry)
PSI_REPORTED = Gauge("memguard_psi_reported", "1: the kernel reports PSI; 0: MemAvailable alone.", registry=registry)
LAST_SAMPLE = Gauge("memguard_last_sample_timestamp_seconds", "When the host was last read.", registry=registry)
TRANSITIONS = Counter(
    "memguard_transitions", "Level changes, by level before and after.", ["from_level", "to_level"], registry=registry
)
ACTIONS = Counter(
    "memguard_actions", "Actions taken: pause, resume (batch claims), stop (a container).", ["action", "service"],
    registry=registry,
)  # fmt: skip
FAILURES = Counter("memguard_action_failures", "Actions that failed, by action.", ["action"], registry=registry)
READ_ERRORS = Counter("memguard_read_errors", "Samples the host files could not give.", registry=registry)
SHED_STOPPED = Gauge(
    "memguard_shed_container_stopped", "1: a container of the shed list is not running.", ["service"],
    registry=registry,
)  # fmt: skip
SHED_EXHAUSTED = Gauge(
    "memguard_shed_exhausted", "1: the guard would shed but no container of its list is left running.",
    registry=registry,
)  # fmt: skip
BATCH = "batch-claims"  # the `service` label of the pause and resume actions


class Guard:
    def __init__(self, settings: GuardSettings, client: redis.Redis | None, shedder: Shedder | None):
        self.settings = settings
        self.redis = client
        self.shedder = shedder
        self.decider = Decider(settings.thresholds())
        self.pause_key = keys.memory_pause(settings.host)
        self._key_set = True  # a key a previous guard left is cleared at the first OK sample
        for service in shedder.services if shedder else ():
            SHED_STOPPED.labels(service).set(0)

    def tick(self) -> Decision | None:
        """One sample: read, decide, act. None when the host could not be read (nothing changes)."""
        try:
            cgroup = self.settings.cgroup
            reading = source.read(self.settings.proc_root) if cgroup is None else source.read_cgroup(cgroup)
        except source.SourceError as exc:
            READ_ERRORS.inc()
            log.error("cannot read the host: %s", exc, extra={"event": "read_error"})
            return None
        sample = reading.sample
        AVAILABLE.set(sample.available_bytes)
        PSI_SOME.set(sample.some_avg10)
        PSI_FULL.set(sample.full_avg10)
        PSI_REPORTED.set(1 if reading.psi else 0)
        LAST_SAMPLE.set(time.time())
        decision = self.decider.step(sample)
        LEVEL.set(decision.level)
        if decision.changed:
            self._transition(decision, sample)
        self._publish(decision, sample)
        if decision.shed:
            self._shed(sample)
        self._observe()
        return decision

    def _fields(self, sample: Sample, **more: object) -> dict[str, object]:
        return {
            "guard_host": self.settings.host,
            "mem_available_bytes": sample.available_bytes,
            "psi_some_avg10": sample.some_avg10,
            "psi_full_avg10": sample.full_avg10,
            **more,
        }

    def _transition(self, decision: Decision, sample: Sample) -> None:
        TRANSITIONS.labels(decision.previous.label, decision.level.label).inc()
        fields = self._fields(sample, event="level", level=decision.level.label, previous=decision.previous.label)
        log.warning(
            "memory level %s -> %s: %s",
            decision.previous.label,
            decision.level.label,
            reason(sample, self.decider.t),
            extra=fields,
        )
        if decision.previous is Level.OK:
            ACTIONS.labels("pause", BATCH).inc()
            log.warning("pause: no new batch work on %s", self.settings.host, extra={**fields, "event": "pause"})
        elif decision.level is Level.OK:
            ACTIONS.labels("resume", BATCH).inc()
            log.warning("resume: batch work on %s again", self.settings.host, extra={**fields, "event": "resume"})

    def _publish(self, decision: Decision, sample: Sample) -> None:
        """The pause key, renewed every sample while paused; deleted once back to OK."""
        if self.redis is None or (decision.level is Level.OK and not self._key_set):
            return
        try:
            if decision.level is Level.OK:
                self.redis.delete(self.pause_key)
                self._key_set = False
            else:
                value = {"level": decision.level.label, "reason": reason(sample, self.decider.t), "at": time.time()}
                self.redis.set(self.pause_key, json.dumps(value), ex=self.settings.pause_ttl_seconds)
                self._key_set = True
        except (redis.RedisError, OSError) as exc:
            FAILURES.labels("pause_key").inc()
            log.error("pause key %s not written: %r", self.pause_key, exc, extra={"event": "pause_key_error"})

    def _shed(self, sample: Sample) -> None:
        fields = self._fields(sample, event="shed")
        if self.shedder is None:
            SHED_EXHAUSTED.set(1)
            log.error("shed: nothing configured to stop on %s", self.settings.host, extra=fields)
            return
        try:
            stopped = self.shedder.stop_next()
        except DockerError as exc:
            FAILURES.labels("stop").inc()
            log.error("shed failed: %s", exc, extra=fields)
            return
        if stopped is None:
            SHED_EXHAUSTED.set(1)
            log.error("shed: no container of %s left running", list(self.shedder.services), extra=fields)
            return
        ACTIONS.labels("stop", stopped.service).inc()
        log.warning(
            "shed: stopped %s (%s) of %s; it stays stopped until an operator starts it",
            stopped.service,
            stopped.id[:12],
            self.shedder.project,
            extra={**fields, "event": "stop", "shed_service": stopped.service, "container": stopped.id[:12]},
        )

    def _observe(self) -> None:
        """The shed list's containers: which are not running (a stop of ours, or anyone's)."""
        if self.shedder is None:
            return
        try:
            containers = self.shedder.containers()
        except DockerError as exc:
            FAILURES.labels("observe").inc()
            log.warning("cannot list containers: %s", exc, extra={"event": "observe_error"})
            return
        running = {c.service for c in containers if c.state == "running"}
        for service in self.shedder.services:
            SHED_STOPPED.labels(service).set(0 if service in running else 1)
        if running:
            SHED_EXHAUSTED.set(0)


def build(settings: GuardSettings) -> Guard:
    dsn = settings.redis_dsn()
    client = redis.Redis.from_url(dsn, socket_timeout=2, socket_connect_timeout=2) if dsn else None
    shedder = None
    if settings.docker_socket and settings.shed_services:
        shedder = Shedder(
            settings.docker_socket,
            settings.compose_project,
            tuple(settings.shed_services),
            stop_timeout_s=settings.stop_timeout_seconds,
        )
    return Guard(settings, client, shedder)


def run(settings: GuardSettings, stop: threading.Event) -> None:
    guard = build(settings)
    start_http_server(settings.metrics_port, settings.metrics_host, registry=registry)
    t = guard.decider.t
    log.info(
        "memory guard on %s: pause < %.1f GiB or PSI some > %g; shed < %.1f GiB or PSI full > %g; shed order %s",
        settings.host,
        settings.pause_available_gib,
        t.pause_some_avg10,
        settings.shed_available_gib,
        t.shed_full_avg10,
        list(guard.shedder.services) if guard.shedder else "none",
        extra={"event": "start", "guard_host": settings.host},
    )
    while not stop.is_set():
        guard.tick()
        stop.wait(settings.interval_seconds)


def main() -> None:
    logs.configure("memguard")
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    run(GuardSettings(), stop)  # host and the rest from the environment
