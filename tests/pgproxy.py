"""A TCP proxy in front of the test PostgreSQL that loses the drop's COMMIT on the way.

It relays every connection byte for byte and reads the client's side of the wire protocol. In the
session that sent a ``DROP TABLE``, it cuts the client off at the next ``COMMIT``: either after
passing the COMMIT on (the server commits; the client never hears so) or instead of passing it on
(the server sees the client go and rolls back). Every other session goes through untouched, so the
run can connect again and read what is true. Use a URL with ``sslmode=disable`` (plain messages).
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field


@dataclass
class CommitCutter:
    upstream_port: int
    pass_commit: bool  # True: the server gets the COMMIT (and commits) before the client is cut off
    upstream_host: str = "127.0.0.1"
    cut: threading.Event = field(default_factory=threading.Event)
    _listener: socket.socket | None = None

    @property
    def port(self) -> int:
        assert self._listener is not None
        return self._listener.getsockname()[1]

    def url(self, url: str) -> str:
        """``url`` pointed at the proxy, TLS and GSS encryption off."""
        host = f"{self.upstream_host}:{self.upstream_port}"
        assert host in url, url
        sep = "&" if "?" in url else "?"
        return url.replace(host, f"127.0.0.1:{self.port}") + f"{sep}sslmode=disable&gssencmode=disable"

    def __enter__(self) -> CommitCutter:
        self._listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._listener is not None
        self._listener.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection((self.upstream_host, self.upstream_port))
            muted = threading.Event()  # set before the COMMIT goes on: its answer never reaches the client
            threading.Thread(target=self._to_client, args=(server, client, muted), daemon=True).start()
            threading.Thread(target=self._to_server, args=(client, server, muted), daemon=True).start()

    @staticmethod
    def _to_client(server: socket.socket, client: socket.socket, muted: threading.Event) -> None:
        try:
            while data := server.recv(65536):
                if muted.is_set():
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            server.close()  # the server's session ends once it has answered (or on its own)
            client.close()

    def _to_server(self, client: socket.socket, server: socket.socket, muted: threading.Event) -> None:
        reader = client.makefile("rb")
        armed = False
        try:
            (length,) = struct.unpack("!I", reader.read(4))  # the startup message: length, then body
            server.sendall(struct.pack("!I", length) + reader.read(length - 4))
            while header := reader.read(5):
                kind, length = header[:1], struct.unpack("!I", header[1:])[0]
                body = reader.read(length - 4)
                text = body.rstrip(b"\0").strip().upper() if kind == b"Q" else b""
                if b"DROP TABLE" in text:
                    armed = True
                if armed and text == b"COMMIT" and not self.cut.is_set():
                    self.cut.set()
                    muted.set()
                    if self.pass_commit:
                        server.sendall(header + body)
                    client.shutdown(socket.SHUT_RDWR)
                    client.close()
                    if not self.pass_commit:
                        server.shutdown(socket.SHUT_RDWR)  # the server sees its client go: it rolls back
                        server.close()
                    return
                server.sendall(header + body)
        except (OSError, struct.error):
            pass
