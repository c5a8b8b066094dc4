"""A link that silently drops packets: the plugin's HTTP/2 keepalive notices, and the Watch stream
reconnects in bounded time (real broker, real plugin, real policyd on loopback TCP behind a proxy).

The proxy forwards bytes both ways until `blackhole()`: from then on, the connections it holds stay
open but everything sent on them is dropped (a NAT or firewall that forgot the flow), while new
connections are forwarded again. Without keepalive the Watch stream looks connected forever and no
kick or generation ever arrives.
"""

from __future__ import annotations

import re
import selectors
import socket
import sys
import threading
import time
from types import SimpleNamespace

from harness import ROOT, Broker, BrokerConfig, free_port, wait_for

from conftest import SEED_RULES
from test_faults import TcpDaemon

sys.path.insert(0, str(ROOT / "bench"))
from reliability import record  # noqa: E402

KEEPALIVE_S = 1
BOUND_S = 15


class BlackholeProxy:
    def __init__(self, upstream_port: int):
        self.port = free_port()
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.dead: set[socket.socket] = set()     # connections whose bytes are dropped
        self.lock = threading.Lock()
        self.running = True
        self.accepted = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def blackhole(self) -> None:
        with self.lock:
            self.dead.update(key.fileobj for key in self.sel.get_map().values() if key.data is not None)

    def _run(self) -> None:
        while self.running:
            for key, _ in self.sel.select(timeout=0.1):
                if key.data is None:
                    self._accept()
                else:
                    self._pump(key.fileobj, key.data)

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(self.upstream)
        self.accepted += 1
        for a, b in ((client, upstream), (upstream, client)):
            a.setblocking(False)
            self.sel.register(a, selectors.EVENT_READ, b)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            data = src.recv(65536)
        except OSError:
            data = b""
        with self.lock:
            dropped = src in self.dead
        if dropped:
            return                                  # read and forgotten: the sender sees nothing wrong
        if not data:
            for s in (src, dst):
                try:
                    self.sel.unregister(s)
                except (KeyError, ValueError):
                    pass
                s.close()
            return
        dst.setblocking(True)
        try:
            dst.sendall(data)
        except OSError:
            pass
        dst.setblocking(False)

    def stop(self) -> None:
        self.running = False
        self.thread.join(timeout=5)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()


def test_watch_stream_notices_a_silently_dropped_link_and_reconnects(workdir, pki):
    daemon = TcpDaemon(workdir, SEED_RULES).start()
    proxy = BlackholeProxy(daemon.port)
    broker = Broker(workdir, pki, SimpleNamespace(address=proxy.address),
                    BrokerConfig(extra=f"auth_opt_policyd_keepalive_s {KEEPALIVE_S}")).start()
    try:
        wait_for(lambda: daemon.log().count("Watch stream opened") >= 1, 10, "the Watch stream")
        time.sleep(KEEPALIVE_S * 2)                 # pings flow and are answered: nothing happens
        assert daemon.log().count("Watch stream opened") == 1
        started = time.monotonic()
        proxy.blackhole()
        wait_for(lambda: daemon.log().count("Watch stream opened") >= 2, BOUND_S, "the Watch stream to reopen")
        reopened_s = time.monotonic() - started
        assert broker.alive
    finally:
        broker.stop()
        proxy.stop()
        daemon.stop()
    assert "too_many_pings" not in broker.log() + daemon.log()   # the daemon accepts the plugin's pings
    assert re.search(r"Watch stream lost", broker.log())
    record("fault-link-dropped", row="link to policyd silently drops packets (NAT forgot the flow)",
           how=f"TCP proxy between plugin and daemon stops forwarding on its open connections, new ones pass; "
               f"auth_opt_policyd_keepalive_s {KEEPALIVE_S}",
           test="tests/e2e/test_link_dropped.py::test_watch_stream_notices_a_silently_dropped_link_and_reconnects",
           happened=f"keepalive ping unanswered: the Watch stream was declared lost and reopened on a new "
                    f"connection {reopened_s:.1f} s after the drop (bound {BOUND_S} s; default keepalive 10 s "
                    "+ 3 s timeout)", lost="n/a", denied_delivered=0, recovery=f"{reopened_s:.1f} s")
