"""Real parts for end-to-end tests and benchmarks: a PKI, policyd, mosquitto, MQTT devices.

Everything runs for real on this machine: `policyd serve` on a unix socket,
a real `mosquitto` broker with a TLS listener and our plugin, and paho-mqtt
or mosquitto_pub clients holding per-device certificates. Only loopback
addresses are used.

Mosquitto started as root drops to the `mosquitto` user before it reads its
key and loads plugins, so the work directory is world-traversable (0755), the
server key belongs to `mosquitto`, the plugin is copied into the work
directory and the policyd socket is group `mosquitto`.

The broker is Debian's `mosquitto` (2.0) unless POLICYD_BROKER names another
executable; `make test` runs the end-to-end suite a second time with the
Mosquitto 2.1 it builds from third_party/. Both drop to `mosquitto` alike.
"""

from __future__ import annotations

import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
# `make test-e2e-asan` points these at the ASan + UBSan build and preloads libasan into the broker.
PLUGIN_SO = Path(os.environ.get("POLICYD_PLUGIN") or ROOT / "plugin_c" / "build" / "mosquitto_policyd.so")
BROKER_PRELOAD = os.environ.get("POLICYD_BROKER_PRELOAD", "")
POLICYD = [sys.executable, "-m", "policyd"]
BROKER = os.environ.get("POLICYD_BROKER") or "mosquitto"
BROKER_USER = "mosquitto"


_broker_version: Optional[tuple[int, int, int]] = None


def broker_version() -> tuple[int, int, int]:
    """The version of the broker under test, from the first line of `mosquitto -h`."""
    global _broker_version
    if _broker_version is None:
        out = subprocess.run([BROKER, "-h"], capture_output=True, text=True, timeout=10).stdout
        first = out.splitlines()[0] if out else ""
        if not first.startswith("mosquitto version "):
            raise RuntimeError(f"{BROKER} -h does not name a mosquitto version: {first!r}")
        _broker_version = tuple(int(part) for part in first.split()[2].split(".")[:3])
    return _broker_version


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def make_workdir(prefix: str = "policyd-e2e-") -> Path:
    """A directory the broker (after dropping to `mosquitto`) can traverse."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def broker_user_exists() -> bool:
    try:
        pwd.getpwnam(BROKER_USER)
        return True
    except KeyError:
        return False


class Pki:
    """CA, server and device certificates issued with `policyd certs`."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        self.ca = self.dir / "ca.pem"
        self.server_cert = self.dir / "server.pem"
        self.server_key = self.dir / "server.key"

    def issue_base(self) -> "Pki":
        run_policyd("certs", "ca", "--dir", str(self.dir))
        owner = ["--owner", BROKER_USER] if os.geteuid() == 0 else []
        run_policyd("certs", "server", "--dir", str(self.dir), "--cn", "localhost",
                    "--san", "localhost", "--san", "127.0.0.1", *owner)
        return self

    def device(self, cn: str) -> tuple[Path, Path]:
        cert, key = self.dir / f"{cn}.pem", self.dir / f"{cn}.key"
        if not cert.exists():
            run_policyd("certs", "client", "--dir", str(self.dir), "--cn", cn)
        return cert, key


