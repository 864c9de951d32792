"""Print IR values and statements as the Python lines of a kernel.

Only validated identifiers from the spec and numeric literals reach the
output; everything else is fixed text chosen here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from codegen import ir, masks
from codegen.plan import Layout, Operand, Plan, dot_batch, dot_permutation, expansion

JNP_DTYPE = {d: f"jnp.{d}" for d in ("float32", "bfloat16", "float16", "int32", "int16", "int8")}
ARRAY_UNARY = {
    "exp": "jnp.exp",
    "log": "jnp.log",
    "sqrt": "jnp.sqrt",
    "rsqrt": "lax.rsqrt",
    "tanh": "jnp.tanh",
    "sigmoid": "jax.nn.sigmoid",
    "abs": "jnp.abs",
}
STATIC_UNARY = {"exp": "math.exp", "log": "math.log", "sqrt": "math.sqrt", "tanh": "math.tanh", "abs": "abs"}
# Python's precedence: comparisons bind loosest, then | and &, then arithmetic.
COMPARE = -4
BINARY_OPS = {"|": -3, "&": -2, "+": 1, "-": 1, "*": 2, "/": 2, **{op: COMPARE for op in ir.COMPARISONS}}
ATOM = 4


def literal(value: float | int) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "jnp.inf" if value > 0 else "-jnp.inf"
        return repr(value)
    return str(int(value))


def param_constant(name: str) -> str:
    return name.upper()


def tuple_text(items) -> str:
    items = [str(i) for i in items]
    if not items:
        return "()"
    if len(items) == 1:
        return f"({items[0]},)"
    return "(" + ", ".join(items) + ")"


def tile_count(axis: str) -> str:
    return f"num_{axis}_tiles"


class IndexMaps:
    """Index maps as named functions, each distinct one emitted once and shared by the
    operands whose blocks move the same way (flash_attention's `kv_index_map`)."""

    def __init__(self, params: list[str], prelude: dict[str, str] | None = None):
        self.params = params
        # name -> the line binding it, for names the returned tuples may use that are not
        # parameters (real_tiles_only's segment and tile of a visit): emitted where used.
        self.prelude = prelude or {}
        self.maps: dict[str, list[str]] = {}  # returned tuple -> tensors using it
        self.helpers: set[str] = set()  # module helpers the maps call

    def add(self, tensor: str, returned: str) -> str:
        self.maps.setdefault(returned, []).append(tensor)
        return returned

    def name(self, returned: str) -> str:
        """Named after the operands sharing it; the first operand's name keeps it unique."""
        name = "_".join(self.maps[returned]) + "_index_map"
        taken = ["_".join(t) + "_index_map" for r, t in self.maps.items() if r != returned]
        return name if name not in taken else f"{self.maps[returned][0]}_index_map"

    def lines(self) -> list[str]:
        out = []
        for returned in self.maps:
            out.append(f"def {self.name(returned)}({', '.join(self.params)}):")
            out += [f"    {line}" for name, line in self.prelude.items() if re.search(rf"\b{name}\b", returned)]
            out += [f"    return {returned}", ""]
        return out


class _MapRef:
    """A BlockSpec's index map, named once every operand is known."""

    def __init__(self, maps: IndexMaps, returned: str):
        self.maps, self.returned = maps, returned

    def __str__(self) -> str:
        return self.maps.name(self.returned)


class _Spec:
    def __init__(self, shape: str, index_map: _MapRef, extra: str, why: list[str]):
        self.shape, self.index_map, self.extra, self.why = shape, index_map, extra, why

    def __str__(self) -> str:
        return f"pl.BlockSpec({self.shape}, {self.index_map}{self.extra})"


def extent_text(plan: Plan, axis: str, printer=None) -> str:
    """An axis's extent where index maps run: static for a dense axis, from the offsets for
    a jagged one (the offsets ref is in scope there)."""
    j = plan.ir.axes[axis].jagged
    if j is None:
        return printer.need(axis) if printer else axis
    return f"({j.offsets}_ref[{j.segment}_index + 1] - {j.offsets}_ref[{j.segment}_index])"


def tile_bounds(plan: Plan, axes, start, need, index=lambda a: f"{a}_index") -> dict[str, tuple[str, str]]:
    """The first and last position of the current tile along each of `axes`, as code, for
    bounding a mask over the tile: `start(axis)` prints where a blocked axis's tile starts."""
    bounds = {}
    for a in axes:
        mode = plan.axes[a].mode
        if mode in ("squeezed", "segment"):
            bounds[a] = (index(a), index(a))
        elif mode == "full":
            bounds[a] = ("0", f"{need(a)} - 1")
        else:
            first = start(a)
            bounds[a] = (first, f"{first} + {need('block_' + a)} - 1")
    return bounds


def live_block_range(plan: Plan, need=lambda name: name, index=lambda a: f"{a}_index", printer=None):
    """The first and last blocks of the ordered axis that `mask_skip` leaves live in this
    tile, as code: lists of lower and of upper bounds (empty where the mask sets none)."""
    skip = plan.mask_skip
    others = [a for a in skip.axes if a != skip.axis]
    bounds = tile_bounds(plan, others, lambda a: f"{index(a)} * {need('block_' + a)}", need, index)

    def value(term):
        kind, name = term
        if kind == "extent":
            return extent_text(plan, name, printer)
        return need(name) if kind == "scalar" else param_constant(name)

    return masks.clamp_range(skip.condition, skip.axis, need(f"block_{skip.axis}"), bounds, value)


def masked_tile_clamp(plan: Plan, printer=None) -> str | None:
    """The ordered axis's block index in an index map, clamped to the tiles `mask_skip`
    leaves live, so that a skipped tile repeats a live block and the pipeline fetches
    nothing for it. `printer` marks the names used as kernel arguments (when the maps are
    printed inside the kernel)."""
    skip = plan.mask_skip
    if skip is None:
        return None
    need = printer.need if printer else (lambda name: name)
    firsts, lasts = live_block_range(plan, need, printer=printer)
    if not firsts and not lasts:
        return None
    tile = f"{skip.axis}_index"
    for first in firsts:
        tile = f"jnp.maximum({tile}, {first})"
    for last in lasts:
        tile = f"jnp.minimum({tile}, {last})"
    if plan.axes[skip.axis].mode == "tiled":
        return f"jnp.clip({tile}, 0, pl.cdiv({need(skip.axis)}, {need('block_' + skip.axis)}) - 1)"
    return f"jnp.maximum({tile}, 0)"


def snake_last(plan: Plan, need=lambda name: name, index=lambda a: f"{a}_index") -> str | None:
    """Where mask_skip leaves blocks 0..last of the ordered axis live, and `last` moves with
    the snake's outer axis, `last` as code: a backward walk then starts on the block below
    it (see the module's `_snake_block`)."""
    skip = plan.mask_skip
    # Only where the diagonal moves with the outer axis does the tile before end below it.
    if skip is None or skip.axis != plan.ir.ordered_axis or plan.snake_outer not in skip.axes:
        return None
    firsts, lasts = live_block_range(plan, need, index)
    return lasts[0] if not firsts and len(lasts) == 1 else None


def grid_parameter(plan: Plan, axis: str) -> str:
    """What an index map calls a grid axis: its tile index, or, for an ordered axis walked
    in passes or in snake order, the step."""
    stepped = plan.ir.passes > 1 or plan.snake_outer
    return f"{axis}_step" if axis == plan.ir.ordered_axis and stepped else f"{axis}_index"


def snake_tile(outer: str, step: str, tiles: str, last: str | None, clamp: bool = False) -> str:
    """The block of the ordered axis at `step` when even tiles of the axis outside it walk it
    backwards (the snake_order rule)."""
    keywords = (f", last={last}" if last else "") + (", clamp=True" if clamp and last else "")
    return f"_snake_block({step}, {tiles}, {outer}{keywords})"


def pass_tile(plan: Plan, op: Operand, tiles: str) -> str:
    """The block index along an ordered axis walked in passes: inputs are read in every
    pass; an output's block stays at the first until its pass writes it, then at the last."""
    a = plan.ir.ordered_axis
    if op not in plan.outputs:
        return f"lax.rem({a}_step, {tiles})"
    write = next(st.pass_index for st in plan.ir.statements if st.name == op.tensor)
    tile = f"{a}_step - {write} * {tiles}" if write else f"{a}_step"
    if write == plan.ir.passes - 1:
        return f"jnp.maximum({tile}, 0)"
    return f"jnp.clip({tile}, 0, {tiles} - 1)"


def block_spec(plan: Plan, op: Operand, maps: IndexMaps, clamp: str | None = None, tiles: str | None = None) -> "_Spec | str":
    """The BlockSpec of one operand, for the pallas_call or for an inner pipeline; `tiles`
    is the ordered axis's tile count where it is walked in passes."""
    if op.memory == "any":
        return "pl.BlockSpec(memory_space=pl.ANY)"
    k = plan.ir
    t = k.tensors[op.tensor]
    if k.passes > 1:
        clamp = pass_tile(plan, op, tiles)
    shape, index = [], []
    for d in t.dims:
        mode = plan.axes[d].mode
        if mode in ("squeezed", "segment"):
            shape.append("None")
            index.append(f"{d}_index")
        elif mode == "tiled" and plan.unit.clamps_tails:
            # a pipeline's DMA does not clip a block that overhangs the array: bound the last one
            tile = clamp if clamp and d == plan.ir.ordered_axis else f"{d}_index"
            shape.append(f"pl.BoundedSlice(block_{d})")
            index.append(f"_bounded_tile({tile}, block_{d}, {d})")
        elif mode == "tiled":
            shape.append(f"block_{d}")
            index.append(clamp if clamp and d == plan.ir.ordered_axis else f"{d}_index")
        elif mode == "jagged":
            j = k.axes[d].jagged
            tile = clamp if clamp and d == plan.ir.ordered_axis else f"{d}_index"
            shape.append(f"pl.BoundedSlice(block_{d})")
            helper = "_aligned_tile" if d in plan.aligned_tiles else "_jagged_tile"
            index.append(f"{helper}({j.offsets}_ref, {j.segment}_index, {tile}, block_{d})")
        else:
            shape.append(d)
            index.append("0")
    if op.tensor in plan.unit_major:  # the unit dim inserted before the last one
        shape.insert(len(shape) - 1, "1")
        index.insert(len(index) - 1, "0")
    maps.helpers |= {h for h in ("bounded_tile", "jagged_tile", "aligned_tile") if any(f"_{h}(" in i for i in index)}
    returned = maps.add(op.tensor, tuple_text(index))
    extra = ", pipeline_mode=pl.Buffered(1)" if op.buffers == 1 else ""
    why = plan.why(op.tensor, "block_spec")
    if plan.mask_skip and clamp and plan.ir.ordered_axis in t.dims:
        why += plan.why(plan.mask_skip.statement, "block_spec")
    if plan.snake_outer and plan.ir.ordered_axis in t.dims:
        why += plan.why(plan.ir.ordered_axis, "block_spec")
    for d in sorted(plan.aligned_tiles & set(t.dims)):
        why += plan.why(d, "block_spec")
    if k.passes > 1 and k.ordered_axis in t.dims:
        a = k.ordered_axis
        why += [f"'{a}' is walked in {k.passes} passes: "
                + ("its blocks are written in one" if op in plan.outputs else "read in each")]
    return _Spec(tuple_text(shape), _MapRef(maps, returned), extra, why)


@dataclass
class Section:
    """One straight-line block of kernel code (the per-step body, or the finalize block)."""

    phase: str
    pass_index: int = 0  # which pass over the ordered axis, when it is walked in passes
    loads: list[str] = field(default_factory=list)
    indices: list[str] = field(default_factory=list)  # tile starts and extents
    masked_loads: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    loaded: set[str] = field(default_factory=set)
    acc_vars: dict[str, str] = field(default_factory=dict)  # accumulator -> variable holding it now
    masked: dict[tuple[str, int, str], str] = field(default_factory=dict)
    transposed: dict[tuple[str, tuple[int, ...]], str] = field(default_factory=dict)

    def code(self) -> list[str]:
        return self.loads + self.indices + self.masked_loads + self.lines


def placed_by_consumers(st: ir.Statement) -> bool:
    """Whether a statement is emitted only where a consumer reads it by name: a named boolean,
    which a consumer of higher rank computes again from its operands instead (boolean_at)."""
    return st.target == "value" and st.value.dtype == "bool"


class KernelPrinter:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.k = plan.ir
        self.static_args: list[str] = []  # keyword arguments the kernel needs
        self.uses: set[str] = set()  # "math", "jax", "lax", "mask_tail", activation names
        self.emitted: set[tuple[str, int, str]] = set()
        self.ordered = self.k.ordered_axis
        self.outer_names: set[str] = set()  # defined around the sections (a segment's extent, say)
        # Grid axes whose index the kernel body does not bind: read with pl.program_id where needed.
        self.program_ids: dict[str, int] = {}

    # -- static arguments
    def need(self, arg: str) -> str:
        if arg not in self.static_args:
            self.static_args.append(arg)
        return arg

    # -- expressions
    def expr(self, v: ir.Value, sec: Section) -> tuple[str, int]:
        """Source text and precedence of `v`."""
        if isinstance(v, ir.Literal):
            text = literal(v.value)
            return text, (3 if text.startswith("-") else ATOM)
        if isinstance(v, ir.ParamRef):
            return param_constant(v.name), ATOM
        if isinstance(v, ir.Extent):
            return self.extent(v.axis, sec), ATOM
        if isinstance(v, ir.RuntimeScalar):
            return self.need(v.name), ATOM
        if isinstance(v, ir.Index):
            return self.index(v.axis, self.plan.layout(v), sec)
        if isinstance(v, ir.Load):
            return self.load(v.tensor, sec), ATOM
        if isinstance(v, ir.AccRead):
            return self.acc_value(v.accumulator, sec), ATOM
        if isinstance(v, ir.ValueRef):
            self.ensure_statement(v.name, sec)
            return v.name, ATOM
        if isinstance(v, ir.Elementwise):
            return self.elementwise(v, sec)
        if isinstance(v, ir.Cast):
            x, p = self.expr(v.operand, sec)
            if v.operand.dtype is None and not v.operand.dims:
                return f"jnp.asarray({x}, {JNP_DTYPE[v.dtype]})", ATOM
            return f"{self.paren(x, p, ATOM)}.astype({JNP_DTYPE[v.dtype]})", ATOM
        if isinstance(v, ir.Reduce):
            fn = {"sum": "jnp.sum", "max": "jnp.max", "min": "jnp.min"}[v.kind]
            text, _ = self.expr(v.operand, sec)
            axis = self.position(self.plan.layout(v.operand), v.axis)
            x = self.masked(text, v.axis, axis, ir.REDUCTIONS[v.kind], sec)
            return f"{fn}({x}, axis={axis}, keepdims=True)", ATOM
        if isinstance(v, ir.Dot):
            return self.dot(v, sec), ATOM
        raise AssertionError(v)

    @staticmethod
    def paren(text: str, prec: int, need: int) -> str:
        return f"({text})" if prec < need else text

    def is_static(self, v: ir.Value) -> bool:
        """Whether `v` is a Python number when the kernel is traced (a segment's extent is not)."""
        if isinstance(v, ir.Extent) and (self.k.axes[v.axis].jagged or self.k.axes[v.axis].paged):
            return False
        return v.dtype is None and not v.dims and all(self.is_static(c) for c in ir.children(v))

    def operand(self, arg: ir.Value, result: ir.Value, sec: Section) -> tuple[str, int]:
        """An elementwise operand, broadcast by axis name to the result's layout: the dims it
        lacks are inserted as size-1 dims, so that it lines up by name, not by position."""
        if isinstance(arg, ir.Index) and self.plan.layout(arg):  # an iota laid out for its consumer
            return self.index(arg.axis, self.plan.layout(result), sec)
        missing = expansion(self.plan.layout(arg), self.plan.layout(result)) if not self.is_static(arg) else []
        if missing and self.positional(arg):
            # Positions are computed at the result's rank: Mosaic cannot reshape a 1-D vector
            # of rows into a column (index(t) < 3, broadcast over d).
            return self.expr_at(arg, self.plan.layout(result), sec)
        if missing and arg.dtype == "bool":
            # So is a boolean, through its operands: Mosaic cannot reshape a vector of i1
            # (where(r > 0, x, 0) with r [m]: r[:, None] > 0, not (r > 0)[:, None]).
            return self.boolean_at(arg, self.plan.layout(result), sec)
        text, prec = self.expr(arg, sec)
        if not missing:
            return text, prec
        rank = len(self.plan.layout(result))
        index = ", ".join("None" if i in missing else ":" for i in range(rank))
        return f"{self.paren(text, prec, ATOM)}[{index}]", ATOM

    def positional(self, v: ir.Value) -> bool:
        """Whether `v` is computed from positions (index()) and scalars alone."""
        def scalar(c: ir.Value) -> bool:  # extent(t) - extent(tq) is one number per segment
            return (self.is_static(c) or isinstance(c, (ir.Extent, ir.RuntimeScalar))
                    or isinstance(c, ir.Elementwise) and all(scalar(a) for a in c.args))

        def scalar_or_positional(c: ir.Value) -> bool:
            return scalar(c) or self.positional(c)

        if isinstance(v, ir.Index):
            return True
        return (isinstance(v, ir.Elementwise) and any(self.positional(c) for c in v.args)
                and all(scalar_or_positional(c) for c in v.args))

    def expr_at(self, v: ir.Value, layout, sec: Section) -> tuple[str, int]:
        """`v`, a positional value, printed with its iotas at `layout`."""
        nodes = [w for w in ir.walk(v) if isinstance(w, (ir.Index, ir.Elementwise))]
        saved = {id(w): self.plan.layouts[id(w)] for w in nodes}
        try:
            self.plan.layouts.update({id(w): layout for w in nodes})
            return self.expr(v, sec)
        finally:
            self.plan.layouts.update(saved)

    def boolean_at(self, v: ir.Value, layout, sec: Section) -> tuple[str, int]:
        """`v`, a boolean, printed at `layout`: a comparison or a combination of booleans takes
        the layout itself, and its operands are broadcast to it, down to the numbers compared;
        a named boolean is computed again there from its statement's value."""
        if isinstance(v, ir.ValueRef):
            st = next(s for s in self.k.statements if s.name == v.name)
            return self.boolean_at(st.value, layout, sec)
        if not isinstance(v, ir.Elementwise):
            raise AssertionError(f"a boolean {type(v).__name__} cannot be broadcast without a reshape")
        saved = self.plan.layouts[id(v)]
        try:
            self.plan.layouts[id(v)] = layout
            return self.expr(v, sec)
        finally:
            self.plan.layouts[id(v)] = saved

    def elementwise(self, v: ir.Elementwise, sec: Section) -> tuple[str, int]:
        if v.fn in BINARY_OPS:
            prec = BINARY_OPS[v.fn]
            a, pa = self.operand(v.args[0], v, sec)
            b, pb = self.operand(v.args[1], v, sec)
            left = prec + 1 if prec == COMPARE else prec  # a < b < c would chain
            return f"{self.paren(a, pa, left)} {v.fn} {self.paren(b, pb, prec + 1)}", prec
        if v.fn in ("neg", "not"):
            a, pa = self.operand(v.args[0], v, sec)
            return f"{'-' if v.fn == 'neg' else '~'}{self.paren(a, pa, 3)}", 3
        args = [self.operand(a, v, sec)[0] for a in v.args]
        if v.fn == "where":
            return f"jnp.where({', '.join(args)})", ATOM
        if v.fn in ir.ACTIVATIONS:
            if v.fn == "raw":
                return self.expr(v.args[0], sec)
            self.uses.add(v.fn)
            self.uses.add("lax" if v.fn == "gelu" else "jnp")
            return f"_{v.fn}({args[0]})", ATOM
        if self.is_static(v):
            self.uses.add("math")
            if v.fn == "rsqrt":
                return f"1 / math.sqrt({args[0]})", 2
            if v.fn in ("maximum", "minimum"):
                return f"{v.fn[:3]}({', '.join(args)})", ATOM
            if v.fn == "sigmoid":
                return f"1 / (1 + math.exp(-({args[0]})))", 2
            return f"{STATIC_UNARY[v.fn]}({args[0]})", ATOM
        if v.fn in ("maximum", "minimum"):
            return f"jnp.{v.fn}({', '.join(args)})", ATOM
        fn = ARRAY_UNARY[v.fn]
        self.uses.add(fn.split(".")[0])
        if v.args[0].dtype is None:  # a segment's extent: an int32 scalar, which lax.rsqrt refuses
            return f"{fn}({args[0]}.astype(jnp.float32))", ATOM
        return f"{fn}({args[0]})", ATOM

    @staticmethod
    def position(layout: Layout, axis: str) -> int:
        return next(i for i, (d, one) in enumerate(layout) if d == axis and not one)

    # -- tails of the ordered axis
    def tile_start(self, sec: Section, axis: str | None = None) -> str:
        """Where this tile starts along `axis` (the ordered axis by default)."""
        axis = axis or self.ordered
        name = f"{axis}_start"
        if name not in sec.loaded and name not in self.outer_names:
            paged = self.plan.axes[axis].mode == "paged"
            block = f"block_{axis}" if paged else self.need("block_" + axis)
            sec.indices.append(f"{name} = {self.tile_start_of(axis, f'{axis}_index', block)}")
            sec.loaded.add(name)
        return name

    def tile_start_of(self, axis: str, tile: str, block: str) -> str:
        """Where tile `tile` of `axis` starts, counted from its segment's first row for a jagged axis."""
        if axis in self.plan.aligned_tiles:  # the aligned block's first row: before the segment's, for its first
            j = self.k.axes[axis].jagged
            first = f"{j.offsets}_ref[{j.segment}_index]"
            return f"({first} // {block} + {tile}) * {block} - {first}"
        return f"{tile} * {block}"

    def tile_has_rows(self, axis: str, tile: str, block: str, size: str) -> str:
        """Whether tile `tile` of a jagged axis holds rows of its segment (an empty one's, none)."""
        if axis in self.plan.aligned_tiles:
            j = self.k.axes[axis].jagged
            self.uses.add("aligned_tile_has_rows")
            return f"_aligned_tile_has_rows({j.offsets}_ref, {j.segment}_index, {tile}, {block})"
        return f"{tile} * {block} < {size}"

    # -- positions
    def grid_index(self, axis: str, sec: Section) -> str:
        """The grid index along `axis`: bound by the kernel, or read here from the pallas_call grid."""
        name = f"{axis}_index"
        if axis in self.program_ids and name not in sec.loaded:
            sec.indices.append(f"{name} = pl.program_id({self.program_ids[axis]})")
            sec.loaded.add(name)
        return name

    def block_start(self, axis: str, sec: Section) -> str:
        """The position of this block's first element along a blocked axis (within its segment
        for a jagged axis, within its sequence for a paged one)."""
        if axis == self.ordered or axis in self.plan.aligned_tiles:
            return self.tile_start(sec, axis)
        name = f"{axis}_start"
        if name not in sec.loaded:
            index = self.grid_index(axis, sec)
            sec.indices.append(f"{name} = {index} * {self.need('block_' + axis)}")
            sec.loaded.add(name)
        return name

    def index(self, axis: str, layout: Layout, sec: Section) -> tuple[str, int]:
        """index(axis) at `layout`: an int32 iota along the axis's dim, size 1 in the others."""
        mode = self.plan.axes[axis].mode
        if mode in ("squeezed", "segment"):
            return self.grid_index(axis, sec), ATOM
        position = self.position(layout, axis)
        if mode == "paged":
            size = f"block_{axis}"
        elif mode == "full":
            size = self.need(axis)
        else:
            size = self.need(f"block_{axis}")
        shape = ["1"] * len(layout)
        shape[position] = size
        self.uses.add("lax")
        iota = f"lax.broadcasted_iota(jnp.int32, {tuple_text(shape)}, {position})"
        if mode == "full":
            return iota, ATOM
        return f"{self.block_start(axis, sec)} + {iota}", 1

    def extent(self, axis: str, sec: Section) -> str:
        """The axis's extent: static for a dense axis, this segment's for a jagged or paged one."""
        if self.k.axes[axis].paged:
            return f"{axis}_size"  # read from the lengths at the top of the kernel
        j = self.k.axes[axis].jagged
        if j is None:
            return self.need(axis)
        name = f"{axis}_size"
        if name not in sec.loaded and name not in self.outer_names:
            sec.indices.append(f"{name} = {self.segment_extent(axis)}")
            sec.loaded.add(name)
        return name

    def mask_call(self, text: str, axis: str, position: int, fill: float, sec: Section) -> str:
        start, size = self.tile_start(sec, axis), self.extent(axis, sec)
        # an aligned block may start before the segment's rows, too
        helper = "_mask_outside" if axis in self.plan.aligned_tiles else "_mask_tail"
        self.uses.add(helper.removeprefix("_"))
        if helper == "_mask_tail" and axis in self.plan.last_block_masks:
            self.uses.add("mask_last_block")
            helper = "_mask_last_block"
            reason = f"last_block_mask:{axis}"
            if reason not in sec.loaded:  # said once, above the section's first tail mask
                sec.loaded.add(reason)
                sec.indices += [
                    f"# {d.rule}: {d.reason}" for d in self.plan.decisions
                    if d.rule == "last_block_mask" and d.applied and d.subject == axis
                ]
        return f"{helper}({text}, axis={position}, start={start}, size={size}, fill={literal(fill)})"

    def masked(self, text: str, axis: str, position: int, fill: float, sec: Section, why: list[str] = ()) -> str:
        """`text` as a reduction over `axis` should see it: `fill` past the axis's end."""
        if axis not in self.plan.ragged_axes:
            return text
        call = self.mask_call(text, axis, position, fill, sec)
        if not text.isidentifier():
            return call
        # A named value masked the same way for several reductions is masked once.
        key = (text, position, literal(fill))
        if key not in sec.masked:
            name = f"{text}_masked"
            if name in sec.masked.values() or name in self.k.tensors or any(st.name == name for st in self.k.statements):
                name = f"{text}_masked_{len(sec.masked)}"
            sec.lines += [f"# {w}" for w in why] + [f"{name} = {call}"]
            sec.masked[key] = name
        return sec.masked[key]

    def transpose(self, text: str, perm: tuple[int, ...], sec: Section) -> str:
        if perm == tuple(range(len(perm))):
            return text
        if not text.isidentifier():
            return f"jnp.transpose({text}, {tuple_text(perm)})"
        key = (text, perm)
        if key not in sec.transposed:
            name = f"{text}_t" if f"{text}_t" not in sec.transposed.values() else f"{text}_t{len(sec.transposed)}"
            sec.lines.append(f"{name} = jnp.transpose({text}, {tuple_text(perm)})")
            sec.transposed[key] = name
        return sec.transposed[key]

    def dot(self, v: ir.Dot, sec: Section) -> str:
        la, lb = self.plan.layout(v.lhs), self.plan.layout(v.rhs)
        batch = dot_batch(la, lb, v.axis)
        operands, contracting = [], []
        for operand, layout in ((v.lhs, la), (v.rhs, lb)):
            perm = dot_permutation(layout, batch)
            text, _ = self.expr(operand, sec)
            text = self.transpose(text, perm, sec)
            position = perm.index(self.position(layout, v.axis))
            masked_at_load = isinstance(operand, ir.Load) and operand.tensor in self.plan.mask_at_load
            if not masked_at_load:
                why = self.plan.why(operand.tensor, "mask") if isinstance(operand, ir.Load) else []
                text = self.masked(text, v.axis, position, 0.0, sec, why)
            operands.append(text)
            contracting.append(position)
        ca, cb = contracting
        accumulate = JNP_DTYPE[v.dtype]
        a, b = operands
        if not batch and len(la) == 2 and len(lb) == 2 and ca == 1 and cb == 0:
            return f"jnp.dot({a}, {b}, preferred_element_type={accumulate})"
        self.uses.add("lax")
        nb = tuple(range(len(batch)))
        dims = f"((({ca},), ({cb},)), ({tuple_text(nb)}, {tuple_text(nb)}))"
        return f"lax.dot_general({a}, {b}, {dims}, preferred_element_type={accumulate})"

    # -- refs and accumulators
    def load(self, tensor: str, sec: Section) -> str:
        if tensor not in sec.loaded:
            op = next(op for op in self.plan.inputs if op.tensor == tensor)
            ref = op.ref
            if op.memory == "paged":  # this block's pages, in the slot they were copied to
                sec.loads.append(f"{tensor} = {tensor}_buffer[slot]")
                sec.loaded.add(tensor)
                return tensor
            if op.memory == "rows":  # this tile's rows, copied in before the loop
                sec.loads.append(f"{tensor} = {tensor}_rows[...]")
                sec.loaded.add(tensor)
                return tensor
            if tensor in self.plan.mask_at_load:
                axis, fill = self.plan.mask_at_load[tensor]
                layout = tuple((d, False) for d in self.plan.block_dims(self.k.tensors[tensor].dims))
                position = self.position(layout, axis)
                if tensor in self.plan.unit_major:
                    # masked as read, with its unit dim: Mosaic cannot select on the merged block
                    position += position == len(layout) - 1
                    merged = f"{ref}.shape[:-2] + {ref}.shape[-1:]"
                    call = f"{self.mask_call(f'{ref}[...]', axis, position, fill, sec)}.reshape({merged})"
                else:
                    call = self.mask_call(self.read_ref(tensor, ref), axis, position, fill, sec)
                sec.masked_loads.append(f"{tensor} = {call}")
            else:
                sec.loads.append(f"{tensor} = {self.read_ref(tensor, ref)}")
            sec.loaded.add(tensor)
        return tensor

    def read_ref(self, tensor: str, ref: str) -> str:
        """A block read whole, without the unit dim a jagged tensor is passed with."""
        if tensor in self.plan.unit_major:
            return f"{ref}[...].reshape({ref}.shape[:-2] + {ref}.shape[-1:])"
        return f"{ref}[...]"

    def output_ref(self, tensor: str) -> str:
        op = next(op for op in self.plan.outputs if op.tensor == tensor)
        return f"{tensor}_rows" if op.memory == "rows" else op.ref

    def acc_value(self, acc: str, sec: Section) -> str:
        if acc not in sec.acc_vars:
            if sec.phase == "final" and self.final_reads(acc) == 1:
                return f"{acc}_ref[...]"
            sec.loads.append(f"{acc} = {acc}_ref[...]")
            sec.acc_vars[acc] = acc
        return sec.acc_vars[acc]

    def final_reads(self, acc: str) -> int:
        return sum(
            1
            for s in self.k.statements
            if s.phase == "final"
            for w in ir.walk(s.value)
            if isinstance(w, ir.AccRead) and w.accumulator == acc
        )

    # -- statements
    def ensure_statement(self, name: str, sec: Section) -> None:
        """Emit a neutral statement, or a named boolean, into the section that first needs it."""
        st = next(s for s in self.k.statements if s.name == name)
        if st.phase == "neutral" or placed_by_consumers(st):
            self.statement(st, sec, demanded=True)

    def statement(self, st: ir.Statement, sec: Section, demanded: bool = False) -> None:
        if placed_by_consumers(st) and not demanded:
            return  # a consumer of higher rank computes it again from its operands (boolean_at)
        key = (sec.phase, sec.pass_index, st.name)
        if key in self.emitted:
            return
        self.emitted.add(key)
        v = st.value
        if st.target == "value":
            text, _ = self.expr(v, sec)
            sec.lines.append(f"{st.name} = {text}")
        elif st.target == "tensor":
            text, prec = self.expr(v, sec)
            if v.dtype != self.k.tensors[st.name].dtype:
                text = f"{self.paren(text, prec, ATOM)}.astype({self.output_ref(st.name)}.dtype)"
                prec = ATOM
            moved = self.transposed(text, st)
            prec, text = (ATOM, moved) if moved != text else (prec, text)
            ref = self.output_ref(st.name)
            if st.name in self.plan.unit_major:  # the block keeps the unit dim it is passed with
                text = f"{self.paren(text, prec, ATOM)}.reshape({ref}.shape)"
            dims = self.plan.block_dims(self.k.tensors[st.name].dims)
            for axis in sorted(self.plan.aligned_tiles & set(dims)):
                # a block two segments share: the rows of the others keep what their visits wrote
                sec.lines.append(f"# {self.merge_reason(axis)}")
                self.uses.add("mask_outside")
                start, size = self.tile_start(sec, axis), self.extent(axis, sec)
                text = f"_mask_outside({text}, axis={dims.index(axis)}, start={start}, size={size}, fill={ref}[...])"
            sec.lines.append(f"{ref}[...] = {text}")
        else:
            self.update(st, sec)

    def transposed(self, text: str, st: ir.Statement) -> str:
        """A value as its output block holds it: reduced (size-1) dims squeezed, dims in the
        tensor's order."""
        layout = self.plan.statement_layouts[st.name]
        kept = [i for i, (_, one) in enumerate(layout) if one]
        if kept:
            text = f"jnp.squeeze({text}, axis={tuple_text(kept) if len(kept) > 1 else kept[0]})"
        have = [d for d, one in layout if not one]
        want = list(self.plan.block_dims(self.k.tensors[st.name].dims))
        if have == want:
            return text
        return f"jnp.transpose({text}, {tuple_text(have.index(d) for d in want)})"

    def update(self, st: ir.Statement, sec: Section) -> None:
        acc = self.k.accumulators[st.name]
        v = st.value
        cast = "" if v.dtype == acc.dtype else f".astype({st.name}_ref.dtype)"
        reads_before_update = sum(
            1
            for s in self.k.statements
            for w in ir.walk(s.value)
            if isinstance(w, ir.AccRead) and w.accumulator == st.name and not w.updated
        )
        if (
            isinstance(v, ir.Elementwise)
            and v.fn == "+"
            and isinstance(v.args[0], ir.AccRead)
            and v.args[0].accumulator == st.name
            and reads_before_update == 1
            and not cast
            and st.name not in sec.acc_vars
        ):
            text, _ = self.expr(v.args[1], sec)
            sec.lines.append(f"{st.name}_ref[...] += {text}")
            return
        if isinstance(v, ir.ValueRef) and not cast:
            sec.lines.append(f"{st.name}_ref[...] = {v.name}")
            sec.acc_vars[st.name] = v.name
            return
        text, prec = self.expr(v, sec)
        if cast:
            text = f"{self.paren(text, prec, ATOM)}{cast}"
        sec.lines.append(f"{st.name} = {text}")
        sec.lines.append(f"{st.name}_ref[...] = {st.name}")
        sec.acc_vars[st.name] = st.name

    def section(self, phase: str, pass_index: int = 0) -> list[str]:
        sec = Section(phase, pass_index)
        for st in self.k.statements:
            if st.phase == phase and (phase != "step" or st.pass_index == pass_index):
                self.statement(st, sec)
        return sec.code()

    def pass_summary(self, n: int) -> str:
        """What pass `n` over the ordered axis does: the accumulators it folds, the outputs it writes."""
        steps = [st for st in self.k.statements if st.phase == "step" and st.pass_index == n]
        folds = [st.name for st in steps if st.target == "accumulator"]
        writes = [st.name for st in steps if st.target == "tensor"]
        return "; ".join(([f"folds {', '.join(folds)}"] if folds else []) + ([f"writes {', '.join(writes)}"] if writes else []))

    def passes(self, index: int) -> list[str]:
        """The body of a kernel whose ordered axis is walked in passes: one guarded block per
        pass, each folding its accumulators (the last writing the outputs along the axis)."""
        a, k = self.ordered, self.k
        tiles = tile_count(a)
        lines = [
            f"{a}_step = pl.program_id({index})",
            f"{tiles} = pl.cdiv({self.need(a)}, {self.need('block_' + a)})",
            # lax.div and lax.rem: the step is never negative, and Mosaic lowers them without a sign check
            f"{a}_pass, {a}_index = lax.div({a}_step, {tiles}), lax.rem({a}_step, {tiles})",
            "",
        ]
        self.uses.add("lax")
        lines += def_block("_init", self.init_lines(), f"@pl.when({a}_step == 0)") + [""]
        for n in range(k.passes):
            lines += [f"# pass {n + 1} of {k.passes} over '{a}': {self.pass_summary(n)}"]
            lines += def_block(f"_pass_{n + 1}", self.section("step", n), f"@pl.when({a}_pass == {n})") + [""]
        final = self.section("final")
        if final:
            lines += def_block("_finalize", final, f"@pl.when({a}_step == pl.num_programs({index}) - 1)")
        return lines

    # -- masked tiles (the mask_skip rule)
    def mask_value(self, term, sec: Section | None) -> str:
        kind, name = term
        if kind == "extent":
            return self.extent(name, sec) if sec is not None else extent_text(self.plan, name, self)
        if kind == "scalar":
            return self.need(name)
        return param_constant(name)

    def live_condition(self, sec: Section) -> str:
        """Code that is true when this tile of the ordered axis is not masked out entirely."""
        skip = self.plan.mask_skip
        bounds = tile_bounds(
            self.plan, skip.axes,
            lambda a: self.tile_start(sec, a) if a == self.ordered else self.block_start(a, sec),
            self.need, lambda a: self.grid_index(a, sec),
        )
        return masks.live_text(skip.condition, bounds, lambda t: self.mask_value(t, sec))

    # -- labels of kernel refs
    def block_shape(self, op: Operand) -> str:
        dims = []
        for d in self.k.tensors[op.tensor].dims:
            mode = self.plan.axes[d].mode
            if mode in ("tiled", "jagged"):
                dims.append(f"block_{d}")
            elif mode not in ("squeezed", "segment"):
                dims.append(d)
        return "[" + ", ".join(dims) + "]"

    def block_comment(self, op: Operand) -> str:
        if op.memory == "any":
            return "HBM, aliased to its output: never read"
        buffers = f"{op.buffers} buffer{'s' if op.buffers > 1 else ''}"
        return f"{op.tensor} block {self.block_shape(op)}, {buffers}"

    def hbm_comment(self, op: Operand) -> str:
        if op.memory == "any":
            return "aliased to its output: never read"
        return f"{op.tensor} [{', '.join(self.k.tensors[op.tensor].dims)}], in blocks {self.block_shape(op)}"

    def accumulator_refs(self) -> list[tuple[str, str]]:
        out = []
        for name, acc in self.k.accumulators.items():
            origin = f"for {acc.synthesized_from}" if acc.synthesized_from else "declared"
            out.append((f"{name}_ref", f"accumulator {name} over {acc.over} ({origin}), {acc.dtype}"))
        return out

    def merge_reason(self, axis: str) -> str:
        return (f"aligned_tiles: a '{axis}' block that two segments share is visited by both in a row and "
                "written back once; each writes its own rows and keeps the others'")

    def segment_extent(self, axis: str) -> str:
        """This segment's extent of a jagged axis, from its offsets."""
        j = self.k.axes[axis].jagged
        return f"{j.offsets}_ref[{j.segment}_index + 1] - {j.offsets}_ref[{j.segment}_index]"

    def init_lines(self) -> list[str]:
        lines = []
        for acc in self.k.accumulators.values():
            ref = f"{acc.name}_ref"
            if acc.init == 0:
                lines.append(f"{ref}[...] = jnp.zeros({ref}.shape, {ref}.dtype)")
            else:
                lines.append(f"{ref}[...] = jnp.full({ref}.shape, {literal(acc.init)}, {ref}.dtype)")
        return lines


@dataclass
class RefGroup:
    """Kernel parameters of one kind, shown under one label: (ref name, what it holds)."""

    label: str
    refs: list[tuple[str, str]]


@dataclass
class KernelSource:
    name: str
    groups: list[RefGroup]  # positional refs, in order, labelled
    static_args: list[str]
    lines: list[str]  # the body, indented relative to the def
    uses: set[str]

    @property
    def params(self) -> list[str]:
        return [ref for group in self.groups for ref, _ in group.refs]


def indent(lines: list[str], by: str = "    ") -> list[str]:
    return [by + line if line else "" for line in lines]


def def_block(name: str, body: list[str], decorator: str | None = None) -> list[str]:
    return ([decorator] if decorator else []) + [f"def {name}():"] + indent(body or ["pass"])


def print_kernel(plan: Plan) -> KernelSource:
    return plan.unit.kernel(plan)
