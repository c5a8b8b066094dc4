"""Rules YAML → a validated `PolicySpec`, with every problem located.

The file is read with PyYAML's safe composer (the C one when available),
which builds a node tree carrying line/column marks and never constructs
Python objects from tags. We walk that tree ourselves so that each problem
names file, line, column and key. A `users` section in the regular form is
read by fastusers.py instead (same result, several times faster on large
files); any problem sends the whole file down the YAML path for reporting.
Both read a file exactly as `yaml.safe_load` does, or refuse it: aliases (the
vehicle of "billion laughs" expansion), explicit tags and merge keys are refused
(fastyaml.outside_the_schema), and the fast reader leaves every file with a line
break other than `\n` to the YAML path (tests/unit/test_one_grammar.py).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Iterator

import yaml

from ..identity.passwords import read_passwords
from ..identity.spec import IdentitySpec, Revocations, read_identity, read_revoked
from . import topics
from .fastusers import Miss, read_users_section, rest_is_separate
from .fastyaml import MAP_TAG, NULL_TAG, STR_TAG, compose, no_gc, outside_the_schema, release
from .model import ACCESS_WORDS, DENY_FIRST, MOSQUITTO, ORDERS, UNSAFE_IDENTITY_CHARS, Problem, RuleSpec, SourceRef, identity_problem  # noqa: F401 - re-exported
from .shadow import shadow_warnings
from .templates import NEEDS_FILTER_CHECK, TEMPLATES, rule_filter_problem

MAX_FILE_BYTES = 64 * 1024 * 1024
TOP_LEVEL_KEYS = ("order", "superusers", "users", "groups", "certificates", "patterns", "anonymous",
                  "identity", "revoked", "passwords")  # the last three: policyd.identity
RULE_KEYS = ("topic", "access")
GROUP_KEYS = ("members", "rules")
CERTIFICATE_KEYS = ("match", "rules")
# Certificate subject attributes a `certificates` entry may match on.
CERT_ATTRIBUTES = ("O", "OU", "C", "ST", "L", "DC")


@dataclass(frozen=True)
class GroupSpec:
    name: str
    members: tuple[str, ...]
    rules: tuple[RuleSpec, ...]
    ref: SourceRef


@dataclass(frozen=True)
class CertificateSpec:
    """Rules for clients whose certificate has every listed attribute value."""

    name: str
    match: tuple[tuple[str, tuple[str, ...]], ...]  # (attribute, accepted values); all must hold
    rules: tuple[RuleSpec, ...]
    ref: SourceRef


@dataclass(frozen=True)
class PolicySpec:
    """A rules file that passed validation, still in source form."""

    file: str
    sha256: str
    superusers: tuple[str, ...] = ()
    users: dict[str, tuple[RuleSpec, ...]] = field(default_factory=dict)
    groups: tuple[GroupSpec, ...] = ()
    certificates: tuple[CertificateSpec, ...] = ()
    patterns: tuple[RuleSpec, ...] = ()
    anonymous: tuple[RuleSpec, ...] = ()
    warnings: tuple[Problem, ...] = ()
    identity: IdentitySpec = IdentitySpec()   # certificate → identity at CONNECT (docs/identity.md)
    revoked: Revocations = Revocations()      # certificates refused at CONNECT and kicked on reload
    passwords: dict = field(default_factory=dict)  # username -> PasswordHash (password clients)
    order: str = DENY_FIRST                   # model.ORDERS: how the rule sets are checked
    # How the users section was read: "fast" (engine/fastusers.py) or "yaml: <why not fast>".
    reader: str = field(default="yaml", compare=False)
    # Fast reader only: each identity's block as written (the kick diff's shortcut).
    user_sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


class PolicyLoadError(Exception):
    """The rules file is not usable; `problems` says every reason."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        errors = [p for p in problems if p.severity == "error"]
        first = str(errors[0]) if errors else "invalid rules file"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(first + more)


