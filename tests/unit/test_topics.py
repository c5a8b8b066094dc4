import pytest
from hypothesis import given, strategies as st

from policyd.engine import topics
from policyd.engine.topics import TopicError, covers, matches, overlaps, split

from mqtt_reference import ref_matches


@pytest.mark.parametrize("flt, topic, expected", [
    ("a/b", "a/b", True), ("a/b", "a/c", False), ("a/+", "a/b", True), ("a/+", "a/b/c", False),
    ("a/#", "a", True), ("a/#", "a/b/c", True), ("#", "a/b", True), ("+/+", "/x", True),
    ("/device/+/#", "/device/x", True), ("+", "", True), ("a/+", "a/", True),
    ("#", "$SYS/x", False), ("+/x", "$SYS/x", False), ("$SYS/#", "$SYS/x", True),
])
def test_matches(flt, topic, expected):
    assert matches(split(flt), split(topic)) is expected


@pytest.mark.parametrize("bad", ["a/#/b", "a+", "a/b#", "", "a\x00b"])
def test_invalid_filters(bad):
    with pytest.raises(TopicError):
        topics.validate_filter(bad)


@pytest.mark.parametrize("bad", ["a/+", "#", "", "a\x00"])
def test_invalid_names(bad):
    with pytest.raises(TopicError):
        topics.validate_name(bad)


@pytest.mark.parametrize("sub, inner", [("$share/g/a/b", "a/b"), ("a/b", "a/b")])
def test_strip_shared(sub, inner):
    assert topics.strip_shared(sub) == inner


@pytest.mark.parametrize("bad", ["$share/g", "$share//a", "$share/g+/a"])
def test_bad_shared(bad):
    with pytest.raises(TopicError):
        topics.strip_shared(bad)


# --- properties against a deliberately naive reference ----------------------------

LEVELS = st.sampled_from(["a", "b", "", "$x"])
FILTER_LEVELS = st.sampled_from(["a", "b", "", "$x", "+", "#"])


def _topic():
    return st.lists(LEVELS, min_size=1, max_size=4).map("/".join)


def _filter():
    def fix(levels):
        if "#" in levels:
            levels = levels[: levels.index("#") + 1]
        return "/".join(levels)
    return st.lists(FILTER_LEVELS, min_size=1, max_size=4).map(fix)


def all_topics():
    from itertools import product
    out = []
    for n in range(1, 5):
        out += ["/".join(p) for p in product(["a", "b", "", "$x"], repeat=n)]
    return out


UNIVERSE = all_topics()


@given(_filter(), _topic())
def test_matches_agrees_with_reference(flt, topic):
    assert matches(split(flt), split(topic)) == ref_matches(flt, topic)


@given(_filter(), _filter())
def test_covers_is_sound(outer, inner):
    """If covers() says yes, every topic (of a finite universe) matched by inner is matched by outer."""
    if covers(split(outer), split(inner)):
        for t in UNIVERSE:
            if ref_matches(inner, t):
                assert ref_matches(outer, t), (outer, inner, t)


@given(_filter(), _filter())
def test_overlaps_is_complete(a, b):
    """If some topic matches both filters, overlaps() must say so (deny rules rely on it)."""
    if any(ref_matches(a, t) and ref_matches(b, t) for t in UNIVERSE):
        assert overlaps(split(a), split(b))
