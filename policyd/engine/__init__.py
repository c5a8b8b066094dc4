"""The rule engine: a pure library (no I/O beyond reading a rules file).

    spec = read_file("rules.yaml")        # validate, with file:line:column problems
    policy = compile_policy(spec)         # immutable, indexed by identity
    policy.decide(Request("Device123", "c1", "/device/Device123/t", Access.WRITE))
"""

from .loader import PolicyLoadError, PolicySpec, parse_text, read_file, read_rules_bytes
from .model import Access, Decision, Problem, Request, SourceRef, TraceStep
from .policy import CompiledPolicy, compile_policy


def load_policy(path) -> CompiledPolicy:
    """Read, validate and compile a rules file; raises PolicyLoadError."""
    return compile_policy(read_file(path))


__all__ = [
    "Access", "CompiledPolicy", "Decision", "PolicyLoadError", "PolicySpec", "Problem",
    "Request", "SourceRef", "TraceStep", "compile_policy", "load_policy", "parse_text", "read_file",
    "read_rules_bytes",
]
