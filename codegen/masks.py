"""Masks that are false for whole tiles: the analysis behind the `mask_skip` rule.

A `where(cond, x, fill)` whose condition compares affine expressions in `index()`,
`extent()`, constants, params and runtime scalars can be bounded over a tile: each
`index(A)` lies between the tile's first and last position along A. When the
condition cannot hold anywhere in a tile of the ordered axis, and `fill` is the
identity of what consumes it (0, or -inf before an exp or a max), the tile adds
nothing: it can skip its compute, and its blocks need not be fetched.

Conditions are kept symbolic (`Affine`) and printed as code by whoever needs them:
the kernel's guard and the index maps' clamps both come from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from codegen import ir

# Term keys: ("index", axis), ("extent", axis), ("scalar", name), ("param", name).
Term = tuple[str, str]


@dataclass(frozen=True)
class Affine:
    terms: tuple[tuple[Term, float], ...]  # sorted, nonzero coefficients
    const: float = 0.0

    @staticmethod
    def of(terms: dict[Term, float], const: float = 0.0) -> "Affine":
        return Affine(tuple(sorted((t, c) for t, c in terms.items() if c != 0)), const)

    def scaled(self, k: float) -> "Affine":
        return Affine.of({t: c * k for t, c in self.terms}, self.const * k)

    def plus(self, other: "Affine") -> "Affine":
        terms = dict(self.terms)
        for t, c in other.terms:
            terms[t] = terms.get(t, 0) + c
        return Affine.of(terms, self.const + other.const)

    def coefficient(self, term: Term) -> float:
        return dict(self.terms).get(term, 0.0)

    @property
    def index_axes(self) -> list[str]:
        return [name for (kind, name), _ in self.terms if kind == "index"]


@dataclass(frozen=True)
class Comparison:
    """`expr >= 0` (strict: `expr > 0`), or `expr == 0`."""

    expr: Affine
    kind: str  # ">=", ">", "=="


@dataclass(frozen=True)
class Condition:
    """A disjunction of conjunctions of comparisons: live if any conjunction can hold."""

    any_of: tuple[tuple[Comparison, ...], ...]

    @property
    def comparisons(self) -> list[Comparison]:
        return [c for group in self.any_of for c in group]


@dataclass
class SkipPlan:
    """What `mask_skip` decided: the ordered axis's tiles where `condition` never holds are
    skipped, and its blocks clamp to the live range."""

    statement: str
    condition: Condition
    axis: str  # the ordered axis
    fill: float
    fraction: float  # of the tiles over `axes`, at NOMINAL_TILES per axis
    axes: list[str] = field(default_factory=list)  # the axes whose index the condition reads


NOMINAL_TILES = 16  # tiles per axis at which the plan reports the fraction skipped


def _affine(v: ir.Value, k: ir.KernelIR, values: dict[str, ir.Value]) -> Affine | None:
    if isinstance(v, ir.Literal):
        return Affine.of({}, float(v.value))
    if isinstance(v, ir.ParamRef):
        value = k.params[v.name]
        return Affine.of({("param", v.name): 1.0}) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if isinstance(v, ir.Index):
        return Affine.of({("index", v.axis): 1.0})
    if isinstance(v, ir.Extent):
        return Affine.of({("extent", v.axis): 1.0})
    if isinstance(v, ir.RuntimeScalar):
        return Affine.of({("scalar", v.name): 1.0})
    if isinstance(v, ir.ValueRef) and v.name in values:
        return _affine(values[v.name], k, values)
    if isinstance(v, ir.Cast):
        return _affine(v.operand, k, values)
    if isinstance(v, ir.Elementwise):
        args = [_affine(a, k, values) for a in v.args]
        if any(a is None for a in args):
            return None
        if v.fn == "neg":
            return args[0].scaled(-1)
        if v.fn == "+":
            return args[0].plus(args[1])
        if v.fn == "-":
            return args[0].plus(args[1].scaled(-1))
        if v.fn == "*":  # affine only when one side is a plain number
            a, b = args
            if not a.terms:
                return b.scaled(a.const)
            if not b.terms:
                return a.scaled(b.const)
    return None


_NORMALIZE = {"<=": (1, ">="), "<": (1, ">"), ">=": (-1, ">="), ">": (-1, ">"), "==": (1, "==")}


def condition(v: ir.Value, k: ir.KernelIR, values: dict[str, ir.Value]) -> Condition | None:
    """`v` as a condition over affine positions, or None if it is not one."""
    if isinstance(v, ir.ValueRef) and v.name in values:
        return condition(values[v.name], k, values)
    if not isinstance(v, ir.Elementwise):
        return None
    if v.fn in _NORMALIZE:
        lhs, rhs = (_affine(a, k, values) for a in v.args)
        if lhs is None or rhs is None:
            return None
        sign, kind = _NORMALIZE[v.fn]
        expr = rhs.plus(lhs.scaled(-1)).scaled(sign)  # lhs <= rhs  <=>  rhs - lhs >= 0
        return Condition(((Comparison(expr, kind),),))
    if v.fn in ("&", "|"):
        a, b = (condition(x, k, values) for x in v.args)
        if a is None or b is None:
            return None
        if v.fn == "|":
            return Condition(a.any_of + b.any_of)
        return Condition(tuple(x + y for x in a.any_of for y in b.any_of))
    return None


def find_sites(k: ir.KernelIR) -> list[tuple[ir.Statement, ir.Elementwise]]:
    """Every `where` in the work done on each step of the ordered axis."""
    out = []
    for st in k.statements:
        if st.phase != "step":
            continue
        for v in ir.walk(st.value):
            if isinstance(v, ir.Elementwise) and v.fn == "where":
                out.append((st, v))
    return out


def fill_value(v: ir.Value) -> float | None:
    if isinstance(v, ir.Literal):
        return float(v.value)
    if isinstance(v, ir.Elementwise) and v.fn == "neg" and isinstance(v.args[0], ir.Literal):
        return -float(v.args[0].value)
    return None


# --- evaluation at nominal sizes (for the plan report) -------------------------------

def holds_somewhere(cond: Condition, ranges: dict[str, tuple[float, float]], env: dict[Term, float]) -> bool:
    """Whether `cond` can hold with each index in its [low, high] range."""
    for group in cond.any_of:
        if all(_can_hold(c, ranges, env) for c in group):
            return True
    return False


def _bounds(expr: Affine, ranges, env) -> tuple[float, float]:
    low = high = expr.const
    for (kind, name), c in expr.terms:
        if kind == "index":
            lo, hi = ranges[name]
            low += min(c * lo, c * hi)
            high += max(c * lo, c * hi)
        else:
            low += c * env[(kind, name)]
            high += c * env[(kind, name)]
    return low, high


def _can_hold(c: Comparison, ranges, env) -> bool:
    low, high = _bounds(c.expr, ranges, env)
    if c.kind == ">=":
        return high >= 0
    if c.kind == ">":
        return high > 0
    return low <= 0 <= high


def skipped_fraction(cond: Condition, tiles: dict[str, int], blocks: dict[str, int],
                     env: dict[Term, float]) -> float:
    """The fraction of tiles over the condition's axes in which it never holds."""
    axes = list(tiles)
    total = skipped = 0
    for point in _grid(axes, tiles):
        ranges = {a: (i * blocks[a], i * blocks[a] + blocks[a] - 1) for a, i in zip(axes, point)}
        total += 1
        skipped += not holds_somewhere(cond, ranges, env)
    return skipped / total if total else 0.0


