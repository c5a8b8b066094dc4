"""The shim's C topic matcher agrees with the engine's (MQTT §4.7, the `$` rule) on every input."""

import subprocess

import pytest
from cffi import FFI
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.engine import topics
from shimlib import ROOT

ffi = FFI()
ffi.cdef("bool topic_filter_matches(const char *filter, size_t filter_len, const char *topic, size_t topic_len);")


@pytest.fixture(scope="module")
def matcher(tmp_path_factory):
    out = tmp_path_factory.mktemp("tm") / "topic_match.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(out),
                    str(ROOT / "plugin_c" / "src" / "topic_match.c")], check=True)
    lib = ffi.dlopen(str(out))
    def match(f, t):
        f = f.encode() if isinstance(f, str) else f
        t = t.encode("utf-8", "surrogatepass") if isinstance(t, str) else t
        return lib.topic_filter_matches(f, len(f), t, len(t))
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
