"""A loopback TCP proxy that can make a server unreachable and bring it back on the same port.

Stands between a client and a real server (moto's S3 here, which keeps its data in memory and
so cannot itself be restarted without losing it). While cut, every connection, open or new, is
reset; `refused` counts the attempts, so a test can wait until the client has really failed.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from harness.servers import free_port


class TcpProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.refused = 0
        self._cut = threading.Event()
        self._lose_reply = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Reset every open connection and every new one until `restore`."""
        self._cut.set()
        with self._lock:
            for sock in list(self._sockets):
                _reset(sock)
            self._sockets.clear()

    def restore(self) -> None:
        self._cut.clear()

    def lose_next_reply(self) -> None:
        """The next reply from the server is swallowed and its connection reset: the server did the
        work, the client never hears so (and, retrying, sends the same command again)."""
        self._lose_reply.set()

    def close(self) -> None:
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            for source, target, replies in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(source, target, replies), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, replies: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if replies and self._lose_reply.is_set():
                    self._lose_reply.clear()
                    for sock in (target, source):  # shutdown wakes the other pump, blocked in recv on it
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
                        _reset(sock)
                    break
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)
        with self._lock:
            self._sockets.discard(source)


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a dead peer or a dropped route looks to the client."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
