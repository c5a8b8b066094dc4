"""One grammar: every file the rules reader accepts means what `yaml.safe_load`
says it means, whichever reader (fast users section or YAML path) took it.

The reference is PyYAML's own pure-Python safe loader (a scanner independent of
libyaml's), with its implicit resolvers cut down to null and merge: a rules file
reads every other scalar as text, so `1` or `yes` as a topic is the text "1" or
"yes" on both sides. The generator mixes every YAML line break, each quoting
style and its escapes, comments, flow and block forms, and pieces meant to open
a scalar before a `users:` section and close it after (the smuggling that the
fast reader once fell for).
"""

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyd.engine import PolicyLoadError, parse_text

NULL = "tag:yaml.org,2002:null"
MERGE = "tag:yaml.org,2002:merge"


class TextLoader(yaml.SafeLoader):
    """safe_load, with every scalar text unless YAML says null (or a merge key)."""


TextLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag in (NULL, MERGE)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def reference(text: str):
    """What safe_load reads, as the parts of a policy; raises when it is not one."""
    doc = yaml.load(text, TextLoader)  # noqa: S506 - a SafeLoader subclass
    assert isinstance(doc, dict)

    def rules(items):
        return [(r["topic"], r["access"]) for r in (items or [])]

    return {
        "users": {name: rules(items) for name, items in (doc.get("users") or {}).items()},
        "superusers": list(doc.get("superusers") or []),
        "patterns": rules(doc.get("patterns")),
        "anonymous": rules(doc.get("anonymous")),
        "groups": {name: (list(g.get("members") or []), rules(g.get("rules")))
                   for name, g in (doc.get("groups") or {}).items()},
    }


def ours(spec):
    def rules(items):
        return [(r.topic, r.access) for r in items]

    return {
        "users": {name: rules(items) for name, items in spec.users.items()},
        "superusers": list(spec.superusers),
        "patterns": rules(spec.patterns),
        "anonymous": rules(spec.anonymous),
        "groups": {g.name: (list(g.members), rules(g.rules)) for g in spec.groups},
    }


def load(text: str, fast: bool):
    try:
        return parse_text(text.encode("utf-8"), "rules.yaml", fast=fast)
    except PolicyLoadError:
        return None


def assert_one_grammar(text: str) -> None:
    fast, general = load(text, True), load(text, False)
    if fast is not None and general is not None:
        # Same rules at the same places, whichever reader: line numbers included.
        assert {n: [r.ref for r in rs] for n, rs in fast.users.items()} == \
               {n: [r.ref for r in rs] for n, rs in general.users.items()}, repr(text)
    assert (fast is None) == (general is None), repr(text)
    if fast is None:
        return
    try:
        expected = reference(text)
    except Exception as exc:  # safe_load refuses it, or it is not a policy: so must we
        pytest.fail(f"accepted what safe_load reads as no policy ({exc!r}): {text!r}")
    assert ours(fast) == expected, repr(text)


# --- the generator -----------------------------------------------------------------

BREAKS = ["\n", "\n", "\n", "\r", "\r\n", "\x85", "\u2028", "\u2029"]
NAMES = ["D1", "eve", "dev-2", "'q'", '"D 9"', "'null'", "yes", "1", "~", "null", "<<", "&a D1", "*a", "!!str D1",
         "!!null D1", "? D1", "D1 #c"]
TOPICS = ["a/b", "secret/x", "/device/%u/#", "'#'", '"+/x/#"', "'it''s'", '"a\\tb"', '"x\\ny"', '"x\\Ly"',
          '"x\\Py"', '"x\\Ny"', '"x\\ry"', "null", "1", "!!int 1", "!!str 1", "*a", "&a a/b", "a #b", "'a\u2028b'"]
ACCESS = ["read", "write", "readwrite", "deny", "'read'", '"write"', "rw"]
# Pieces that may open a scalar or collection before the users section and close it after.
OPENERS = ['anonymous: "x', "anonymous: 'x", "superusers: [a,", "groups: {g:", "patterns: |", "patterns: >",
           "# comment", "superusers: [admin]", "---", 'superusers: ["a\\', "anonymous:", "x: !!binary |"]
