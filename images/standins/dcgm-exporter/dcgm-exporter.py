#!/usr/bin/python3
"""dcgm-exporter stand-in: the metrics a GB10 reports, so scrapes, alerts and dashboards have data.

Accepts `-a/--address [HOST]:PORT` (default :9400, empty host = all addresses) and ignores the
exporter's other flags. GET /metrics: DCGM_FI_DEV_GPU_UTIL, DCGM_FI_DEV_GPU_TEMP and
DCGM_FI_DEV_POWER_USAGE for gpu="0"; GET /health: 200 once serving.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LABELS = (
    'gpu="0",UUID="GPU-00000000-0000-0000-0000-0000000000gb",pci_bus_id="0000000F:01:00.0",'
    'device="nvidia0",modelName="NVIDIA GB10",Hostname="{host}",DCGM_FI_DRIVER_VERSION="580.95.05"'
)
SERIES = (
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
)


def values(now: float) -> dict[str, float]:
    """Plausible, slowly varying readings (a GB10 tops out near 140 W for the GPU)."""
    wave = (math.sin(now / 60.0) + 1.0) / 2.0
    return {
        "DCGM_FI_DEV_GPU_UTIL": round(60 + 35 * wave),
        "DCGM_FI_DEV_GPU_TEMP": round(45 + 20 * wave),
        "DCGM_FI_DEV_POWER_USAGE": round(30 + 90 * wave, 3),
    }


def render(host: str) -> str:
    labels = LABELS.format(host=host)
    current = values(time.time())
    lines: list[str] = []
    for name, kind, help_text in SERIES:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{{{labels}}} {current[name]}"]
    return "\n".join(lines) + "\n"


class Handler(BaseHTTPRequestHandler):
    server_version = "dcgm-exporter-standin"
    hostname = socket.gethostname()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            status, body, kind = 200, render(self.hostname), "text/plain; version=0.0.4; charset=utf-8"
        elif path == "/health":
            status, body, kind = 200, "OK", "text/plain"
        else:
            status, body, kind = 404, "not found\n", "text/plain"
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="dcgm-exporter")
    parser.add_argument("-a", "--address", default=os.environ.get("DCGM_EXPORTER_LISTEN", ":9400"))
    args, _ignored = parser.parse_known_args(argv)
    host, _, port = args.address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    server = ThreadingHTTPServer((host, int(port)), Handler)
    print(f"dcgm-exporter stand-in: listening on {host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
