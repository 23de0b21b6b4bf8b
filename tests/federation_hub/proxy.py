"""A TCP relay between two loopback ports that can be cut and healed: a network partition for
the gossip tests without root or firewall rules. The bytes are relayed untouched."""

from __future__ import annotations

import socket
import threading


class Link:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connected = True
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Drop every open connection and refuse new ones."""
        self.connected = False
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._sockets.clear()

    def heal(self) -> None:
        self.connected = True

    def close(self) -> None:
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                incoming, _ = self.listener.accept()
            except OSError:
                return
            if not self.connected:
                incoming.close()
                continue
            try:
                outgoing = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                outgoing.settimeout(None)
            except OSError:
                incoming.close()  # the target is down: the caller sees a reset, as on a real network
                continue
            with self._lock:
                self._sockets |= {incoming, outgoing}
            for src, dst in ((incoming, outgoing), (outgoing, incoming)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._sockets.discard(src)
                self._sockets.discard(dst)
