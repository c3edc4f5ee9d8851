"""JSON logs that carry the job id and chunk of whatever the current task is doing.

The ids live in context variables, so every log line inside a job's tasks (worker, engine,
storage) gets them without passing them around.
"""

from __future__ import annotations

import logging
import socket
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

job_id: ContextVar[str | None] = ContextVar("job_id", default=None)
chunk: ContextVar[int | None] = ContextVar("chunk", default=None)
HOST = socket.gethostname()


class _ContextFilter(logging.Filter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.host = HOST
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id.get()
        if getattr(record, "chunk", None) is None:
            record.chunk = chunk.get()
        return True


def configure(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}{service}{host}{job_id}{chunk}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(_ContextFilter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
