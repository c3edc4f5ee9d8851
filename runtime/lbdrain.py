"""Take a host's vLLM servers out of the load balancer's rotation and back:
`python -m runtime.lbdrain [--dir DIR] drain|ready SERVER... [--timeout-s N]`.

A rolling change (issue 30) runs it on the load balancer's host, through HAProxy's admin socket in
the keys directory (the same directory and image as runtime.lbkeys), around each host's `up`:

- `drain`: every server of that name, in every backend, goes to DRAIN (HAProxy sends it no new
  session; sessions in flight go on), then it waits until none of them has a session open, so a
  stream or a batch request in flight finishes before its vLLM stops. Past the timeout it says how
  many sessions are still open and lets the roll go on (they end when the server stops, and the
  clients' retries go to the other servers).
- `ready`: the servers leave DRAIN/MAINT, then it waits until HAProxy's own health check says UP
  for every one of them; past the timeout it fails, naming each server and what its check said,
  so the roll stops before it takes the next host out.

A load balancer that is not running yet (the first `up`) has nothing to drain: both say so and
succeed. A server HAProxy does not know yet (added by this change, before the reload) is named and
skipped. Standard library only, like runtime.lbkeys.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime import lbkeys

POLL_S = 0.5
SERVER_ROWS_EXCLUDED = {"FRONTEND", "BACKEND"}


class DrainError(Exception):
    """HAProxy refused a command, or a server did not come back UP in time."""


@dataclass(frozen=True)
class ServerState:
    """One server row of `show stat`: where it is, its open sessions and HAProxy's status for it."""

    backend: str
    server: str
    sessions: int
    status: str  # UP, DOWN, DRAIN, MAINT, "UP 1/2", "no check", ...
    check: str  # the last check's status (L7OK, L4CON, ...)

    @property
    def up(self) -> bool:
        return self.status == "UP"


def parse_stat(text: str) -> list[ServerState]:
    """`show stat`'s CSV (its header line starts with `# `) as server rows."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        raise DrainError(f"HAProxy's `show stat` answered something else: {text[:200]!r}")
    rows = csv.DictReader(io.StringIO("\n".join([lines[0][2:], *lines[1:]])))
    return [
        ServerState(row["pxname"], row["svname"], int(row["scur"] or 0), row["status"], row.get("check_status", ""))
        for row in rows
        if row.get("svname") not in SERVER_ROWS_EXCLUDED and row.get("pxname")
    ]


Send = Callable[[str], str]


class Balancer:
    """The running HAProxy behind its admin socket."""

    def __init__(self, send: Send):
        self._send = send

    @classmethod
    def at(cls, socket_path: Path) -> Balancer:
        return cls(lambda command: lbkeys.haproxy(socket_path, command))

    def servers(self, names: Sequence[str]) -> list[ServerState]:
        return [s for s in parse_stat(self._send("show stat")) if s.server in names]

    def set_state(self, server: ServerState, state: str) -> None:
        answer = self._send(f"set server {server.backend}/{server.server} state {state}")
        if answer:
            raise DrainError(f"HAProxy refused 'set server {server.backend}/{server.server} state {state}': {answer}")


def _known(balancer: Balancer, names: Sequence[str], say: Callable[[str], None]) -> list[ServerState]:
    found = balancer.servers(names)
    for missing in sorted(set(names) - {s.server for s in found}):
        say(f"{missing}: not in the running load balancer's configuration yet, skipped")
    return found


def drain(
    balancer: Balancer, names: Sequence[str], timeout_s: float, say: Callable[[str], None], clock: Callable[[], float]
) -> int:
    """DRAIN every row of these servers, then wait for their sessions to end; the sessions still open."""
    rows = _known(balancer, names, say)
    for row in rows:
        balancer.set_state(row, "drain")
    say(f"draining {', '.join(f'{r.backend}/{r.server}' for r in rows) or 'nothing'}")
    deadline = clock() + timeout_s
    while True:
        open_sessions = sum(s.sessions for s in balancer.servers(names))
        if open_sessions == 0:
            say("drained: no session open")
            return 0
        if clock() >= deadline:
            say(f"{open_sessions} sessions still open after {timeout_s:.0f} s: going on (clients retry elsewhere)")
            return open_sessions
        time.sleep(POLL_S)


def ready(
    balancer: Balancer, names: Sequence[str], timeout_s: float, say: Callable[[str], None], clock: Callable[[], float]
) -> None:
    """READY every row of these servers, then wait until HAProxy's health check has each one UP.

    HAProxy keeps checking a drained server: while its vLLM was down for the host's `up`, the checks
    marked it DOWN, and only passing checks (`rise`) bring it UP again."""
    rows = _known(balancer, names, say)
    for row in rows:
        balancer.set_state(row, "ready")
    deadline = clock() + timeout_s
    while True:
        current = balancer.servers(names)
        if all(s.up for s in current):
            say(f"in rotation: {', '.join(f'{s.backend}/{s.server}' for s in current) or 'nothing'}")
            return
        if clock() >= deadline:
            waiting = "; ".join(f"{s.backend}/{s.server} is {s.status} (check: {s.check})" for s in current if not s.up)
            raise DrainError(f"not back in rotation after {timeout_s:.0f} s: {waiting}")
        time.sleep(POLL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.lbdrain", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, default=Path(lbkeys.DEFAULT_DIR), help="the load balancer's keys directory (its socket)"
    )
    parser.add_argument("action", choices=("drain", "ready"))
    parser.add_argument("servers", nargs="+", help="server names as haproxy.cfg names them (the vLLM services)")
    parser.add_argument("--timeout-s", type=float, default=300, help="how long to wait (default 300)")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(f"lbdrain {args.action}: {message}", file=sys.stderr, flush=True)

    sock = args.dir / lbkeys.SOCKET_FILE
    if not sock.exists():
        say(f"no load balancer running here yet ({sock} absent): nothing to {args.action}")
        return 0
    try:
        balancer = Balancer.at(sock)
        if args.action == "drain":
            drain(balancer, args.servers, args.timeout_s, say, time.monotonic)
        else:
            ready(balancer, args.servers, args.timeout_s, say, time.monotonic)
    except (DrainError, OSError) as exc:
        say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
