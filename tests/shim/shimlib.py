"""Loads the real plugin in-process next to stub_broker.c and drives it.

The stub library is built here (cc) and loaded first with RTLD_GLOBAL, so
the plugin's undefined mosquitto_* symbols resolve to it; then the plugin
.so is loaded and its init/callbacks/cleanup are called like the broker
would, on this (one) thread.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

READ, WRITE, SUBSCRIBE, UNSUBSCRIBE = 1, 2, 4, 8
ALLOW, DENIED = 0, 12                    # MOSQ_ERR_SUCCESS, MOSQ_ERR_ACL_DENIED

ffi = FFI()
ffi.cdef("""
struct mosquitto { const char *id; const char *username; };
struct mosquitto_opt { char *key; char *value; };
int mosquitto_plugin_init(void *identifier, void **userdata, struct mosquitto_opt *options, int option_count);
int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count);
int stub_registered(int event);
int stub_acl_check(struct mosquitto *client, int access, const char *topic);
int stub_disconnect(struct mosquitto *client);
int stub_tick(void);
long stub_tick_request(void);
int stub_log_count(void);
const char *stub_log_line(int i);
void stub_reset(void);
int stub_kicks(void);
int64_t stub_acl_check_loop(struct mosquitto *client, int access, const char *topic, int n, int *allowed);
int64_t stub_heap_bytes(void);
int64_t stub_heap_blocks(void);
int stub_acl_check_timed(struct mosquitto *client, int access, const char *topic, int n, int64_t *out_ns);
int stub_set_certificate(const unsigned char *der, int len);
""")

_libs: dict[str, object] = {}


def plugin_path() -> Path:
    return Path(os.environ.get("POLICYD_PLUGIN", ROOT / "plugin_c" / "build" / "mosquitto_policyd.so"))


def build_stub(out_dir: Path) -> Path:
    out = out_dir / "stub_broker.so"
    flags = os.environ.get("STUB_CFLAGS", "").split()
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-g", "-Wall", "-Wextra", *flags, "-o", str(out),
                    str(HERE / "stub_broker.c"), "-lcrypto"], check=True)
    return out


def load(stub: Path):
    """(stub, plugin) libraries, loaded once per process (the plugin is -z nodelete)."""
    if not _libs:
        _libs["stub"] = ffi.dlopen(str(stub), ffi.RTLD_NOW | ffi.RTLD_GLOBAL)
        _libs["plugin"] = ffi.dlopen(str(plugin_path()), ffi.RTLD_NOW)
    return _libs["stub"], _libs["plugin"]


STAT = re.compile(r"([a-z_]+)=(\d+)")


class Shim:
    """One plugin instance: init with options, checks, disconnects, ticks, cleanup."""

    def __init__(self, stub_so: Path, options: dict[str, str]):
        self.stub, self.lib = load(stub_so)
        self.stub.stub_reset()
        self._keep = []
        self._opts = ffi.new("struct mosquitto_opt[]", max(len(options), 1))
        for i, (key, value) in enumerate(options.items()):
            k, v = ffi.new("char[]", key.encode()), ffi.new("char[]", value.encode())
            self._keep += [k, v]
            self._opts[i].key, self._opts[i].value = k, v
        self._n = len(options)
        self._userdata = ffi.new("void **")
        self._identifier = ffi.new("int *")  # any non-NULL pointer
        rc = self.lib.mosquitto_plugin_init(self._identifier, self._userdata, self._opts, self._n)
        if rc != 0:
            raise RuntimeError(f"plugin init failed ({rc}):\n" + "\n".join(self.logs()))
        self.closed = False

    def client(self, client_id: bytes | str, username: bytes | str | None):
        c = ffi.new("struct mosquitto *")
        cid = ffi.new("char[]", client_id.encode() if isinstance(client_id, str) else client_id)
        self._keep.append(cid)
        c.id = cid
        if username is not None:
            user = ffi.new("char[]", username.encode() if isinstance(username, str) else username)
            self._keep.append(user)
            c.username = user
        self._keep.append(c)
        return c

    def reidentify(self, client, client_id: bytes | str, username: bytes | str | None) -> None:
        """The same struct (the same pointer) with another identity: a freed client's memory
        reused, or Mosquitto's stand-in for a retained message's publisher."""
        cid = ffi.new("char[]", client_id.encode() if isinstance(client_id, str) else client_id)
        self._keep.append(cid)
        client.id = cid
        client.username = ffi.NULL
        if username is not None:
            user = ffi.new("char[]", username.encode() if isinstance(username, str) else username)
            self._keep.append(user)
            client.username = user

    def check(self, client, access: int, topic: str | bytes) -> int:
        return self.stub.stub_acl_check(client, access, topic.encode() if isinstance(topic, str) else topic)

    def allowed(self, client, access: int, topic: str | bytes) -> bool:
        rc = self.check(client, access, topic)
        assert rc in (ALLOW, DENIED), rc
        return rc == ALLOW

    def disconnect(self, client) -> None:
        self.stub.stub_disconnect(client)

    def tick(self) -> None:
        self.stub.stub_tick()

    def logs(self) -> list[str]:
        return [ffi.string(self.stub.stub_log_line(i)).decode(errors="replace")
                for i in range(self.stub.stub_log_count())]

    def stats_lines(self) -> list[dict[str, int]]:
        return [dict((k, int(v)) for k, v in STAT.findall(line)) for line in self.logs() if "checks=" in line]

    def close(self) -> dict[str, int]:
        """Cleans the plugin up and returns the counters of its final stats line."""
        if not self.closed:
            self.closed = True
            self.lib.mosquitto_plugin_cleanup(self._userdata[0], self._opts, self._n)
        return self.stats_lines()[-1]
