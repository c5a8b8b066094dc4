"""Many daemons, one policy: etcd as the policy source (docs/operations.md, "Fleet layout").

layout.py  the keys and values, and building a policy from them (no I/O)
etcd.py    a small synchronous etcd v3 client
source.py  the daemon side: sync, watch, apply, survive etcd outages
publish.py the operator side: push, device changes, history, rollback
"""


class FleetUnavailable(Exception):
    """Neither etcd nor a saved state has a policy to serve."""
