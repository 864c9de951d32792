"""Read a spec's YAML into plain nodes that remember where they came from.

PyYAML's composer keeps a start mark on every node; we keep those marks so
that every later error can name `file:line:col`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from codegen.errors import Location, SpecError


@dataclass
class Node:
    value: object  # str | int | float | bool | None | list[Node] | dict[str, Node]
    loc: Location
    style: str | None = None  # YAML scalar style: None (plain), "'", '"', "|" or ">"
    key_locs: dict[str, Location] = field(default_factory=dict)  # mappings only


def _scalar(node: yaml.ScalarNode, loc: Location):
    # Let YAML's own resolver decide int/float/bool/null, but never construct
    # arbitrary Python objects: only the core schema's scalar types.
    tag = node.tag
    text = node.value
    if tag == "tag:yaml.org,2002:int":
        return int(text.replace("_", ""), 0)
    if tag == "tag:yaml.org,2002:float":
        lowered = text.lower()
        if lowered in (".inf", "+.inf"):
            return float("inf")
        if lowered == "-.inf":
            return float("-inf")
        if lowered == ".nan":
            raise SpecError("NaN is not allowed in a spec", loc)
        return float(text.replace("_", ""))
    if tag == "tag:yaml.org,2002:bool":
        return text.lower() in ("true", "yes", "on")
    if tag == "tag:yaml.org,2002:null":
        return None
    if tag == "tag:yaml.org,2002:str":
        return text
    raise SpecError(f"unsupported YAML tag {tag!r}", loc)


def _convert(node: yaml.Node, file: str) -> Node:
    loc = Location(file, node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.ScalarNode):
        return Node(_scalar(node, loc), loc, style=node.style)
    if isinstance(node, yaml.SequenceNode):
        return Node([_convert(item, file) for item in node.value], loc)
    if isinstance(node, yaml.MappingNode):
        items: dict[str, Node] = {}
        key_locs: dict[str, Location] = {}
        for key_node, value_node in node.value:
            key_loc = Location(file, key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError("mapping keys must be plain names", key_loc)
            key = str(key_node.value)
            if key in items:
                raise SpecError(
                    f"duplicate key '{key}' (first given at line {key_locs[key].line})", key_loc
                )
            items[key] = _convert(value_node, file)
            key_locs[key] = key_loc
        return Node(items, loc, key_locs=key_locs)
    raise SpecError("unsupported YAML node (anchors and aliases are not supported)", loc)


def load_yaml(text: str, file: str) -> Node:
    """Parse one YAML document into located nodes; syntax errors become SpecErrors."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
        problem = err.problem or err.context or "invalid YAML"
        raise SpecError(f"YAML syntax error: {problem}", loc) from None
    except yaml.YAMLError as err:
        raise SpecError(f"YAML error: {err}", Location(file, 1, 1)) from None
    if root is None:
        raise SpecError("the spec is empty", Location(file, 1, 1))
    return _convert(root, file)