def _grid(axes, tiles):
    if not axes:
        yield ()
        return
    for i in range(tiles[axes[0]]):
        for rest in _grid(axes[1:], tiles):
            yield (i, *rest)


# --- printing -------------------------------------------------------------------------
# `bounds[axis]` is the (first, last) position of the current tile along an axis, as code;
# `value(term)` prints an extent, a runtime scalar or a param.

def _number(c: float) -> str:
    return str(int(c)) if float(c).is_integer() else repr(float(c))


def _scaled(c: float, text: str, first: bool) -> str:
    """` + c * text`, written plainly: `a - b`, not `a + -(b)`."""
    group = f"({text})" if any(ch in text for ch in " +-") else text
    magnitude = abs(c)
    body = text if magnitude == 1 and (c > 0 or not any(ch in text for ch in " +-")) else group
    body = body if magnitude == 1 else f"{_number(magnitude)} * {group}"
    if first:
        return body if c > 0 else f"-{body}"
    return f" + {body}" if c > 0 else f" - {body}"


def extreme_text(expr: Affine, bounds, value, highest: bool) -> str:
    """The largest (or smallest) value of `expr` over the tile, as code."""
    parts = []
    for (kind, name), c in expr.terms:
        if kind == "index":
            low, high = bounds[name]
            parts.append((c, high if (c > 0) == highest else low))
        else:
            parts.append((c, value((kind, name))))
    parts.sort(key=lambda p: p[0] < 0)  # positive terms first
    text = "".join(_scaled(c, t, i == 0) for i, (c, t) in enumerate(parts))
    if expr.const or not parts:
        const = _number(abs(expr.const))
        text = (text + (" + " if expr.const >= 0 else " - ") + const) if text else _number(expr.const)
    return text


