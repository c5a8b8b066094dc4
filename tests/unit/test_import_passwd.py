"""Mosquitto password_file hashes, verified natively (policyd/identity/passwords.py)."""

import subprocess
import sys

import pytest

from policyd.engine import PolicyLoadError, parse_text
from policyd.identity import passwords
from policyd.identity.passwords import import_password_file, parse_hash, verify


def mosquitto_passwd(tmp_path, algorithm, user, password) -> str:
    path = tmp_path / f"pw-{algorithm}"
    subprocess.run(["mosquitto_passwd", "-c", "-H", algorithm, "-b", str(path), user, password], check=True)
    return path.read_text().strip().split(":", 1)[1]


@pytest.mark.parametrize("algorithm, prefix", [("sha512-pbkdf2", "$7$101$"), ("sha512", "$6$")])
def test_hashes_made_by_mosquitto_passwd_verify(tmp_path, algorithm, prefix):
    text = mosquitto_passwd(tmp_path, algorithm, "alice", "pässword with spaces")
    assert text.startswith(prefix)
    stored = parse_hash(text)
    assert not isinstance(stored, str), stored
    assert verify({"alice": stored}, "alice", "pässword with spaces".encode())
    assert not verify({"alice": stored}, "alice", b"password with spaces")
    assert not verify({"alice": stored}, "bob", "pässword with spaces".encode())
    assert "pässword" not in repr(stored) and text[-20:] not in repr(stored)


@pytest.mark.parametrize("text, why", [
    ("$7$abc$AAAAAAAAAAAAAAAA$" + "A" * 88, "iterations"),
    ("$7$0$AAAAAAAAAAAAAAAA$" + "A" * 88, "iterations"),
    ("$7$101$AAAA$" + "A" * 88, "12-byte salt"),
    ("$6$AAAAAAAAAAAAAAAA$AAAA", "64-byte hash"),
    ("$6$AAAAAAAAAAAAAAAA$!!!!", "base64"),
    ("$6$101$AAAAAAAAAAAAAAAA$" + "A" * 88, "expected Mosquitto's"),
])
def test_malformed_mosquitto_hashes_say_why(text, why):
    parsed = parse_hash(text)
    assert isinstance(parsed, str) and why in parsed


def test_a_known_user_with_a_cheap_hash_still_pays_the_dummy_hashing(monkeypatch, tmp_path):
    calls = []
    original = passwords.PasswordHash.matches
    monkeypatch.setattr(passwords.PasswordHash, "matches", lambda self, pw: calls.append(self.scheme) or
                        original(self, pw))
    stored = parse_hash(mosquitto_passwd(tmp_path, "sha512-pbkdf2", "alice", "pw"))
    verify({"alice": stored}, "alice", b"pw")
    verify({"alice": stored}, "nobody", b"pw")
    assert calls == ["$7$", passwords.SCHEME, passwords.SCHEME]  # known: own + dummy; unknown: dummy


def test_password_file_read_as_mosquitto_reads_it():
    text = ("# comment\nno colon here\nalice:$6$AAAAAAAAAAAAAAAA$" + "A" * 86 + "==\n"
            "  bob  : $6$AAAAAAAAAAAAAAAA$" + "A" * 86 + "== \ncarol:plaintext\ndave:\nbad/name:$6$AAAAAAAAAAAAAAAA$"
            + "A" * 86 + "==\nalice:$6$BBBBBBBBBBBBBBBB$" + "A" * 86 + "==\n")
    entries, problems = import_password_file(text, "pw")
    assert [(u, line) for u, _, line in entries] == [("alice", 3), ("bob", 4)]
    got = [(p.ref.line, p.severity) for p in problems]
    assert got == [(5, "warning"), (6, "warning"), (7, "warning"), (8, "error")]
    assert "plaintext" not in " ".join(str(p) for p in problems)  # never the value
    assert "also on line 3" in str(problems[-1])


def test_rules_file_accepts_mosquitto_hashes_with_one_warning_for_the_cheap_ones():
    h6 = "$6$AAAAAAAAAAAAAAAA$" + "A" * 86 + "=="
    h7 = "$7$101$AAAAAAAAAAAAAAAA$" + "A" * 86 + "=="
    spec = parse_text(f'users: {{}}\npasswords:\n  a: "{h6}"\n  b: "{h7}"\n  c: "{h7}"\n'.encode(), "r.yaml")
    assert set(spec.passwords) == {"a", "b", "c"}
    weak = [str(w) for w in spec.warnings if "cheap to guess" in str(w)]
    assert len(weak) == 1 and "and 2 more" in weak[0] and "r.yaml:3:" in weak[0]
    with pytest.raises(PolicyLoadError):
        parse_text(b'users: {}\npasswords:\n  a: "$6$AAAA$AAAA"\n', "r.yaml")


def test_cli_writes_the_section_0600_and_exit_codes(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "policyd", *a], capture_output=True, text=True)
    pwfile = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pwfile), "alice", "s3cret"], check=True)
    out = tmp_path / "passwords.yaml"
    proc = run("import-passwd", str(pwfile), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    spec = parse_text(b"users: {}\n" + out.read_bytes(), "r.yaml")
    assert verify(spec.passwords, "alice", b"s3cret")
    pwfile.write_text(pwfile.read_text() * 2)
    proc = run("import-passwd", str(pwfile))
    assert proc.returncode == 1 and "also on line 1" in proc.stderr and proc.stdout == ""
    assert run("import-passwd", str(tmp_path / "missing")).returncode == 2


@pytest.mark.parametrize("command", ["import-passwd", "import-acl"])
def test_cli_names_an_unreadable_or_non_utf8_input(tmp_path, command):
    run = lambda *a: subprocess.run([sys.executable, "-m", "policyd", *a], capture_output=True, text=True)
    latin1 = tmp_path / "latin1"
    latin1.write_bytes(b"user caf\xe9\n")
    missing = tmp_path / "missing"
    bad, absent = run(command, str(latin1)), run(command, str(missing))
    assert bad.returncode == 2 and f"{latin1}: error: not valid UTF-8 at byte 8" in bad.stderr
    assert absent.returncode == 2 and f"{missing}: error: cannot read:" in absent.stderr
