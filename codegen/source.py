"""Read a spec's YAML into plain nodes that remember where they came from.

PyYAML's composer keeps a start mark on every node; we keep those marks so
that every later error can name `file:line:col`.

Scalars follow the YAML 1.2 core schema where YAML 1.1 (PyYAML) and 1.2 (most
editors and validators) disagree, and the forms whose meaning differs between
the two (`064`, `1:30`) are rejected rather than silently read one way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from codegen.errors import Location, SpecError

# Bounds that keep a small file from costing unbounded time or memory: aliases
# can repeat a subtree many times over ("billion laughs"), so the expanded tree
# is what is bounded, not the text.
MAX_NODES = 20_000
MAX_DEPTH = 32
# Integers a kernel can use: int64. Longer digit strings are refused before
# conversion (Python refuses to convert more than 4300 digits at all).
MAX_INT = 2**63 - 1
_MAX_INT_DIGITS = len(str(MAX_INT))

# YAML 1.2 core schema floats that YAML 1.1 reads as strings (no dot: `1e-3`).
_CORE_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_LEADING_ZERO = re.compile(r"[-+]?0[0-9_]+")


@dataclass
class Node:
    value: object  # str | int | float | bool | None | list[Node] | dict[str, Node]
    loc: Location
    style: str | None = None  # YAML scalar style: None (plain), "'", '"', "|" or ">"
    key_locs: dict[str, Location] = field(default_factory=dict)  # mappings only
    verbatim: bool = True  # a scalar whose value is its source text, column for column

    def plain(self) -> object:
        """The value as YAML gave it, without locations."""
        if isinstance(self.value, list):
            return [item.plain() for item in self.value]
        if isinstance(self.value, dict):
            return {key: item.plain() for key, item in self.value.items()}
        return self.value

    def __repr__(self) -> str:  # messages show a value as the spec wrote it
        return repr(self.plain())


def _int(text: str, loc: Location) -> int:
    plain = text.replace("_", "")
    if ":" in plain:
        raise SpecError(
            f"'{text}' is a base-60 number in YAML 1.1 and a string in YAML 1.2",
            loc,
            "write the number in decimal, or quote it if you mean a string",
        )
    if _LEADING_ZERO.fullmatch(plain):
        raise SpecError(
            f"'{text}' has a leading zero: octal in YAML 1.1, decimal in YAML 1.2",
            loc,
            f"write {plain.lstrip('+-').lstrip('0') or '0'} without the leading zero",
        )
    digits = plain.lstrip("+-")
    if len(digits) > _MAX_INT_DIGITS + 2:  # cheap bound before any conversion
        raise SpecError(f"integer out of range (at most {MAX_INT})", loc)
    value = int(plain, 0)
    if abs(value) > MAX_INT:
        raise SpecError(f"integer out of range (at most {MAX_INT})", loc)
    return value


def _float(text: str, loc: Location) -> float:
    lowered = text.lower()
    if lowered in (".inf", "+.inf"):
        return float("inf")
    if lowered == "-.inf":
        return float("-inf")
    if lowered in (".nan", "+.nan", "-.nan"):
        raise SpecError("NaN is not allowed in a spec", loc)
    if ":" in text:
        raise SpecError(
            f"'{text}' is a base-60 number in YAML 1.1 and a string in YAML 1.2",
            loc,
            "write the number in decimal, or quote it if you mean a string",
        )
    value = float(text.replace("_", ""))
    if value in (float("inf"), float("-inf")):
        raise SpecError(f"number out of range: '{text[:40]}{'...' if len(text) > 40 else ''}'", loc, "write .inf or -.inf for infinity")
    return value


def _string(text: str, loc: Location) -> str:
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        # YAML's "\ud83d\ude00" escapes one character as a UTF-16 pair; join such pairs
        joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        if joined.count("\ufffd") > text.count("\ufffd"):  # a surrogate without its pair was replaced
            raise SpecError("text contains a lone surrogate (\\ud800-\\udfff), which is not a character", loc)
        return joined
    return text


def _scalar(node: yaml.ScalarNode, loc: Location):
    # Let YAML's own resolver decide int/float/bool/null, but never construct
    # arbitrary Python objects: only the core schema's scalar types.
    tag = node.tag
    text = node.value
    if tag == "tag:yaml.org,2002:int":
        return _int(text, loc)
    if tag == "tag:yaml.org,2002:float":
        return _float(text, loc)
    if tag == "tag:yaml.org,2002:bool":
        return text.lower() in ("true", "yes", "on")
    if tag == "tag:yaml.org,2002:null":
        return None
    if tag == "tag:yaml.org,2002:str":
        if node.style is None and _LEADING_ZERO.fullmatch(text.replace("_", "")):
            return _int(text, loc)  # 08, 09: a string in YAML 1.1, a number in 1.2
        if node.style is None and _CORE_FLOAT.fullmatch(text):
            return _float(text, loc)
        return _string(text, loc)
    raise SpecError(f"unsupported YAML tag {tag!r}", loc, "quote the value if you mean a string")


class _Converter:
    def __init__(self, file: str):
        self.file = file
        self.nodes = 0
        self.path: set[int] = set()  # ids of the nodes being converted: a repeat is a cycle

    def loc(self, mark) -> Location:
        return Location(self.file, mark.line + 1, mark.column + 1)

    def convert(self, node: yaml.Node) -> Node:
        loc = self.loc(node.start_mark)
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise SpecError(f"the spec expands to more than {MAX_NODES} YAML nodes (through aliases?)", loc)
        if id(node) in self.path:
            raise SpecError("recursive alias: this node contains itself", loc)
        if len(self.path) >= MAX_DEPTH:
            raise SpecError(f"the spec nests more than {MAX_DEPTH} levels deep", loc)
        if isinstance(node, yaml.ScalarNode):
            source = node.start_mark.buffer[node.start_mark.index:node.end_mark.index] if node.start_mark.buffer else ""
            verbatim = node.style in (None, "'", '"') and "\n" not in source and "\\" not in source and "''" not in source
            return Node(_scalar(node, loc), loc, style=node.style, verbatim=verbatim)
        if node.tag not in ("tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"):  # e.g. !!python/object, !!set
            raise SpecError(f"unsupported YAML tag {node.tag!r}", loc, "remove the tag")
        self.path.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return Node([self.convert(item) for item in node.value], loc)
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, loc)
        finally:
            self.path.discard(id(node))
        raise SpecError("unsupported YAML node", loc)

    def mapping(self, node: yaml.MappingNode, loc: Location) -> Node:
        items: dict[str, Node] = {}
        key_locs: dict[str, Location] = {}
        for key_node, value_node in node.value:
            key_loc = self.loc(key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError("mapping keys must be plain names", key_loc)
            key = _string(str(key_node.value), key_loc)
            if key in items:
                raise SpecError(
                    f"duplicate key '{key}' (first given at line {key_locs[key].line})", key_loc
                )
            items[key] = self.convert(value_node)
            key_locs[key] = key_loc
        return Node(items, loc, key_locs=key_locs)


def _end_of_text(text: str, file: str) -> Location:
    lines = text.split("\n")
    while len(lines) > 1 and not lines[-1]:
        lines.pop()
    return Location(file, len(lines), len(lines[-1]) + 1)


def _syntax_error(err: yaml.MarkedYAMLError, text: str, file: str) -> SpecError:
    problem = err.problem or err.context or "invalid YAML"
    mark = err.problem_mark or err.context_mark
    if mark is None:
        return SpecError(f"YAML syntax error: {problem}", Location(file, 1, 1))
    if mark.index >= len(text.rstrip()) and err.context_mark is not None and err.context:
        # The text ran out (an unclosed quote or bracket): point at where it was opened.
        start = err.context_mark
        return SpecError(
            f"YAML syntax error: the file ends {err.context} that starts here",
            Location(file, start.line + 1, start.column + 1),
        )
    loc = Location(file, mark.line + 1, mark.column + 1)
    end = _end_of_text(text, file)
    if (loc.line, loc.column) > (end.line, end.column):
        loc = end
    return SpecError(f"YAML syntax error: {problem}", loc)


def _reader_message(err: yaml.reader.ReaderError) -> str:
    return f"YAML does not allow the character U+{err.character:04X} in a file"


def _position(text: str, index: int, file: str) -> Location:
    line_start = text.rfind("\n", 0, index) + 1
    return Location(file, text.count("\n", 0, index) + 1, index - line_start + 1)


def load_yaml(text: str, file: str) -> Node:
    """Parse one YAML document into located nodes; syntax errors become SpecErrors."""
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as err:
        raise SpecError(_reader_message(err), _position(text, err.position, file)) from None
    try:
        root = loader.get_single_node()
    except yaml.reader.ReaderError as err:
        raise SpecError(_reader_message(err), _position(text, err.position, file)) from None
    except yaml.MarkedYAMLError as err:
        raise _syntax_error(err, text, file) from None
    except yaml.YAMLError as err:
        raise SpecError(f"YAML error: {err}", Location(file, 1, 1)) from None
    except RecursionError:
        mark = loader.get_mark()
        raise SpecError(
            "YAML nests too deeply", Location(file, mark.line + 1, mark.column + 1)
        ) from None
    except (ValueError, OverflowError) as err:
        # PyYAML's scanner turns an escape such as "\U00110000" into chr() directly.
        mark = loader.get_mark()
        raise SpecError(
            f"YAML syntax error: an escape names no Unicode character ({err})",
            Location(file, mark.line + 1, mark.column + 1),
        ) from None
    finally:
        loader.dispose()
    if root is None:
        raise SpecError("the spec is empty", Location(file, 1, 1))
    return _Converter(file).convert(root)