def live_text(cond: Condition, bounds, value) -> str:
    """Code that is true when `cond` can hold somewhere in the current tile."""
    groups = []
    for group in cond.any_of:
        tests = []
        for c in group:
            high = extreme_text(c.expr, bounds, value, True)
            if c.kind == ">=":
                tests.append(f"({high} >= 0)")
            elif c.kind == ">":
                tests.append(f"({high} > 0)")
            else:
                low = extreme_text(c.expr, bounds, value, False)
                tests.append(f"({low} <= 0) & ({high} >= 0)")
        groups.append(" & ".join(tests))
    return " | ".join(f"({g})" for g in groups) if len(groups) > 1 else groups[0]


def integral(cond: Condition) -> bool:
    return all(float(c).is_integer() for cmp in cond.comparisons for _, c in cmp.expr.terms) and all(
        float(cmp.expr.const).is_integer() for cmp in cond.comparisons
    )


def clamp_range(cond: Condition, axis: str, block: str, bounds, value) -> tuple[list[str], list[str]]:
    """The first and last live tile of `axis` given the other axes' tiles, as code: lists of
    candidates (the tile index must be at least each of the first and at most each of the
    last). Empty where the condition does not bound it."""
    if len(cond.any_of) != 1 or not integral(cond):
        return [], []
    # A param may be a float (window: 40.0): the floor division is still the right bound,
    # but a block index must be an integer.
    floats = any(kind == "param" for c in cond.comparisons for (kind, _), _ in c.expr.terms)
    firsts, lasts = [], []
    for c in cond.any_of[0]:
        coef = c.expr.coefficient(("index", axis))
        if coef == 0 or c.kind == "==":
            continue
        rest = Affine.of({t: v for t, v in c.expr.terms if t != ("index", axis)}, c.expr.const)
        high = extreme_text(rest, bounds, value, True)
        if c.kind == ">":
            high = f"{high} - 1"  # integers: expr > 0 is expr >= 1
        step = f"({_number(abs(coef))} * {block})" if abs(coef) != 1 else block
        if coef < 0:  # coef * tile_start + high >= 0
            lasts.append(f"({high}) // {step}")
        else:  # coef * (tile_start + block - 1) + high >= 0
            lift = f"{_number(coef)} * ({block} - 1)" if coef != 1 else f"({block} - 1)"
            # t >= ceil(-(high + lift) / step) = -((high + lift) // step)
            firsts.append(f"-(({high} + {lift}) // {step})")
    if floats:
        firsts, lasts = [f"jnp.int32({x})" for x in firsts], [f"jnp.int32({x})" for x in lasts]
    return firsts, lasts


def format_condition(cond: Condition) -> str:
    def affine(e: Affine) -> str:
        parts = []
        for (kind, name), c in sorted(e.terms, key=lambda tc: tc[1] < 0):
            term = f"{kind}({name})" if kind in ("index", "extent") else name
            parts.append(term if c == 1 else f"-{term}" if c == -1 else f"{_number(c)}*{term}")
        if e.const or not parts:
            parts.append(_number(e.const))
        return " + ".join(parts).replace("+ -", "- ")

    groups = [" & ".join(f"{affine(c.expr)} {c.kind if c.kind != '==' else '=='} 0" for c in g) for g in cond.any_of]
    return " | ".join(f"({g})" for g in groups) if len(groups) > 1 else groups[0]
