"""Parse compute expressions into a small, located syntax tree.

Expressions use Python's surface syntax, so `ast` does the parsing; only a
whitelist of node shapes is accepted, and nothing is ever evaluated. Names,
calls and keywords are resolved later, by the lowering.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from codegen.errors import Location, SpecError
from codegen.source import MAX_INT


@dataclass(frozen=True)
class Expr:
    loc: Location


@dataclass(frozen=True)
class Name(Expr):
    id: str


@dataclass(frozen=True)
class Const(Expr):
    value: float | int


@dataclass(frozen=True)
class Unary(Expr):
    op: str  # "-", or "~" (logical not)
    operand: Expr


@dataclass(frozen=True)
class Binary(Expr):
    op: str  # "+", "-", "*", "/", a comparison (COMPARISONS), or "&" / "|" (logical and, or)
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Call(Expr):
    func: str
    args: tuple[Expr, ...]
    keywords: tuple[tuple[str, Expr, Location], ...]


_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.BitAnd: "&", ast.BitOr: "|"}
_COMPARE = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}
COMPARISONS = tuple(_COMPARE.values())
# Deeper expressions are refused with a located error: every later stage walks
# the tree recursively, and no kernel needs more than a few levels.
MAX_DEPTH = 64


def parse_expression(text: str, loc: Location) -> Expr:
    """Parse `text`, whose first character sits at `loc`."""
    lead = len(text) - len(text.lstrip())
    # Python reads identifiers in NFKC form (a full-width x is x), and counts columns
    # in UTF-8 bytes: an expression is ASCII, so what it names is what it shows.
    foreign = next((i for i, ch in enumerate(text) if not ch.isascii()), None)
    if foreign is not None:
        raise SpecError(f"expressions are ASCII; found {text[foreign]!r} (U+{ord(text[foreign]):04X})", loc.shifted(foreign))
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        col = (err.offset or 1) - 1 + lead
        raise SpecError(f"invalid expression: {err.msg}", loc.shifted(col)) from None
    except (RecursionError, MemoryError):
        raise SpecError(f"expression nests more than {MAX_DEPTH} levels deep", loc) from None
    _check_depth(tree.body, loc.shifted(lead))
    return _convert(tree.body, loc, lead)


def _check_depth(root: ast.AST, loc: Location) -> None:
    """Refuse trees deeper than MAX_DEPTH, without recursing (the tree may be very deep)."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SpecError(
                f"expression nests more than {MAX_DEPTH} levels deep",
                loc.shifted(getattr(node, "col_offset", 0)),
                "split it into several compute statements",
            )
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _convert(node: ast.AST, base: Location, lead: int) -> Expr:
    loc = base.shifted(lead + getattr(node, "col_offset", 0))
    if isinstance(node, ast.Name):
        return Name(loc, node.id)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise SpecError(f"only numeric literals are allowed, got {node.value!r}", loc)
        if isinstance(node.value, int) and abs(node.value) > MAX_INT:
            raise SpecError("integer literal out of range: an integer in a spec fits in int64", loc,
                            "write a float (e.g. 1e30) where a large number is meant")
        return Const(loc, node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _convert(node.operand, base, lead)
        if isinstance(node.op, ast.UAdd):
            return operand
        if isinstance(operand, Const):
            return Const(loc, -operand.value)
        return Unary(loc, "-", operand)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
        return Unary(loc, "~", _convert(node.operand, base, lead))
    if isinstance(node, ast.Compare):
        if len(node.ops) > 1:
            raise SpecError(
                "chained comparisons are not supported", loc, "combine two comparisons with &, e.g. (a < b) & (b < c)"
            )
        if type(node.ops[0]) not in _COMPARE:
            raise SpecError(f"unsupported comparison: {type(node.ops[0]).__name__}", loc, f"use one of {' '.join(COMPARISONS)}")
        return Binary(loc, _COMPARE[type(node.ops[0])], _convert(node.left, base, lead), _convert(node.comparators[0], base, lead))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return Binary(loc, _BINARY[type(node.op)], _convert(node.left, base, lead), _convert(node.right, base, lead))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise SpecError("only plain function names can be called, e.g. exp(x)", loc)
        keywords = []
        for kw in node.keywords:
            if kw.arg is None:
                raise SpecError("**keyword arguments are not supported", loc)
            kw_loc = base.shifted(lead + kw.value.col_offset - len(kw.arg) - 1)
            if any(kw.arg == given for given, _, _ in keywords):
                raise SpecError(f"keyword argument '{kw.arg}' is given twice", kw_loc)
            keywords.append((kw.arg, _convert(kw.value, base, lead), kw_loc))
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise SpecError("*arguments are not supported", loc)
        return Call(loc, node.func.id, tuple(_convert(a, base, lead) for a in node.args), tuple(keywords))
    what = type(node).__name__
    if isinstance(node, ast.BinOp):
        what = f"operator {type(node.op).__name__}"
    elif isinstance(node, ast.Attribute):
        what = "attribute access"
    raise SpecError(
        f"unsupported syntax in expression: {what}", loc, "use + - * /, comparisons, & | ~, names, numbers and calls"
    )
