"""Verify and format rendered source before anything is written.

A module that does not parse, uses a name it never defines, or imports
something it never uses is a generator bug: it is reported as one, and
nothing is written.
"""

from __future__ import annotations

import builtins

import black
import libcst as cst
from libcst.metadata import MetadataWrapper, ScopeProvider

from codegen.errors import GeneratorBug

_BUILTINS = frozenset(dir(builtins))


def check_source(source: str, what: str) -> None:
    try:
        module = cst.parse_module(source)
    except cst.ParserSyntaxError as err:
        raise GeneratorBug(f"{what}: generated code does not parse: {err}") from None
    try:  # what parses may still not compile: a duplicate argument, say
        compile(source, what, "exec")
    except SyntaxError as err:
        raise GeneratorBug(f"{what}: generated code does not compile: {err.msg} (line {err.lineno})") from None
    wrapper = MetadataWrapper(module)
    scopes = set(wrapper.resolve(ScopeProvider).values())
    problems = []
    for scope in scopes:
        if scope is None:
            continue
        for access in scope.accesses:
            name = access.node.value if isinstance(access.node, cst.Name) else None
            if name and not access.referents and name not in _BUILTINS:
                problems.append(f"undefined name '{name}'")
        if isinstance(scope, cst.metadata.GlobalScope):
            for assignment in scope.assignments:
                node = getattr(assignment, "node", None)
                if isinstance(node, (cst.Import, cst.ImportFrom)) and not assignment.references:
                    problems.append(f"unused import '{assignment.name}'")
    if problems:
        raise GeneratorBug(f"{what}: " + "; ".join(sorted(set(problems))))


def format_source(source: str) -> str:
    mode = black.Mode(target_versions={black.TargetVersion.PY311}, line_length=100)
    try:
        return black.format_str(source, mode=mode)
    except black.InvalidInput as err:
        raise GeneratorBug(f"generated code does not parse: {err}") from None
