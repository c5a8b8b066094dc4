"""Password clients: salted PBKDF2-SHA256 hashes in the rules file (`passwords:`).

    passwords:
      alice: "pbkdf2-sha256$20000$<salt, base64>$<hash, base64>"

Made with `policyd passwd alice` (reads the password from stdin). Mosquitto's
password_file hashes are accepted as they are (`policyd import-passwd`), in
the two forms Mosquitto 2.0 reads (src/password_mosq.c, security_default.c):

      bob: "$7$101$<12-byte salt, base64>$<PBKDF2-HMAC-SHA512, 64 bytes, base64>"
      eve: "$6$<12-byte salt, base64>$<SHA-512 of password then salt, base64>"

so password clients keep their passwords. Verified
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
MOSQUITTO_PBKDF2 = "$7$"   # mosquitto_passwd's default since 2.0 (101 iterations)
MOSQUITTO_SHA512 = "$6$"   # Mosquitto 1.6 and earlier: one salted SHA-512, fast to guess
MOSQUITTO_SALT_BYTES = 12
MOSQUITTO_HASH_BYTES = 64
DEFAULT_ITERATIONS = 20_000
MIN_ITERATIONS = 1_000
MAX_ITERATIONS = 10_000_000
SALT_BYTES = 16


@dataclass(frozen=True, repr=False)
class PasswordHash:
    iterations: int
    salt: bytes
    digest: bytes
    scheme: str = SCHEME  # SCHEME, MOSQUITTO_PBKDF2 or MOSQUITTO_SHA512

    def __repr__(self) -> str:  # never print the hash material
        return f"PasswordHash({self.scheme}, {self.iterations} iterations)"

    def matches(self, password: bytes) -> bool:
        if self.scheme == MOSQUITTO_SHA512:
            candidate = hashlib.sha512(password + self.salt).digest()
        else:
            algorithm = "sha256" if self.scheme == SCHEME else "sha512"
            candidate = hashlib.pbkdf2_hmac(algorithm, password, self.salt, self.iterations, len(self.digest))
        return hmac.compare_digest(candidate, self.digest)


# Hashed in place of a missing user's, so an unknown name takes as long as a wrong password.
_DUMMY = PasswordHash(DEFAULT_ITERATIONS, b"\0" * SALT_BYTES, b"\0" * 32)


def hash_password(password: bytes, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    return "$".join((SCHEME, str(iterations), _b64(salt), _b64(digest)))


def parse_hash(text: str) -> PasswordHash | str:
    """A PasswordHash, or why `text` is not one."""
    if text.startswith((MOSQUITTO_PBKDF2, MOSQUITTO_SHA512)):
        return parse_mosquitto_hash(text)
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


def parse_mosquitto_hash(text: str) -> PasswordHash | str:
    """A hash from Mosquitto's password_file (`$7$ITERATIONS$SALT$HASH` or `$6$SALT$HASH`),
    or why it is not one. Base64 with its `=` padding, as mosquitto_passwd writes it."""
    parts = text.split("$")[1:]
    pbkdf2 = parts[0] == "7"
    if len(parts) != (4 if pbkdf2 else 3) or parts[0] not in ("6", "7"):
        return "expected Mosquitto's $7$ITERATIONS$SALT$HASH or $6$SALT$HASH"
    iterations = 1
    if pbkdf2:
        if not parts[1].isdigit() or not 1 <= int(parts[1]) <= MAX_ITERATIONS:
            return f"iterations must be a number between 1 and {MAX_ITERATIONS}"
        iterations = int(parts[1])
    try:
        salt, digest = _unb64(parts[-2]), _unb64(parts[-1])
    except ValueError:
        return "salt and hash must be base64"
    if len(salt) != MOSQUITTO_SALT_BYTES or len(digest) != MOSQUITTO_HASH_BYTES:
        return f"a Mosquitto hash has a {MOSQUITTO_SALT_BYTES}-byte salt and a {MOSQUITTO_HASH_BYTES}-byte hash"
    return PasswordHash(iterations, salt, digest, MOSQUITTO_PBKDF2 if pbkdf2 else MOSQUITTO_SHA512)


def weakness(parsed: PasswordHash) -> str | None:
    """Why a hash is cheap to guess if stolen (a warning, never a refusal: refusing it would lock
    the client out), or None."""
    if parsed.scheme == MOSQUITTO_SHA512:
        return ("a $6$ hash is one salted SHA-512, cheap to guess if the file leaks: have this client "
                "choose a new password (`policyd passwd`)")
    if parsed.scheme == MOSQUITTO_PBKDF2 and parsed.iterations < MIN_ITERATIONS:
        return (f"{parsed.iterations} PBKDF2 iterations (mosquitto_passwd's default is 101) are cheap to "
                "guess if the file leaks: have this client choose a new password (`policyd passwd`)")
    return None


def verify(passwords, username: str, password: bytes) -> bool:
    stored = passwords.get(username)
    ok = (stored or _DUMMY).matches(password)
    if stored is not None and stored.scheme != SCHEME:
        # An imported Mosquitto hash is much cheaper than the dummy: without this, a fast answer
        # would tell a guesser that the name exists.
        _DUMMY.matches(password)
    return ok and stored is not None


def read_passwords(reader, node, key: str) -> dict[str, PasswordHash]:
    out: dict[str, PasswordHash] = {}
    weak, weak_count = None, 0
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
            if weak is None and weakness(parsed):
                weak = (vnode, f"{key}.{name}", weakness(parsed))
            weak_count += weakness(parsed) is not None
    if weak is not None:  # one line for the section: an imported file may have 100,000 of them
        others = f" (and {weak_count - 1} more entries like it)" if weak_count > 1 else ""
        reader.warn(weak[0], weak[1], weak[2] + others)
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def import_password_file(text: str, file: str):
    """Mosquitto 2.0's password_file → ([(username, hash text, line)], [Problem]).

    Read as security_default.c reads it: a line starting with `#` or without `:` is skipped;
    the username is the text before the first `:` and the hash the text up to the next, both
    trimmed. Entries Mosquitto drops at start (no hash, a hash it cannot decode, such as a
    plain-text password) are left out with a warning: those clients cannot log in there either.
    A name listed twice is an error (which entry Mosquitto checks is not defined).
    """
    from ..engine.model import Problem, SourceRef, identity_problem

    entries: dict[str, tuple[str, int]] = {}
    problems = []

    def problem(line: int, message: str, severity: str = "warning") -> None:
        problems.append(Problem(SourceRef(file, line, 1, ""), message, severity))

    for number, line in enumerate(text.split("\n"), start=1):
        if line.startswith("#") or ":" not in line:
            continue
        fields = [f for f in line.split(":") if f]  # strtok: empty fields are skipped
        if not fields or not fields[0].strip():
            continue
        name = fields[0].strip()
        hashed = fields[1].strip() if len(fields) > 1 else ""
        if not hashed:
            problem(number, f"user {name!r}: no password hash; Mosquitto ignores this line")
            continue
        parsed = parse_mosquitto_hash(hashed) if hashed.startswith("$") else "not a hash (plain text?)"
        if isinstance(parsed, str):
            problem(number, f"user {name!r}: {parsed}; Mosquitto drops this entry, so it is left out")
            continue
        why = identity_problem(name)
        if why:
            problem(number, f"user {name!r}: {why}; policyd refuses such names, so it is left out")
            continue
        if name in entries:
            problem(number, f"user {name!r} is also on line {entries[name][1]}: Mosquitto's choice between "
                            "the two is not defined; keep one", "error")
            continue
        entries[name] = (hashed, number)
    return [(name, hashed, line) for name, (hashed, line) in entries.items()], problems
