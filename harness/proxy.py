"""A TCP proxy on loopback that can stop forwarding without closing anything: a network black hole on demand.

The tests and the benchmark put it between pgparent and one server to make a poll hang the way a dead link or a
firewall dropping packets makes it hang: no error, no reply.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading


class StallingProxy:
    """A TCP proxy on 127.0.0.1 that can stop forwarding without closing anything: a network black hole.

    While stalled, bytes already sent sit in socket buffers and new connections are accepted but never answered, so
    the client sees neither an error nor a reply, as with a dead link or a firewall dropping packets. `held` is set
    once, since the last stall(), something of the client's is held back (a query or a connection attempt): the
    client is now hanging on the black hole.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self.held = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True, name="proxy-conn").start()

    def _serve(self, client: socket.socket) -> None:
        if not self._flowing.is_set():
            self.held.set()  # a connection attempt into the black hole
        self._flowing.wait()
        if self._closed.is_set():
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        self._sockets += [client, upstream]
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst, src is client), daemon=True, name="proxy-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        src.settimeout(0.1)
        while not self._closed.is_set():
            if not self._flowing.wait(0.1):
                if from_client and _readable(src):
                    self.held.set()  # the client's bytes wait unread
                continue
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                if from_client and not self._flowing.is_set():
                    self.held.set()  # read just before the stall, and now held back
                self._flowing.wait()
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def stall(self) -> None:
        """Stop forwarding: from now on bytes and new connections are held, neither refused nor answered."""
        self.held.clear()
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again, what was held back first."""
        self._flowing.set()

    def close(self) -> None:
        """Stop listening and close every connection made through the proxy."""
        self._closed.set()
        self._flowing.set()
        self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()


def _readable(sock: socket.socket) -> bool:
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):  # closed meanwhile
        return False
