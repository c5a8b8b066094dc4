"""The shim's C topic matcher agrees with the engine's (MQTT §4.7, the `$` rule) on every input."""

import subprocess

import pytest
from cffi import FFI
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.engine import topics
from shimlib import ROOT

ffi = FFI()
ffi.cdef("""
bool topic_filter_matches(const char *filter, size_t filter_len, const char *topic, size_t topic_len);
uint8_t topic_filter_shape(const char *filter, size_t filter_len);
bool topic_shape_matches(uint8_t shape, const char *filter, size_t filter_len, const char *topic, size_t topic_len);
""")


def _as_bytes(value):
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    out = tmp_path_factory.mktemp("tm") / "topic_match.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(out),
                    str(ROOT / "plugin_c" / "src" / "topic_match.c")], check=True)
    return ffi.dlopen(str(out))


@pytest.fixture(scope="module")
def matcher(lib):
    """The level-by-level matcher and the prepared one (cached scopes), which must agree."""
    def match(f, t):
        f, t = _as_bytes(f), _as_bytes(t)
        plain = lib.topic_filter_matches(f, len(f), t, len(t))
        prepared = lib.topic_shape_matches(lib.topic_filter_shape(f, len(f)), f, len(f), t, len(t))
        assert plain == prepared, (f, t, plain, prepared)
        return plain
    return match


levels = st.sampled_from(["a", "b", "", "$s", "ab", "\u00e9"])
names = st.lists(levels, min_size=1, max_size=4).map("/".join)
filters = st.builds(lambda ls, hash_: "/".join(ls + (["#"] if hash_ else [])),
                    st.lists(st.sampled_from(["a", "b", "", "$s", "+"]), min_size=0, max_size=4),
                    st.booleans()).filter(bool)


@settings(max_examples=2000, deadline=None)
@given(filters, names)
def test_agrees_with_the_engine(matcher, flt, name):
    expected = bool(name) and topics.matches(topics.split(flt), topics.split(name))
    assert matcher(flt, name) == expected


@pytest.mark.parametrize("flt, name, expected", [
    ("#", "$SYS/x", False), ("+/x", "$SYS/x", False), ("$SYS/#", "$SYS/x", True),
    ("a/#", "a", True), ("a/+", "a", False), ("a/+", "a/", True), ("+", "", False),
    ("a/#", "a/+", False), ("a/#", "a/#", False), ("#", "a\x00b", False),
    ("#", "caf\u00e9/\U0001f600", True), ("#", b"a/\xff", False), ("#", b"a/\xc0\xaf", False),
    ("#", "a/\ud800", False), ("#", b"\xf4\x90\x80\x80", False), ("#", b"a\xe2\x82", False),
])
def test_edges(matcher, flt, name, expected):
    assert matcher(flt, name) == expected


# Long levels: the ASCII check reads eight bytes at a time, the last word overlapping.
long_levels = st.sampled_from(["a", "", "+", "#", "$s", "device", "Device1234567", "\u00e9t\u00e9xxxxxxx",
                               "x\x00y", "abc+defgh", "abcdefg#", "\U0001f600"])


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(["a", "", "$s", "device", "Device1234567", "+", "\u00e9"]), max_size=4),
       st.sampled_from(["", "/#", "#"]),
       st.lists(long_levels, min_size=1, max_size=5).map("/".join),
       st.sampled_from([b"", b"\xff", b"\xc3", b"\xe2\x82\xac"]))
def test_prepared_scopes_agree_on_long_and_hostile_names(matcher, levels, tail, name, junk):
    flt = "/".join(levels) + (tail if levels or tail != "/#" else "")
    if not flt:
        return
    topic = _as_bytes(name) + junk
    expected = bool(topic) and topics.matches(topics.split(flt), topics.split(topic.decode("utf-8", "surrogateescape")))
    valid = b"\x00" not in topic and b"+" not in topic and b"#" not in topic
    try:
        topic.decode("utf-8")
    except UnicodeDecodeError:
        valid = False
    assert matcher(flt, topic) == (expected and valid)


@pytest.mark.parametrize("flt, shape", [("a/b", 1), ("#", 2), ("a/b/#", 3), ("/#", 3), ("a/+/#", 0),
                                        ("+", 0), ("a/#/b", 0), ("a\x00/#", 0), ("\udc80/#", 0)])
def test_filter_shapes(lib, flt, shape):
    f = _as_bytes(flt)
    assert lib.topic_filter_shape(f, len(f)) == shape
