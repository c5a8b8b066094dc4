"""Composing YAML fast enough for 100,000-identity rules files.

Two costs dominate a large file, neither of them parsing proper:
  * the cyclic garbage collector, which rescans the growing node tree again and
    again while hundreds of thousands of nodes are allocated (nothing we build
    has cycles that need it); `no_gc()` pauses it for the duration;
  * PyYAML's implicit-tag resolver, a regex pass per scalar in Python. The
    rules schema only needs to tell "null" from text, so `_Loader` resolves
    just that (ints, booleans and dates stay text, which is what we read anyway).
Only the safe composer is used: nodes, never Python objects built from tags.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator

import yaml
from yaml.nodes import ScalarNode, SequenceNode

NULL_TAG = "tag:yaml.org,2002:null"
STR_TAG = "tag:yaml.org,2002:str"
SEQ_TAG = "tag:yaml.org,2002:seq"
MAP_TAG = "tag:yaml.org,2002:map"
NULL_WORDS = frozenset(("", "~", "null", "Null", "NULL"))  # plain scalars the resolver reads as null

from yaml.composer import Composer

try:  # libyaml's parser and composer (C)
    from yaml._yaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, Parser, Composer):  # type: ignore[no-redef]
        def __init__(self, stream):
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)
            Composer.__init__(self)


class _Loader(_Parser):
    """Composer with a resolver that only distinguishes null from text."""

    def resolve(self, kind, value, implicit):
        if kind is ScalarNode:
            return NULL_TAG if implicit[0] and value in NULL_WORDS else STR_TAG
        return SEQ_TAG if kind is SequenceNode else MAP_TAG

    def descend_resolver(self, current_node, current_index):
        pass

    def ascend_resolver(self):
        pass


class _InterruptibleLoader(_Loader, Composer):
    """libyaml's parser with PyYAML's Python composer: about twice as slow to
    compose, but the interpreter can switch threads between events. libyaml's
    own composer builds a 100,000-identity tree in one C call (0.7 s) during
    which no other thread of the daemon, such as one answering checks, can run."""

    def __init__(self, stream):
        _Loader.__init__(self, stream)
        Composer.__init__(self)

    get_single_node = Composer.get_single_node


def compose(text: str, *, interruptible: bool = False) -> yaml.Node | None:
    """The node tree of one YAML document (None when empty); raises yaml.YAMLError."""
    loader = (_InterruptibleLoader if interruptible else _Loader)(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def outside_the_schema(root: yaml.Node | None, text: str) -> Iterator[tuple[yaml.Node, str]]:
    """Nodes the rules reader would read otherwise than `yaml.safe_load` does, each with why.

    The reader takes every scalar as text or null, which is what safe_load does for
    any plain or quoted scalar of a rules file once its own resolver's ints and
    booleans are written back as text. It differs only where the document says
    more than that: an alias (`*a`: the same node twice; a scalar alias would be read
    as a copy), an explicit tag (`!!int`, `!!null x`, `!foo`), or a merge key (`<<`,
    which safe_load expands). Each needs a character that a rules file otherwise
    rarely has, so the walk only happens when one is there.
    """
    if root is None or not any(c in text for c in "*!<"):
        return
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            yield node, "YAML aliases (*name) are not allowed in a rules file"
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in (STR_TAG, NULL_TAG) or (node.tag == NULL_TAG and node.value not in NULL_WORDS):
                yield node, f"YAML tag {node.tag} is not allowed in a rules file (write plain text)"
        elif isinstance(node, yaml.SequenceNode):
            if node.tag != SEQ_TAG:
                yield node, f"YAML tag {node.tag} is not allowed in a rules file"
            stack.extend(reversed(node.value))
        else:
            if node.tag != MAP_TAG:
                yield node, f"YAML tag {node.tag} is not allowed in a rules file"
            for key, value in reversed(node.value):
                if isinstance(key, yaml.ScalarNode) and key.value == "<<" and not key.style:
                    yield key, "YAML merge keys (<<) are not allowed in a rules file"
                stack.append(value)
                stack.append(key)


def release(node: yaml.Node | None, chunk: int = 1000, _seen: set[int] | None = None) -> None:
    """Free a composed tree a chunk at a time, so that other threads run between
    chunks. Dropping 100,000 identities' nodes at once is one C-level cascade of
    1.2 million objects (about 0.1 s in which nothing else runs). Long lists are
    taken apart chunk by chunk; the children of short lists are visited too (that
    is cheap), so a long list under a few short ones is found as well. Each node
    is visited once: aliases share nodes ("billion laughs" shares them 9^9 times)."""
    seen = set() if _seen is None else _seen
    items = node.value if node is not None and isinstance(node.value, list) else None
    if not items or id(node) in seen:
        return
    seen.add(id(node))
    if len(items) <= chunk:
        for child in _children(items):
            release(child, chunk, seen)
        return
    while items:
        part = items[-chunk:]
        del items[-chunk:]
        for child in _children(part):
            if isinstance(child.value, list) and len(child.value) > chunk:
                release(child, chunk, seen)
        del part


def _children(items: list) -> Iterator[yaml.Node]:
    for item in items:
        yield from item if isinstance(item, tuple) else (item,)


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic collector while a policy is built, then hand what was
    built to the oldest generation without scanning it.

    Without that hand-over, the first allocation after re-enabling scans every
    object made meanwhile (about a second for 100,000 identities). freeze()
    followed at once by unfreeze() moves every tracked object to the oldest
    generation in constant time: nothing stays frozen, so a cycle alive at this
    moment is still collected by the next full collection.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.freeze()
            gc.unfreeze()
            gc.enable()
