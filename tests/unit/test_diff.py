"""Which reloads kick whom (policyd/engine/diff.py)."""

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.engine import Access, Request, compile_policy, parse_text
from policyd.engine import diff
from policyd.engine.diff import usernames_to_kick

BASE = """
superusers: [admin, dash]
users:
  D1:
    - topic: /device/%u/#
      access: readwrite
  D2:
    - topic: /device/%u/#
      access: readwrite
    - topic: /device/%u/secret
      access: deny
groups:
  sensors:
    members: [D1, D3]
    rules:
      - topic: telemetry/%u/#
        access: write
patterns:
  - topic: /pattern/%u/#
    access: readwrite
anonymous:
  - topic: public/#
    access: read
"""


def policy(text: str):
    return compile_policy(parse_text(text.encode(), "rules.yaml"))


def kicks(old: str, new: str) -> set[str]:
    return set(usernames_to_kick(policy(old), policy(new)))


def test_identical_file_kicks_nobody():
    assert kicks(BASE, BASE) == set()


def test_reordered_and_moved_rules_kick_nobody():
    moved = BASE.replace("""    - topic: /device/%u/#
      access: readwrite
    - topic: /device/%u/secret
      access: deny""", """    - topic: /device/%u/secret
      access: deny
    - topic: /device/%u/#
      access: readwrite""")
    assert moved != BASE
    assert kicks(BASE, "# a comment\n\n" + moved) == set()


def test_user_removed_is_kicked():
    new = BASE.replace("""  D1:
    - topic: /device/%u/#
      access: readwrite
""", "")
    assert kicks(BASE, new) == {"D1"}


def test_own_rule_changed_is_kicked():
    assert kicks(BASE, BASE.replace("/device/%u/#\n      access: readwrite\n  D2", "/device/%u/#\n      access: read\n  D2")) == {"D1"}


def test_deny_added_is_kicked_deny_removed_is_not():
    added = BASE.replace("  D1:\n", "  D1:\n    - topic: /device/%u/x\n      access: deny\n")
    assert kicks(BASE, added) == {"D1"}
    removed = BASE.replace("    - topic: /device/%u/secret\n      access: deny\n", "")
    assert kicks(BASE, removed) == set()


def test_allow_added_kicks_nobody():
    added = BASE.replace("  D1:\n", "  D1:\n    - topic: extra/#\n      access: read\n")
    assert kicks(BASE, added) == set()


def test_group_member_removed_and_group_rule_changed():
    assert kicks(BASE, BASE.replace("members: [D1, D3]", "members: [D1]")) == {"D3"}
    assert kicks(BASE, BASE.replace("telemetry/%u/#", "telemetry/%u/x")) == {"D1", "D3"}


def test_superuser_removed_is_kicked_added_is_not():
    assert kicks(BASE, BASE.replace("[admin, dash]", "[admin]")) == {"dash"}
    assert kicks(BASE, BASE.replace("[admin, dash]", "[admin, dash, D1]")) == set()


def test_superuser_demoted_to_user_is_kicked():
    new = BASE.replace("[admin, dash]", "[admin]").replace("users:\n", "users:\n  dash:\n    - topic: '#'\n      access: read\n")
    assert kicks(BASE, new) == {"dash"}


def test_new_user_with_own_deny_is_kicked_new_user_with_allows_is_not():
    assert kicks(BASE, BASE.replace("users:\n", "users:\n  D9:\n    - topic: a/#\n      access: read\n")) == set()
    assert kicks(BASE, BASE.replace("users:\n", "users:\n  D9:\n    - topic: /pattern/%u/x\n      access: deny\n")) == {"D9"}


def test_pattern_and_anonymous_changes_that_take_access_kick_their_whole_class():
    from policyd.engine.diff import KICK_ALL_NAMED, KICK_ANONYMOUS
    narrower = BASE.replace("/pattern/%u/#", "/pattern/%u/only")
    assert kicks(BASE, narrower) == {KICK_ALL_NAMED}
    assert kicks(BASE, BASE.replace("public/#", "public/x")) == {KICK_ANONYMOUS}
    # adding an allow rule kicks nobody (a changed rule counts as removed + added)
    wider = BASE.replace("patterns:\n", "patterns:\n  - topic: extra/%u\n    access: read\n")
    assert wider != BASE and kicks(BASE, wider) == set()


def test_certificate_and_identity_changes_that_may_take_access_kick_every_named_client():
    from policyd.engine.diff import KICK_ALL_NAMED
    entry = "certificates:\n  ops:\n    match: {OU: ops}\n    rules:\n      - {topic: 'ops/#', access: readwrite}\n"
    assert kicks(BASE, BASE + entry) == set()
    assert kicks(BASE + entry, BASE) == {KICK_ALL_NAMED}
    assert kicks(BASE + entry, BASE + entry.replace("ops}", "opz}")) == {KICK_ALL_NAMED}
    bound = BASE + "identity:\n  client_id: '%u'\n"
    assert kicks(BASE, bound) == {KICK_ALL_NAMED}
    assert kicks(bound, BASE) == set()


