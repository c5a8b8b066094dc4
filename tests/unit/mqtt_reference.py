"""A deliberately naive MQTT topic matcher, the reference the engine is tested against."""


def ref_matches(flt: str, topic: str) -> bool:
    """MQTT 4.7 by the letter, recursively, with no shortcuts.

    A `$` topic is only matched by a filter that starts with `$` (a first-level
    wildcard never matches it).
    """
    if topic.startswith("$") and not flt.startswith("$"):
        return False

    def rec(f, t):
        if not f:
            return not t
        if f[0] == "#":
            return True
        if not t:
            return False
        return (f[0] == "+" or f[0] == t[0]) and rec(f[1:], t[1:])

    return rec(flt.split("/"), topic.split("/"))
