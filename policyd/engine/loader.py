"""Rules YAML → a validated `PolicySpec`, with every problem located.

The file is read with PyYAML's safe composer (the C one when available),
which builds a node tree carrying line/column marks and never constructs
Python objects from tags. We walk that tree ourselves so that each problem
names file, line, column and key. Anchors/aliases are refused: they are the
vehicle of "billion laughs" expansion and have no use in a rules file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Iterator

import yaml

from . import topics
from .model import ACCESS_WORDS, Problem, SourceRef

try:  # the C composer is much faster on 100,000-identity files
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - libyaml missing
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

MAX_FILE_BYTES = 64 * 1024 * 1024
TEMPLATES = ("%u", "%c")
TOP_LEVEL_KEYS = ("superusers", "users", "groups", "patterns", "anonymous")
RULE_KEYS = ("topic", "access")
GROUP_KEYS = ("members", "rules")
# Characters that make an identity unusable as one topic level.
UNSAFE_IDENTITY_CHARS = frozenset("+#/\x00")


@dataclass(frozen=True)
class RuleSpec:
    topic: str
    access: str  # one of ACCESS_WORDS
    ref: SourceRef

    @property
    def templated(self) -> bool:
        return any(t in self.topic for t in TEMPLATES)


@dataclass(frozen=True)
class GroupSpec:
    name: str
    members: tuple[str, ...]
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
    patterns: tuple[RuleSpec, ...] = ()
    anonymous: tuple[RuleSpec, ...] = ()
    warnings: tuple[Problem, ...] = ()


class PolicyLoadError(Exception):
    """The rules file is not usable; `problems` says every reason."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        errors = [p for p in problems if p.severity == "error"]
        first = str(errors[0]) if errors else "invalid rules file"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(first + more)


def identity_problem(name: str) -> str | None:
    """Why `name` cannot be an identity in a rules file, or None."""
    if not name:
        return "empty identity"
    bad = sorted(set(name) & UNSAFE_IDENTITY_CHARS)
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        return f"identity {name!r} contains {shown}, which can never be a safe topic level"
    return None


class _Reader:
    """Walks a composed YAML tree, collecting problems instead of stopping."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []
        self._seen: set[int] = set()

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
        out = []
        for i, item in self.sequence(node, key):
            rule = self.rule(item, f"{key}[{i}]", pattern=pattern)
            if rule is not None:
                out.append(rule)
        return tuple(out)

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

    def topic_filter(self, node: yaml.Node, key: str, topic: str, *, pattern: bool) -> bool:
        try:
            levels = topics.validate_filter(topic)
        except topics.TopicError as exc:
            self.error(node, key, f"invalid topic filter {topic!r}: {exc}")
            return False
        for level in levels:
            if any(t in level for t in TEMPLATES) and level not in TEMPLATES:
                self.error(node, key, f"template in {level!r} must fill a whole topic level (e.g. /device/%u/#)")
                return False
        if pattern and not any(level in TEMPLATES for level in levels):
            self.error(node, key, f"pattern {topic!r} has no %u or %c: it would apply to every client alike "
                                  "(put it under a user, a group or anonymous instead)")
            return False
        return True

    def document(self, root: yaml.Node | None, sha256: str) -> PolicySpec | None:
        if root is None:
            self.error(None, "", "the rules file is empty (write `users: {}` for a policy that denies everything)")
            return None
        parts: dict[str, object] = {}
        for name, knode, vnode in self.mapping(root, ""):
            if name not in TOP_LEVEL_KEYS:
                self.error(knode, name, f"unknown key {name!r} (expected {', '.join(TOP_LEVEL_KEYS)})")
                continue
            parts[name] = getattr(self, "_section_" + name)(vnode, name)
        if any(p.severity == "error" for p in self.problems):
            return None
        return PolicySpec(file=self.file, sha256=sha256, **parts)  # type: ignore[arg-type]

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

    def _section_patterns(self, node: yaml.Node, key: str) -> tuple[RuleSpec, ...]:
        return self.rules(node, key, pattern=True)

    def _section_anonymous(self, node: yaml.Node, key: str) -> tuple[RuleSpec, ...]:
        rules = self.rules(node, key, pattern=False)
        for rule in rules:
            if "%u" in rule.topic:
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


def parse_text(data: bytes, file: str = "<rules>") -> PolicySpec:
    """Validate rules-file bytes; raise PolicyLoadError naming every problem."""
    reader = _Reader(file)
    if len(data) > MAX_FILE_BYTES:
        reader.error(None, "", f"file is larger than {MAX_FILE_BYTES} bytes")
        raise PolicyLoadError(reader.problems)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        reader.error(None, "", f"not valid UTF-8 at byte {exc.start}")
        raise PolicyLoadError(reader.problems) from None
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        reader.problems.append(Problem(SourceRef(file, line, col, ""), f"YAML syntax: {exc.problem or exc}"))
        raise PolicyLoadError(reader.problems) from None
    except yaml.YAMLError as exc:
        reader.error(None, "", f"YAML: {exc}")
        raise PolicyLoadError(reader.problems) from None
    spec = reader.document(root, hashlib.sha256(data).hexdigest())
    if spec is None:
        raise PolicyLoadError(reader.problems)
    return PolicySpec(**{**spec.__dict__, "warnings": tuple(reader.problems)})


def read_file(path: str | os.PathLike[str]) -> PolicySpec:
    """Read and validate a rules file in one go (one read: no half-written views)."""
    file = os.fspath(path)
    try:
        with open(file, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PolicyLoadError([Problem(SourceRef(file, 0, 0, ""), f"cannot read: {exc.strerror or exc}")]) from None
    return parse_text(data, file)