def test_unrelated_user_change_kicks_only_that_user():
    new = BASE.replace("/device/%u/secret", "/device/%u/other")
    assert kicks(BASE, new) == {"D2"}


# --- property: whoever loses an allowed action is in the kick list ----------

TOPICS = ["a", "a/b", "a/+", "a/#", "#", "b/%u", "b/%u/#", "c/+/d"]
WORDS = ["read", "write", "readwrite", "deny"]
NAMES = ["u1", "u2", "u3"]
PROBES = ["a", "a/b", "a/c", "b/u1", "b/u2/x", "c/q/d", "z", "a/u1", "a/u2", "a/u3", "b/u3"]

rules_st = st.lists(st.tuples(st.sampled_from(TOPICS), st.sampled_from(WORDS)), max_size=4)
policy_st = st.fixed_dictionaries({
    "order": st.sampled_from(["deny-first", "mosquitto"]),
    "superusers": st.lists(st.sampled_from(NAMES), unique=True, max_size=2),
    "users": st.dictionaries(st.sampled_from(NAMES), rules_st, max_size=3),
})


def render(spec) -> str:
    lines = [f"order: {spec['order']}", f"superusers: [{', '.join(spec['superusers'])}]",
             "users:" if spec["users"] else "users: {}"]
    for name, rules in spec["users"].items():
        lines.append(f"  {name}:" if rules else f"  {name}: []")
        lines += [f"    - {{topic: '{t}', access: {a}}}" for t, a in rules]
    # the same patterns in both files; their deny meets the users' rules differently in each order
    lines += ["patterns:", "  - {topic: 'p/%u', access: readwrite}", "  - {topic: 'a/%u', access: deny}",
              "  - {topic: 'b/%u', access: deny}"]
    return "\n".join(lines) + "\n"


def allowed_actions(p, name):
    return {(topic, access) for topic, access in itertools.product(PROBES, (Access.READ, Access.WRITE))
            if p.decide(Request(name, "cid", topic, access)).allowed}


@settings(max_examples=300, deadline=None)
@given(policy_st, policy_st)
def test_kick_list_covers_every_identity_that_lost_an_action(old_spec, new_spec):
    old, new = policy(render(old_spec)), policy(render(new_spec))
    kicked = usernames_to_kick(old, new)
    for name in NAMES:
        if allowed_actions(old, name) - allowed_actions(new, name):
            assert name in kicked, (name, render(old_spec), render(new_spec))


def render_regular(spec) -> str:
    """As render(), in the fast reader's form wherever a topic can be written plain."""
    lines = [f"order: {spec['order']}", f"superusers: [{', '.join(spec['superusers'])}]",
             "users:" if spec["users"] else "users: {}"]
    for name, rules in spec["users"].items():
        lines.append(f"  {name}:")
        for t, a in rules:
            lines += [f"    - topic: {t}", f"      access: {a}"] if t != "#" else [f"    - {{topic: '#', access: {a}}}"]
    # the same patterns in both files; their deny meets the users' rules differently in each order
    lines += ["patterns:", "  - {topic: 'p/%u', access: readwrite}", "  - {topic: 'a/%u', access: deny}",
              "  - {topic: 'b/%u', access: deny}"]
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None)
@given(policy_st, policy_st)
def test_kick_list_is_the_same_whichever_reader_read_the_files(old_spec, new_spec):
    old_text, new_text = render_regular(old_spec), render_regular(new_spec)

    def read(text, fast):
        return compile_policy(parse_text(text.encode(), "rules.yaml", fast=fast))

    by_text = usernames_to_kick(read(old_text, True), read(new_text, True))
    by_rules = usernames_to_kick(read(old_text, False), read(new_text, False))
    assert by_text == by_rules, (old_text, new_text)


def test_text_shortcut_is_taken_for_large_regular_files():
    blocks = [f"  D{i}:\n    - topic: /device/%u/#\n      access: readwrite\n" for i in range(50)]
    old = policy("users:\n" + "".join(blocks))
    new = policy("users:\n" + "".join(blocks[:10] + blocks[11:]).replace("D20:\n    - topic: /device",
                                                                            "D20:\n    - topic: /other"))
    assert old.reader == new.reader == "fast"
    assert sorted(diff._maybe_changed(old, new, diff._by_text(old, new))) == ["D10", "D20"]  # noqa: SLF001 - only these are compared
    assert usernames_to_kick(old, new) == {"D10", "D20"}