def run_policyd(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run([*POLICYD, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise RuntimeError(f"policyd {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


class PolicyDaemon:
    """`policyd serve` on a unix socket that the broker's user may open."""

    def __init__(self, workdir: Path, rules_yaml: str, *extra_args: str):
        self.workdir = workdir
        self.rules = workdir / "rules.yaml"
        self.rules.write_text(rules_yaml)
        self.sock_dir = workdir / "run"
        self.socket = self.sock_dir / "policyd.sock"
        self.admin_socket = self.sock_dir / "policyd-admin.sock"
        self.log_path = workdir / "policyd.log"
        self.extra_args = extra_args
        self.proc: Optional[subprocess.Popen] = None

    @property
    def address(self) -> str:
        return f"unix:{self.socket}"

    @property
    def admin_address(self) -> str:
        return f"unix:{self.admin_socket}"

    def start(self, timeout: float = 15) -> "PolicyDaemon":
        self.sock_dir.mkdir(mode=0o755, exist_ok=True)
        group = ["--socket-group", BROKER_USER] if os.geteuid() == 0 and broker_user_exists() else []
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*POLICYD, "serve", "--rules", str(self.rules), "--listen", self.address,
             "--log-level", "debug", *group, *self.extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_for(lambda: self.socket.exists() and self.admin_socket.exists() or self.proc.poll() is not None,
                 timeout, "policyd socket")
        if self.proc.poll() is not None:
            raise RuntimeError(f"policyd exited with {self.proc.returncode}:\n{self.log()}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class BrokerConfig:
    plugin: bool = True
    acl_file: Optional[str] = None
    use_identity_as_username: bool = True
    extra: str = ""
    # How the plugin is named: auth_plugin/auth_opt_ (both versions), plugin/plugin_opt_ (both),
    # global_plugin (2.1 only).
    plugin_keyword: str = "auth_plugin"
    option_prefix: str = "auth_opt_"
    per_listener_settings: bool = False


def broker_env(workdir: Path) -> dict:
    """The broker's environment. With BROKER_PRELOAD, sanitizer reports go to the directory
    POLICYD_SANITIZER_LOGS (writable by `mosquitto`), which `make test-e2e-asan` checks is empty."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if BROKER_PRELOAD:
        logs = os.environ.get("POLICYD_SANITIZER_LOGS", "/tmp")
        env["LD_PRELOAD"] = BROKER_PRELOAD
        env["ASAN_OPTIONS"] = f"detect_leaks=0:abort_on_error=1:log_path={logs}/asan-{workdir.name}"
        env["UBSAN_OPTIONS"] = f"halt_on_error=1:print_stacktrace=1:log_path={logs}/ubsan-{workdir.name}"
    return env


class Broker:
    """`mosquitto` (BROKER) with a TLS listener requiring client certificates."""

    def __init__(self, workdir: Path, pki: Pki, daemon: Optional[PolicyDaemon], config: BrokerConfig = BrokerConfig()):
        self.workdir = workdir
        self.pki = pki
        self.daemon = daemon
        self.config = config
        self.port = free_port()
        self.conf_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.proc: Optional[subprocess.Popen] = None

    def render_config(self) -> str:
        lines = [
            f"per_listener_settings {'true' if self.config.per_listener_settings else 'false'}",
            "check_retain_source true",  # as every configuration we ship (examples/)
            f"listener {self.port} 127.0.0.1",
            f"cafile {self.pki.ca}",
            f"certfile {self.pki.server_cert}",
            f"keyfile {self.pki.server_key}",
            "require_certificate true",
            f"use_identity_as_username {'true' if self.config.use_identity_as_username else 'false'}",
            "log_dest stdout",
            "log_type all",
            "connection_messages true",
        ]
        if self.config.plugin:
            plugin = self.workdir / PLUGIN_SO.name
            shutil.copy2(PLUGIN_SO, plugin)
            plugin.chmod(0o755)
            lines += [f"{self.config.plugin_keyword} {plugin}",
                      f"{self.config.option_prefix}policyd_address {self.daemon.address}"]
        if self.config.acl_file:
            lines.append(f"acl_file {self.config.acl_file}")
        if self.config.extra:
            lines.append(textwrap.dedent(self.config.extra).strip())
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15) -> "Broker":
        self.conf_path.write_text(self.render_config())
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([BROKER, "-c", str(self.conf_path)], env=broker_env(self.workdir),
                                     stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._port_open() or self.proc.poll() is not None, timeout, "mosquitto listener")
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {self.proc.returncode}:\n{self.log()}")
        return self

    def _port_open(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli_tls_args(self, device: str) -> list[str]:
        cert, key = self.pki.device(device)
        return ["-h", "127.0.0.1", "-p", str(self.port), "--cafile", str(self.pki.ca),
                "--cert", str(cert), "--key", str(key)]


class Device:
    """A paho-mqtt (MQTT v5) client with a device certificate, driven synchronously."""

    def __init__(self, broker: Broker, cn: str, client_id: Optional[str] = None,
                 cert: Optional[Path] = None, key: Optional[Path] = None):
        import paho.mqtt.client as mqtt

        self.cn = cn
        if cert is None:
            cert, key = broker.pki.device(cn)
        self.messages: "queue.Queue" = queue.Queue()
        self._acks: dict[int, "queue.Queue"] = {}
        self._lock = threading.Lock()
        self._connected: "queue.Queue" = queue.Queue()
        self.disconnects: "queue.Queue" = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"{cn}-client",
                                  protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(broker.pki.ca), certfile=str(cert), keyfile=str(key))
        self.client.on_connect = lambda c, u, flags, rc, props: self._connected.put(rc)
        self.client.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self.client.on_message = lambda c, u, msg: self.messages.put((msg.topic, msg.payload))
        self.client.on_publish = lambda c, u, mid, rc, props: self._ack(mid).put(rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self._ack(mid).put(rcs)
        self.broker = broker

    def _ack(self, mid: int) -> "queue.Queue":
        with self._lock:
            return self._acks.setdefault(mid, queue.Queue())

    def connect(self, timeout: float = 10) -> "Device":
        self.client.connect("127.0.0.1", self.broker.port, keepalive=30)
        self.client.loop_start()
        rc = self._connected.get(timeout=timeout)
        if rc.is_failure:
            raise ConnectionError(f"{self.cn}: CONNACK {rc}")
        return self

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, timeout: float = 10) -> int:
        """Publish; return 0 when accepted, else the PUBACK reason code (0x87 = not authorized).

        0x10 "no matching subscribers" is a success code too and is returned as 0.
        """
        info = self.client.publish(topic, payload, qos=qos)
        if qos == 0:
            return 0
        code = self._ack(info.mid).get(timeout=timeout).value
        return 0 if code < 0x80 else code

    def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 10) -> int:
        """Subscribe and return the SUBACK reason code (0..2 = granted QoS, 0x87 = not authorized)."""
        _, mid = self.client.subscribe(topic_filter, qos=qos)
        return self._ack(mid).get(timeout=timeout)[0].value

    def received(self, timeout: float) -> list[tuple[str, bytes]]:
        """Messages that arrive within `timeout` seconds (waits the whole time)."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                return out

    def next_message(self, timeout: float = 10) -> tuple[str, bytes]:
        return self.messages.get(timeout=timeout)

    def disconnected(self, timeout: float = 5) -> bool:
        """Whether the broker ends this client's connection within `timeout` seconds."""
        try:
            self.disconnects.get(timeout=timeout)
            return True
        except queue.Empty:
            return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def close_all(devices) -> None:
    """Closes each device, whatever state a failed test left it in."""
    for dev in devices:
        try:
            dev.close()
        except Exception:
            pass


def password_listener(pki: Pki, port: int) -> str:
    """Broker configuration lines for a second TLS listener without client certificates, where
    clients connect with a username and password."""
    return f"""
        listener {port} 127.0.0.1
        cafile {pki.ca}
        certfile {pki.server_cert}
        keyfile {pki.server_key}
        require_certificate false
        use_identity_as_username false"""


class DelayProxy:
    """A raw-bytes gRPC proxy in front of a real daemon that holds every answer of one method
    (`slow_method`: Authenticate, a slow daemon at CONNECT; or CheckAcl) for `delay` seconds; the
    other methods pass straight through. `address` is what the broker's plugin is pointed at."""

    METHODS = ("CheckAcl", "ReportStats", "Authenticate")

    def __init__(self, sock_path: Path, upstream: str, delay: float = 0.0, slow_method: str = "Authenticate"):
        from concurrent import futures

        import grpc

        self.delay = delay
        self.next_delays: list[float] = []  # for the next slow calls, in order, then `delay`
        self.lock = threading.Lock()
        self.channel = grpc.insecure_channel(upstream)
        ident = lambda b: b  # noqa: E731 (bytes in, bytes out)
        unary = {name: self.channel.unary_unary(f"/policyd.v1.Policy/{name}", request_serializer=ident,
                                                response_deserializer=ident)
                 for name in self.METHODS}
        watch = self.channel.unary_stream("/policyd.v1.Policy/Watch", request_serializer=ident,
                                          response_deserializer=ident)

        def held(request, context):
            with self.lock:
                delay = self.next_delays.pop(0) if self.next_delays else self.delay
            time.sleep(delay)
            return unary[slow_method](request, timeout=30)

        def passthrough(name):
            return grpc.unary_unary_rpc_method_handler(lambda req, ctx: unary[name](req, timeout=30),
                                                       request_deserializer=ident, response_serializer=ident)

        handlers = {name: passthrough(name) for name in self.METHODS}
        handlers[slow_method] = grpc.unary_unary_rpc_method_handler(held, request_deserializer=ident,
                                                                    response_serializer=ident)
        handlers["Watch"] = grpc.unary_stream_rpc_method_handler(lambda req, ctx: iter(watch(req)),
                                                                 request_deserializer=ident, response_serializer=ident)
        handler = grpc.method_handlers_generic_handler("policyd.v1.Policy", handlers)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), handlers=[handler])
        self.server.add_insecure_port(f"unix:{sock_path}")
        self.server.start()
        os.chmod(sock_path, 0o666)  # the broker runs as `mosquitto`
        self.address = f"unix:{sock_path}"

    def stop(self) -> None:
        self.server.stop(0)
        self.channel.close()