class _Reader:
    """Walks a composed YAML tree, collecting problems instead of stopping."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []
        self._seen: set[int] = set()
        self.order = DENY_FIRST  # read before the other sections: it changes what patterns may be

    def ref(self, node: yaml.Node | None, key: str) -> SourceRef:
        if node is None:
            return SourceRef(self.file, 0, 0, key)
        return SourceRef(self.file, node.start_mark.line + 1, node.start_mark.column + 1, key)

    def error(self, node: yaml.Node | None, key: str, message: str) -> None:
        self.problems.append(Problem(self.ref(node, key), message))

    def warn(self, node: yaml.Node | None, key: str, message: str) -> None:
        self.problems.append(Problem(self.ref(node, key), message, "warning"))

    def _first_visit(self, node: yaml.Node, key: str) -> bool:
        if id(node) in self._seen:
            self.error(node, key, "YAML aliases (*name) are not allowed in a rules file")
            return False
        self._seen.add(id(node))
        return True

    def mapping(self, node: yaml.Node, key: str) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, key, f"expected a mapping, found {_kind(node)}")
            return
        if not self._first_visit(node, key):
            return
        seen: set[str] = set()
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                self.error(knode, key, "mapping keys must be plain text")
                continue
            name = knode.value
            if name in seen:
                self.error(knode, _join(key, name), f"duplicate key {name!r}")
                continue
            seen.add(name)
            yield name, knode, vnode

    def sequence(self, node: yaml.Node, key: str) -> Iterator[tuple[int, yaml.Node]]:
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return  # `patterns:` with nothing under it is an empty list
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, key, f"expected a list, found {_kind(node)}")
            return
        if not self._first_visit(node, key):
            return
        yield from enumerate(node.value)

    def text(self, node: yaml.Node, key: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag.endswith(":null"):
            self.error(node, key, f"expected text, found {_kind(node)}")
            return None
        return node.value

    def identity(self, node: yaml.Node, key: str) -> str | None:
        name = self.text(node, key)
        if name is None:
            return None
        why = identity_problem(name)
        if why:
            self.error(node, key, why)
            return None
        return name

    # --- the rules-file schema -------------------------------------------

    def rules(self, node: yaml.Node, key: str, *, pattern: bool) -> tuple[RuleSpec, ...]:
        if not pattern and type(node) is yaml.SequenceNode and id(node) not in self._seen:
            self._seen.add(id(node))  # the common case, without the generic walk's generators
            return tuple(r for i, item in enumerate(node.value) if (r := self._any_rule(item, key, i)) is not None)
        out = []
        for i, item in self.sequence(node, key):
            rule = self.rule(item, f"{key}[{i}]", pattern=pattern)
            if rule is not None:
                out.append(rule)
        return tuple(out)

    def _any_rule(self, node: yaml.Node, key: str, index: int) -> RuleSpec | None:
        plain = self._plain_rule(node)
        if plain is None:
            return self.rule(node, f"{key}[{index}]", pattern=False)
        mark = node.start_mark
        return RuleSpec(plain[0], plain[1], SourceRef(self.file, mark.line + 1, mark.column + 1, f"{key}[{index}]"))

    def rule(self, node: yaml.Node, key: str, *, pattern: bool) -> RuleSpec | None:
        fields: dict[str, tuple[yaml.Node, str | None]] = {}
        ok = isinstance(node, yaml.MappingNode)
        for name, knode, vnode in self.mapping(node, key):
            if name not in RULE_KEYS:
                self.error(knode, _join(key, name), f"unknown key {name!r} (expected {', '.join(RULE_KEYS)})")
                ok = False
                continue
            fields[name] = (vnode, self.text(vnode, _join(key, name)))
        if not ok:
            return None
        for required in RULE_KEYS:
            if required not in fields:
                self.error(node, key, f"missing {required!r}")
                ok = False
        if not ok or any(v is None for _, v in fields.values()):
            return None
        tnode, topic = fields["topic"]
        anode, access = fields["access"]
        topic_ok = self.topic_filter(tnode, _join(key, "topic"), topic, pattern=pattern)
        if access not in ACCESS_WORDS:
            self.error(anode, _join(key, "access"), f"unknown access {access!r} (expected {', '.join(ACCESS_WORDS)})")
            return None
        if not topic_ok:
            return None
        return RuleSpec(topic, access, self.ref(node, key))

    def _plain_rule(self, node: yaml.Node) -> tuple[str, str] | None:
        """(topic, access) of the common `{topic: a/b, access: read}` rule: no wildcard, template,
        `%` or NUL, nothing missing or extra. None sends the rule through the full checks above;
        this only skips work on 100,000-rule files, it accepts nothing they would refuse."""
        if type(node) is not yaml.MappingNode or len(node.value) != 2 or id(node) in self._seen:
            return None
        (k1, v1), (k2, v2) = node.value
        if not (type(k1) is type(k2) is type(v1) is type(v2) is yaml.ScalarNode
                and v1.tag == v2.tag == STR_TAG):
            return None
        if k1.value == "topic" and k2.value == "access":
            topic, access = v1.value, v2.value
        elif k1.value == "access" and k2.value == "topic":
            topic, access = v2.value, v1.value
        else:
            return None
        if (access not in ACCESS_WORDS or not topic or 4 * len(topic) > topics.MAX_TOPIC_BYTES
                or not NEEDS_FILTER_CHECK.isdisjoint(topic)):
            return None
        self._seen.add(id(node))
        return topic, access

    def topic_filter(self, node: yaml.Node, key: str, topic: str, *, pattern: bool) -> bool:
        why = rule_filter_problem(topic)
        if why is not None:
            self.error(node, key, why)
            return False
        if pattern and not any(level in TEMPLATES for level in topic.split("/")) and self.order != MOSQUITTO:
            self.error(node, key, f"pattern {topic!r} has no %u or %c: it would apply to every client alike "
                                  "(put it under a user, a group or anonymous instead)")
            return False
        return True

    def document(self, root: yaml.Node | None, sha256: str,
                 users: dict[str, tuple[RuleSpec, ...]] | None = None) -> PolicySpec | None:
        """The spec, or None after recording problems. `users`: the section as
        the fast reader read it (absent from `root`)."""
        if root is None:
            self.error(None, "", "the rules file is empty (write `users: {}` for a policy that denies everything)")
            return None
        parts: dict[str, object] = {} if users is None else {"users": users}
        self._read_order(root)
        for name, knode, vnode in self.mapping(root, ""):
            if name not in TOP_LEVEL_KEYS:
                self.error(knode, name, f"unknown key {name!r} (expected {', '.join(TOP_LEVEL_KEYS)})")
                continue
            parts[name] = getattr(self, "_section_" + name)(vnode, name)
        if any(p.severity == "error" for p in self.problems):
            return None
        return PolicySpec(file=self.file, sha256=sha256, **parts)  # type: ignore[arg-type]

    def _read_order(self, root: yaml.Node) -> None:
        if isinstance(root, yaml.MappingNode):
            for knode, vnode in root.value:
                if isinstance(knode, yaml.ScalarNode) and knode.value == "order" and isinstance(vnode, yaml.ScalarNode):
                    self.order = vnode.value

    def _section_order(self, node: yaml.Node, key: str) -> str:
        word = self.text(node, key)
        if word is not None and word not in ORDERS:
            self.error(node, key, f"unknown order {word!r} (expected {', '.join(ORDERS)})")
        return word or DENY_FIRST

    def _section_superusers(self, node: yaml.Node, key: str) -> tuple[str, ...]:
        names = []
        for i, item in self.sequence(node, key):
            name = self.identity(item, f"{key}[{i}]")
            if name is not None:
                names.append(name)
        return tuple(names)

    def _section_users(self, node: yaml.Node, key: str) -> dict[str, tuple[RuleSpec, ...]]:
        users: dict[str, tuple[RuleSpec, ...]] = {}
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return users
        for name, knode, vnode in self.mapping(node, key):
            if self.identity(knode, _join(key, name)) is not None:
                users[name] = self.rules(vnode, _join(key, name), pattern=False)
        return users

    def _section_groups(self, node: yaml.Node, key: str) -> tuple[GroupSpec, ...]:
        groups = []
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return ()
        for name, knode, vnode in self.mapping(node, key):
            gkey = _join(key, name)
            members: tuple[str, ...] = ()
            rules: tuple[RuleSpec, ...] = ()
            for field_name, fknode, fvnode in self.mapping(vnode, gkey):
                if field_name == "members":
                    members = self._section_superusers(fvnode, _join(gkey, "members"))
                elif field_name == "rules":
                    rules = self.rules(fvnode, _join(gkey, "rules"), pattern=False)
                else:
                    self.error(fknode, _join(gkey, field_name),
                               f"unknown key {field_name!r} (expected {', '.join(GROUP_KEYS)})")
            groups.append(GroupSpec(name, members, rules, self.ref(vnode, gkey)))
        return tuple(groups)

    def _section_certificates(self, node: yaml.Node, key: str) -> tuple[CertificateSpec, ...]:
        entries = []
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return ()
        for name, _knode, vnode in self.mapping(node, key):
            ekey = _join(key, name)
            match: tuple[tuple[str, tuple[str, ...]], ...] = ()
            rules: tuple[RuleSpec, ...] = ()
            for field_name, fknode, fvnode in self.mapping(vnode, ekey):
                if field_name == "match":
                    match = self.attribute_match(fvnode, _join(ekey, "match"))
                elif field_name == "rules":
                    rules = self.rules(fvnode, _join(ekey, "rules"), pattern=False)
                else:
                    self.error(fknode, _join(ekey, field_name),
                               f"unknown key {field_name!r} (expected {', '.join(CERTIFICATE_KEYS)})")
            if not match and isinstance(vnode, yaml.MappingNode):
                self.error(vnode, _join(ekey, "match"), "a certificates entry needs a non-empty `match` "
                                                        "(an empty one would match every client)")
            entries.append(CertificateSpec(name, match, rules, self.ref(vnode, ekey)))
        return tuple(entries)

    def attribute_match(self, node: yaml.Node, key: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
        out = []
        for attr, knode, vnode in self.mapping(node, key):
            akey = _join(key, attr)
            if attr not in CERT_ATTRIBUTES:
                self.error(knode, akey, f"unknown certificate attribute {attr!r} (expected {', '.join(CERT_ATTRIBUTES)})")
                continue
            if isinstance(vnode, yaml.SequenceNode):
                values = tuple(v for i, item in self.sequence(vnode, akey)
                               if (v := self.text(item, f"{akey}[{i}]")) is not None)
            else:
                value = self.text(vnode, akey)
                values = (value,) if value is not None else ()
            if not values:
                self.error(vnode, akey, "list at least one accepted value")
                continue
            out.append((attr, values))
        return tuple(out)

    def _section_identity(self, node: yaml.Node, key: str) -> IdentitySpec:
        return read_identity(self, node, key)

    def _section_revoked(self, node: yaml.Node, key: str) -> Revocations:
        return read_revoked(self, node, key)

    def _section_passwords(self, node: yaml.Node, key: str) -> dict:
        return read_passwords(self, node, key)

    def _section_patterns(self, node: yaml.Node, key: str) -> tuple[RuleSpec, ...]:
        return self.rules(node, key, pattern=True)

    def _section_anonymous(self, node: yaml.Node, key: str) -> tuple[RuleSpec, ...]:
        rules = self.rules(node, key, pattern=False)
        for rule in rules:
            if "%u" in rule.templates:
                self.problems.append(Problem(rule.ref, "%u has no value for anonymous clients: as an allow rule it never matches, as a deny rule it denies every anonymous check", "warning"))
        return rules


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _kind(node: yaml.Node | None) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node is None or node.tag.endswith(":null"):
        return "nothing"
    return f"{node.value!r}"


def parse_text(data: bytes, file: str = "<rules>", *, fast: bool = True,
               interruptible: bool = False) -> PolicySpec:
    """Validate rules-file bytes; raise PolicyLoadError naming every problem.

    `fast=False` reads the users section with libyaml even when the fast
    reader could (the tests compare the two). `interruptible`: where libyaml
    composes, let other threads run meanwhile (the daemon; fastyaml.py)."""
    with no_gc():
        return _parse(data, file, fast, interruptible)


def _parse(data: bytes, file: str, fast: bool, interruptible: bool) -> PolicySpec:
    reader = _Reader(file)
    if len(data) > MAX_FILE_BYTES:
        reader.error(None, "", f"file is larger than {MAX_FILE_BYTES} bytes")
        raise PolicyLoadError(reader.problems)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        reader.error(None, "", f"not valid UTF-8 at byte {exc.start}")
        raise PolicyLoadError(reader.problems) from None
    sha256 = hashlib.sha256(data).hexdigest()
    how = "yaml: not tried"
    if fast:
        spec = _parse_fast(text, file, sha256)
        if isinstance(spec, PolicySpec):
            return spec
        how = f"yaml: {spec}"
    try:
        root = compose(text, interruptible=interruptible)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        reader.problems.append(Problem(SourceRef(file, line, col, ""), f"YAML syntax: {exc.problem or exc}"))
        raise PolicyLoadError(reader.problems) from None
    except yaml.YAMLError as exc:
        reader.error(None, "", f"YAML: {exc}")
        raise PolicyLoadError(reader.problems) from None
    for node, why in outside_the_schema(root, text):
        reader.error(node, "", why)
    spec = reader.document(root, sha256) if not reader.problems else None
    if interruptible:
        release(root)
    if spec is None:
        raise PolicyLoadError(reader.problems)
    return _finish(spec, reader, reader=how)


def _parse_fast(text: str, file: str, sha256: str) -> PolicySpec | Miss:
    """The spec via engine/fastusers.py, or why that does not apply. Only a file
    with no problem at all is taken: every error is reported by the YAML path."""
    section = read_users_section(text, file)
    if isinstance(section, Miss):
        return section
    try:
        root = compose(section.rest)
    except yaml.YAMLError:
        return Miss(0, "the rest of the file is not valid YAML")
    if root is None or (isinstance(root, yaml.ScalarNode) and root.value == "" and root.tag == NULL_TAG):
        root = yaml.MappingNode(MAP_TAG, [])  # nothing but the users section (an empty `---` document)
    if not isinstance(root, yaml.MappingNode) or not rest_is_separate(root, section):
        return Miss(0, "the rest of the file reaches into the users section")
    if any(isinstance(k, yaml.ScalarNode) and k.value == "users" for k, _ in root.value):
        return Miss(0, "a second `users` key")
    if next(outside_the_schema(root, section.rest), None) is not None:
        return Miss(0, "an alias, a tag or a merge key")
    reader = _Reader(file)
    spec = reader.document(root, sha256, users=section.users)
    if spec is None:
        return Miss(0, "the file has problems")
    return _finish(spec, reader, reader="fast", user_sources=section.sources)


def _finish(spec: PolicySpec, walker: _Reader, **extra) -> PolicySpec:
    warnings = tuple(walker.problems) + tuple(shadow_warnings(spec))
    return PolicySpec(**{**spec.__dict__, "warnings": warnings, **extra})


def read_rules_bytes(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes in one read (no half-written views); PolicyLoadError if unreadable.
    Reads one byte past the limit so that parse_text can refuse an oversized file."""
    file = os.fspath(path)
    try:
        with open(file, "rb") as fh:
            return fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PolicyLoadError([Problem(SourceRef(file, 0, 0, ""), f"cannot read: {exc.strerror or exc}")]) from None


def read_file(path: str | os.PathLike[str]) -> PolicySpec:
    """Read and validate a rules file in one go."""
    return parse_text(read_rules_bytes(path), os.fspath(path))
