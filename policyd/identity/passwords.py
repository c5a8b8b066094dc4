"""Password clients: salted PBKDF2-SHA256 hashes in the rules file (`passwords:`).

    passwords:
      alice: "pbkdf2-sha256$20000$<salt, base64>$<hash, base64>"

Made with `policyd passwd alice` (reads the password from stdin). Verified
with a constant-time compare; an unknown username costs the same hashing
as a wrong password. The password is never logged, stored or cached.
PBKDF2 runs on every CONNECT while the broker waits (Mosquitto's plugin API
is synchronous), so the iteration count trades guessing cost against CONNECT
latency: keep it well under auth_opt_policyd_timeout_ms (docs/identity.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

from .spec import is_empty

SCHEME = "pbkdf2-sha256"
DEFAULT_ITERATIONS = 20_000
MIN_ITERATIONS = 1_000
MAX_ITERATIONS = 10_000_000
SALT_BYTES = 16


@dataclass(frozen=True, repr=False)
class PasswordHash:
    iterations: int
    salt: bytes
    digest: bytes

    def __repr__(self) -> str:  # never print the hash material
        return f"PasswordHash({SCHEME}, {self.iterations} iterations)"

    def matches(self, password: bytes) -> bool:
        candidate = hashlib.pbkdf2_hmac("sha256", password, self.salt, self.iterations, len(self.digest))
        return hmac.compare_digest(candidate, self.digest)


# Hashed in place of a missing user's, so an unknown name takes as long as a wrong password.
_DUMMY = PasswordHash(DEFAULT_ITERATIONS, b"\0" * SALT_BYTES, b"\0" * 32)


def hash_password(password: bytes, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    return "$".join((SCHEME, str(iterations), _b64(salt), _b64(digest)))


def parse_hash(text: str) -> PasswordHash | str:
    """A PasswordHash, or why `text` is not one."""
    parts = text.split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        return f"expected {SCHEME}$ITERATIONS$SALT$HASH (make one with `policyd passwd USER`)"
    if not parts[1].isdigit() or not MIN_ITERATIONS <= int(parts[1]) <= MAX_ITERATIONS:
        return f"iterations must be a number between {MIN_ITERATIONS} and {MAX_ITERATIONS}"
    try:
        salt, digest = _unb64(parts[2]), _unb64(parts[3])
    except ValueError:
        return "salt and hash must be base64"
    if len(salt) < 8 or len(digest) < 16:
        return "salt (8+ bytes) or hash (16+ bytes) too short"
    return PasswordHash(int(parts[1]), salt, digest)


def verify(passwords, username: str, password: bytes) -> bool:
    stored = passwords.get(username)
    ok = (stored or _DUMMY).matches(password)
    return ok and stored is not None


def read_passwords(reader, node, key: str) -> dict[str, PasswordHash]:
    out: dict[str, PasswordHash] = {}
    if is_empty(node):  # `passwords:` with nothing under it
        return out
    for name, knode, vnode in reader.mapping(node, key):
        if reader.identity(knode, f"{key}.{name}") is None:
            continue
        text = reader.text(vnode, f"{key}.{name}")
        parsed = parse_hash(text) if text is not None else None
        if isinstance(parsed, str):
            reader.error(vnode, f"{key}.{name}", parsed)  # the reason only, never the value
        elif parsed is not None:
            out[name] = parsed
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
