"""Policy unit tests (`policyd test`): expected decisions kept next to the rules.

A test file is a YAML list; each entry is one request and the expected answer:

    - name: device writes its own telemetry     # optional
      username: Device123                       # omit or null: anonymous client
      clientid: c1                              # optional
      topic: /device/Device123/t
      access: write                             # read | write | subscribe | unsubscribe
      expect: allow                             # allow | deny
      attributes: {OU: [sensors]}               # optional certificate attributes

Every problem in the file is reported with file:line:column:key, like rules files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import yaml

from .fastyaml import compose
from .loader import MAX_FILE_BYTES, CERT_ATTRIBUTES, PolicyLoadError, _join, _Reader
from .model import Access, Decision, Problem, Request, SourceRef
from .policy import CompiledPolicy

CASE_KEYS = ("name", "username", "clientid", "topic", "access", "expect", "attributes")
REQUIRED = ("topic", "access", "expect")
EXPECT = ("allow", "deny")
DEFAULT_CLIENTID = "policyd-test"


@dataclass(frozen=True)
class PolicyTest:
    name: str
    request: Request
    expect_allow: bool
    ref: SourceRef


@dataclass(frozen=True)
class Outcome:
    test: PolicyTest
    decision: Decision

    @property
    def passed(self) -> bool:
        return self.decision.allowed == self.test.expect_allow

    def describe(self) -> str:
        t = self.test
        who = f"username={t.request.username!r}" if t.request.username is not None else "anonymous"
        expected = "allow" if t.expect_allow else "deny"
        return (f"{t.ref.file}:{t.ref.line}:{t.ref.column}: {t.name}: {who} clientid={t.request.clientid!r} "
                f"{t.request.access.name.lower()} {t.request.topic!r}: expected {expected}, got "
                f"{self.decision.describe()}")


class _CaseReader(_Reader):
    def cases(self, root: Optional[yaml.Node]) -> list[PolicyTest]:
        if root is None:
            self.error(None, "", "the test file is empty (expected a list of test cases)")
            return []
        out = []
        for i, node in self.sequence(root, ""):
            case = self.case(node, f"[{i}]")
            if case is not None:
                out.append(case)
        return out

    def case(self, node: yaml.Node, key: str) -> Optional[PolicyTest]:
        before = len(self.problems)
        values: dict[str, object] = {}
        for name, knode, vnode in self.mapping(node, key):
            fkey = _join(key, name)
            if name not in CASE_KEYS:
                self.error(knode, fkey, f"unknown key {name!r} (expected {', '.join(CASE_KEYS)})")
            elif name == "attributes":
                values[name] = self.attributes(vnode, fkey)
            elif name == "username" and isinstance(vnode, yaml.ScalarNode) and vnode.tag.endswith(":null"):
                values[name] = None
            else:
                values[name] = self.field(name, vnode, fkey)
        for required in REQUIRED:
            if isinstance(node, yaml.MappingNode) and required not in values:
                self.error(node, key, f"missing {required!r}")
        if len(self.problems) > before:
            return None
        ref = self.ref(node, key)
        request = Request(values.get("username"), values.get("clientid", DEFAULT_CLIENTID),  # type: ignore[arg-type]
                          values["topic"], values["access"], values.get("attributes", {}))  # type: ignore[arg-type]
        return PolicyTest(str(values.get("name", f"test {key}")), request, values["expect"] == "allow", ref)

    def field(self, name: str, node: yaml.Node, key: str) -> object:
        text = self.text(node, key)
        if text is None:
            return None
        if name == "access":
            try:
                return Access.parse(text)
            except ValueError as exc:
                self.error(node, key, str(exc))
        elif name == "expect" and text not in EXPECT:
            self.error(node, key, f"expect must be allow or deny, not {text!r}")
        return text

    def attributes(self, node: yaml.Node, key: str) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for attr, knode, vnode in self.mapping(node, key):
            akey = _join(key, attr)
            if attr not in CERT_ATTRIBUTES:
                self.error(knode, akey, f"unknown certificate attribute {attr!r} (expected {', '.join(CERT_ATTRIBUTES)})")
                continue
            items = [n for _, n in self.sequence(vnode, akey)] if isinstance(vnode, yaml.SequenceNode) else [vnode]
            out[attr] = tuple(v for n in items if (v := self.text(n, akey)) is not None)
        return out


def parse_tests(data: bytes, file: str = "<tests>") -> list[PolicyTest]:
    """The test cases of a test file; raises PolicyLoadError naming every problem."""
    reader = _CaseReader(file)
    if len(data) > MAX_FILE_BYTES:
        reader.error(None, "", f"file is larger than {MAX_FILE_BYTES} bytes")
        raise PolicyLoadError(reader.problems)
    try:
        root = compose(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        reader.error(None, "", f"not valid UTF-8 at byte {exc.start}")
        raise PolicyLoadError(reader.problems) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise PolicyLoadError([Problem(SourceRef(file, line, col, ""), f"YAML syntax: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        reader.error(None, "", f"YAML: {exc}")
        raise PolicyLoadError(reader.problems) from None
    cases = reader.cases(root)
    if reader.problems:
        raise PolicyLoadError(reader.problems)
    return cases


def run_tests(policy: CompiledPolicy, cases: list[PolicyTest]) -> list[Outcome]:
    """Decide every case (with its explanation, so a failure can name the deciding rule)."""
    return [Outcome(case, policy.explain(case.request)) for case in cases]