CLOSERS = ['"', "'", "]", "}", "", "  y", "# end", "...", "- {topic: p/%u, access: read}"]


@st.composite
def rule_line(draw, indent: str) -> list[str]:
    topic, access = draw(st.sampled_from(TOPICS)), draw(st.sampled_from(ACCESS))
    tail = draw(st.sampled_from(["", " # note", "  "]))
    if draw(st.booleans()):
        return [f"{indent}- {{topic: {topic}, access: {access}}}{tail}"]
    return [f"{indent}- topic: {topic}{tail}", f"{indent}  access: {access}"]


@st.composite
def users_lines(draw) -> list[str]:
    lines = ["users:" + draw(st.sampled_from(["", " # devices", " "]))]
    for _ in range(draw(st.integers(1, 3))):
        lines.append("  " + draw(st.sampled_from(NAMES)) + ":")
        for _ in range(draw(st.integers(0, 2))):
            lines += draw(rule_line("    "))
    return lines


@st.composite
def any_file(draw) -> str:
    lines = [draw(st.sampled_from(OPENERS)) for _ in range(draw(st.integers(0, 2)))]
    lines += draw(users_lines())
    lines += [draw(st.sampled_from(CLOSERS)) for _ in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        lines += ["patterns:", "  - {topic: p/%u, access: read}"]
    text = ""
    for line in lines:
        text += line + draw(st.sampled_from(BREAKS))
    return text


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_file())
def test_every_accepted_file_means_what_safe_load_says(text):
    assert_one_grammar(text)


# --- the cases that were found, kept as examples --------------------------------------

# The \r are line breaks to YAML only: the fast reader's line count fell behind YAML's,
# so the scalar seemed to end before the `users:` line it contains.
SMUGGLED = (
    "anonymous:\r\r\r\r\r\n"
    '  - topic: "pub/x\n'
    "users:\n"
    "  eve:\n"
    "    - {topic: secret/x, access: readwrite}\n"
    '"\n'
    "    access: read\n"
)


@pytest.mark.parametrize("text", [
    SMUGGLED,
    SMUGGLED.replace("\r", "\x85"), SMUGGLED.replace("\r", "\u2028"), SMUGGLED.replace("\r", "\u2029"),
    "users:\n  eve:\n    - {topic: a/b, access: read}\r\n",
    "users: {}\n<<: {users: {eve: [{topic: secret/x, access: write}]}}\n",
    "users:\n  eve: [{topic: !!int 1, access: read}]\n",
    "!!null users:\n  eve: [{topic: a, access: read}]\n",
    "a: &x eve\nusers:\n  *x : [{topic: secret/x, access: write}]\n",
    "superusers: [&a eve, *a]\nusers: {}\n",
    "\ufeffusers:\n  eve:\n    - {topic: a/b, access: read}\n",
])
def test_found_cases(text):
    assert_one_grammar(text)


def test_a_users_block_inside_a_quoted_scalar_grants_nothing():
    spec = parse_text(SMUGGLED.encode(), "rules.yaml")
    assert "eve" not in spec.users and spec.reader.startswith("yaml")
    assert ours(spec) == reference(SMUGGLED)


def test_scalar_aliases_are_refused():
    with pytest.raises(PolicyLoadError, match="aliases"):
        parse_text(b"superusers: [&a eve, *a]\nusers: {}\n")


@pytest.mark.parametrize("brk", ["\r", "\r\n", "\x85", "\u2028", "\u2029"])
def test_line_numbers_count_every_yaml_line_break(brk):
    text = f"# one{brk}users:\n  D1:\n    - {{topic: a, access: rw}}\n"
    with pytest.raises(PolicyLoadError) as exc:
        parse_text(text.encode(), "rules.yaml")
    assert "rules.yaml:4:" in str(exc.value.problems[0]), exc.value.problems
