"""Plan a kernel: grid, blocks, memory spaces, layouts and the VMEM budget.

Every decision is data, with the reason it was made, so that `codegen plan`
can show it and tests can assert it. The plan is generic: it looks at axes,
tensors and accumulators, never at what the kernel is.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from codegen import ir
from codegen.chips import CHIPS, ITEMSIZE, LANES, MiB, Chip, sublane_tile
from codegen.errors import SpecError, did_you_mean
from codegen.rules import RULE_NAMES, RULES, Decision

ASSUMED_EXTENT = 512  # for full-extent axes without `max`, in the VMEM estimate only


@dataclass
class AxisPlan:
    name: str
    # "tiled": a grid axis over blocks; "jagged": a grid axis over up to max/block tiles of each
    # segment; "squeezed": a grid axis over single indices; "segment": the same, numbering the
    # segments of jagged axes; "full": the whole extent in every block.
    mode: str
    semantics: str | None  # "parallel" | "arbitrary" for grid axes
    block: int | None  # default block size for tiled and jagged axes
    alignment: int  # a block of this axis must be a multiple of this (or the full extent)
    reason: str
    whole: bool = False  # a jagged axis whose segments each fit in one tile: reduced in-block

    @property
    def blocked(self) -> bool:
        return self.mode in ("tiled", "jagged")

    @property
    def in_grid(self) -> bool:
        return self.mode != "full"


@dataclass
class Operand:
    tensor: str
    ref: str  # kernel parameter name
    # "blocked": VMEM blocks via a BlockSpec; "any": left in HBM, not copied; "paged": left
    # in HBM, its pages DMA'd by the kernel into VMEM slots; "rows": left in HBM, a tile's rows
    # of a jagged axis copied by the kernel to or from one VMEM buffer.
    memory: str
    buffers: int = 2
    alias_output: int | None = None  # index into outputs, for aliased inputs


# A kernel-local value's layout: one slot per array dim, each the axis it
# runs along and whether it is a kept size-1 dim (a reduced axis).
Slot = tuple[str, bool]
Layout = tuple[Slot, ...]


@dataclass
class VmemEstimate:
    items: list[tuple[str, int]]  # (what, bytes)
    assumed: list[str]  # axes whose extent was assumed

    @property
    def total(self) -> int:
        return sum(b for _, b in self.items)


@dataclass
class Plan:
    ir: ir.KernelIR
    chip: Chip
    axes: dict[str, AxisPlan]
    grid: list[str]  # the pallas_call grid
    inputs: list[Operand]
    outputs: list[Operand]
    rules_enabled: dict[str, bool]
    lowering: str = "pallas_grid"  # a name in codegen.lowerings.LOWERINGS
    lowering_reason: str = ""
    pipeline_grid: list[str] = field(default_factory=list)
    # Loads masked where they are loaded (tensor -> (axis, fill)); other masks sit at the
    # reduction that needs them.
    mask_at_load: dict[str, tuple[str, float]] = field(default_factory=dict)
    # Axes whose tail masks are computed on the overhanging block alone (last_block_mask).
    last_block_masks: set[str] = field(default_factory=set)
    # Paged operands: VMEM slots per operand, whether the next block's DMA is started before
    # this block is computed on, and whether each slot has its own DMA semaphore.
    paged_slots: int = 2
    paged_prefetch: bool = True
    semaphore_per_slot: bool = True
    decisions: list[Decision] = field(default_factory=list)
    mask_skip: object | None = None  # a codegen.masks.SkipPlan when the mask_skip rule fired
    # Whether tiles past a segment's end hold the ordered axis at its last block (idle_tiles_hold).
    holds_idle_tiles: bool = False
    # (segment axis, jagged axis) whose grid axes fold into one over the real tiles (real_tiles_only).
    visited_tiles: tuple[str, str] | None = None
    # The grid axis on whose even tiles the ordered axis is walked backwards (snake_order).
    snake_outer: str | None = None
    # Jagged axes walked in blocks aligned to the array, not to each segment's start (aligned_tiles).
    aligned_tiles: set[str] = field(default_factory=set)
    # Tensors passed to the kernel with a unit dim before their last one (see the pipeline units).
    unit_major: list[str] = field(default_factory=list)
    # Outputs allocated to whole tiles in interpret mode: tensor -> [(kernel dim position, tile)].
    tile_padded_outputs: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    # Inputs padded to whole tiles in interpret mode, for the same reason: tensor -> [(kernel dim position, tile)].
    tile_padded_inputs: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    layouts: dict[int, Layout] = field(default_factory=dict)  # id(ir value) -> layout
    statement_layouts: dict[str, Layout] = field(default_factory=dict)
    accumulator_layouts: dict[str, Layout] = field(default_factory=dict)
    vmem: VmemEstimate | None = None
    vmem_limit: int | None = None
    vmem_reason: str = ""

    # -- used by rules
    def donate_output(self, tensor: str) -> None:
        """Pass an output-only tensor in as well, left in HBM and aliased to its output."""
        index = next(i for i, o in enumerate(self.outputs) if o.tensor == tensor)
        self.outputs[index].ref = f"{tensor}_out_ref"
        self.inputs.append(Operand(tensor, f"{tensor}_ref", "any", alias_output=index))

    # -- queries
    @property
    def jagged_parallel_axes(self) -> list[str]:
        """Jagged axes of the pipeline grid that are not the ordered one: a static grid
        launches cdiv(max, block) of their tiles per segment."""
        return [a for a in self.pipeline_grid if self.axes[a].mode == "jagged" and a != self.ir.ordered_axis]

    def per_segment_outputs(self, axis: str) -> list[str]:
        """The outputs that the tiles of a jagged parallel axis write whole, not along it: a
        value per segment, which an empty segment's first tile must write too, though it
        holds no rows."""
        return [t.name for t in self.ir.outputs if axis not in t.dims]

    @property
    def idle_tile_axes(self) -> list[str]:
        """The jagged parallel axes some of whose tiles do no work: all but an axis kept
        whole (one tile per segment) whose tile writes a value per segment, even when empty."""
        return [a for a in self.jagged_parallel_axes if not (self.axes[a].whole and self.per_segment_outputs(a))]

    @property
    def visit_maps(self) -> list[str]:
        """The arrays real_tiles_only prefetches into SMEM: each visit's segment and its tile."""
        if self.visited_tiles is None:
            return []
        axis = self.visited_tiles[1]
        return [f"{axis}_visit_segment", f"{axis}_visit_tile"]

    @property
    def prefetched(self) -> list[str]:
        """The scalar-prefetch arguments of the pallas_call, in order."""
        return [t.name for t in self.ir.scalars] + self.visit_maps

    @property
    def printed_pipeline_grid(self) -> list[str]:
        """The pipeline grid as the kernel walks it: real_tiles_only folds a segment axis and
        its jagged axis into one, named `{jagged}_visit`."""
        if self.visited_tiles is None:
            return list(self.pipeline_grid)
        segment, axis = self.visited_tiles
        return [f"{a}_visit" if a == axis else a for a in self.pipeline_grid if a != segment]

    def kernel_dims(self, tensor: str) -> list[str]:
        """The dims of `tensor` as the kernel's array has them: "1" for an inserted unit dim."""
        dims = list(self.ir.tensors[tensor].dims)
        return dims[:-1] + ["1"] + dims[-1:] if tensor in self.unit_major else dims

    def block_dims(self, dims: tuple[str, ...]) -> tuple[str, ...]:
        """The dims of `dims` that a kernel block holds (squeezed grid axes drop out)."""
        return tuple(d for d in dims if self.axes[d].mode not in ("squeezed", "segment"))

    @property
    def unit(self):
        """The lowering unit that prints this plan."""
        from codegen.lowerings import LOWERINGS

        return LOWERINGS[self.lowering]

    @property
    def needs_tpu_facts(self) -> bool:
        """Whether tracing the kernel asks which TPU it is for: emit_pipeline does, so does
        Pallas's check of a rank-1 block against the chip's tiling, and so does Mosaic's
        lowering of the floor division in mask_skip's clamped index maps."""
        if self.unit.asks_tpu_info or self.mask_skip is not None:
            return True
        return any(
            len(self.block_dims(self.ir.tensors[op.tensor].dims)) == 1
            for op in self.inputs + self.outputs
            if op.memory == "blocked"
        )

    @property
    def block_grid(self) -> list[str]:
        """The grid whose indices BlockSpecs see: the pipeline's, or the pallas_call's."""
        return self.unit.block_grid(self)

    @property
    def ragged_axes(self) -> set[str]:
        """Axes whose last block can overhang what a reduction may see: the ordered axis, and
        jagged axes kept whole (their one tile is a bound on the segment, not its extent)."""
        o = self.ir.ordered_axis
        out = {o} if o is not None and self.axes[o].mode in ("tiled", "jagged", "paged") else set()
        return out | {a for a, ap in self.axes.items() if ap.whole}

    @property
    def aliases(self) -> dict[int, int]:
        return {i: op.alias_output for i, op in enumerate(self.inputs) if op.alias_output is not None}

    def index_axes(self, tensor: str) -> list[str]:
        """The grid axes (pallas_call and pipeline) a tensor's block index follows."""
        dims = set(self.ir.tensors[tensor].dims)
        for d in list(dims):
            j = self.ir.axes[d].jagged
            if j:
                dims.add(j.segment)
        return [a for a in self.grid + self.pipeline_grid if a in dims]

    def reuse(self, tensor: str) -> str:
        """How often a tensor's block is fetched, when it is reused across grid steps."""
        order = self.grid + self.pipeline_grid
        follows = self.index_axes(tensor)
        inner = [a for a in order[order.index(follows[-1]) + 1:] if a not in follows] if follows else order
        if not inner:
            return ""
        per = " x ".join(follows) if follows else "call"
        return f"fetched once per {per}, reused across {', '.join(inner)} steps"

    def default_block(self, axis: str) -> int:
        """The spec's `tune:` entry for the chip built for, else the planned block."""
        tuned = self.ir.spec.tune.get(self.chip.name)
        return tuned.blocks.get(axis, self.axes[axis].block) if tuned else self.axes[axis].block

    def why(self, subject: str, shapes: str) -> list[str]:
        """One-line comments for the `shapes` code that fired rules shaped: `rule: reason`."""
        kinds = {r.name: r.shapes for r in RULES}
        return [
            f"{d.rule}: {d.reason}"
            for d in self.decisions
            if d.applied and d.subject == subject and kinds[d.rule] == shapes
        ]

    def grid_position(self, axis: str) -> int:
        return self.grid.index(axis)

    def layout(self, value: ir.Value) -> Layout:
        return self.layouts[id(value)]


class LayoutError(Exception):
    pass


def _align(a: Layout | None, b: Layout | None, order: tuple[str, ...] = ()) -> Layout | None:
    """The layout of an elementwise result of operands laid out as `a` and `b`.

    Operands line up by axis name: one whose axes are a subset of the other's is
    broadcast into it, and two that each hold axes of their own merge, the axes that
    only one of them holds placed by `order` (the spec's axis order). Shared axes must
    come in the same order in both. A kept size-1 slot (a reduced axis) takes whatever
    the other operand holds at that axis, or stays kept.
    """
    if a is None:
        return b
    if b is None:
        return a
    if not a:
        return b
    if not b:
        return a
    if len(a) == len(b) and all(sa or sb or xa == xb for (xa, sa), (xb, sb) in zip(a, b)):
        return tuple((xb, sb) if sa else (xa, sa) for (xa, sa), (xb, sb) in zip(a, b))
    names_a, names_b = [x for x, _ in a], [x for x, _ in b]
    if len(set(names_a)) != len(names_a) or len(set(names_b)) != len(names_b):
        raise LayoutError
    shared = [x for x in names_a if x in names_b]
    if shared != [x for x in names_b if x in names_a]:
        raise LayoutError
    kept = {x: sa for x, sa in a}
    for x, sb in b:
        kept[x] = kept[x] and sb if x in kept else sb
    rank = {x: i for i, x in enumerate(order)}
    out: list[str] = []
    i = j = 0
    while i < len(names_a) or j < len(names_b):
        xa = names_a[i] if i < len(names_a) else None
        xb = names_b[j] if j < len(names_b) else None
        if xa is not None and xa == xb:
            out.append(xa)
            i, j = i + 1, j + 1
        elif xb is None or (xa is not None and xa not in shared and (xb in shared or rank.get(xa, -1) <= rank.get(xb, -1))):
            out.append(xa)
            i += 1
        else:
            out.append(xb)
            j += 1
    return tuple((x, kept[x]) for x in out)


def expansion(have: Layout, want: Layout) -> tuple[int, ...]:
    """Positions of `want` that an operand laid out as `have` lacks (it is broadcast there).

    `have` lines up by name with a subsequence of `want`, a kept size-1 slot whose axis
    `want` does not hold taking the next position; returns () when it needs no new dims
    (a scalar, or the same rank)."""
    if not have or len(have) == len(want):
        return ()
    names = [x for x, _ in want]
    taken, at = [], -1
    for x, one in have:
        at = names.index(x, at + 1) if x in names[at + 1:] else at + 1
        taken.append(at)
    return tuple(i for i in range(len(want)) if i not in taken)


def format_layout(layout: Layout | None) -> str:
    if layout is None:
        return "[?]"
    return "[" + ", ".join(f"{x}:1" if one else x for x, one in layout) + "]"


def dot_batch(a: Layout, b: Layout, axis: str) -> list[str]:
    """Axes both dot operands run along, other than the contracted one: batch dims."""
    b_axes = [d for d, one in b if not one]
    return [d for d, one in a if not one and d in b_axes and d != axis]


def dot_permutation(layout: Layout, batch: list[str]) -> tuple[int, ...]:
    """The transpose that puts a dot operand's batch dims first, as the TPU's matmul wants."""
    names = [d for d, _ in layout]
    rest = [i for i, d in enumerate(names) if d not in batch]
    return tuple([names.index(d) for d in batch] + rest)


@dataclass(frozen=True)
class PermutedLoad:
    """A tensor load that a dot transposes, and that a reduction over a ragged axis must mask."""

    tensor: str
    axis: str
    fill: float
    layout: Layout
    permutation: tuple[int, ...]
    consumer: str

    @property
    def position(self) -> int:
        return [d for d, _ in self.layout].index(self.axis)


def permuted_masked_loads(plan: "Plan") -> list[PermutedLoad]:
    found: dict[str, PermutedLoad] = {}
    for st in plan.ir.statements:
        for v in ir.walk(st.value):
            if not isinstance(v, ir.Dot) or v.axis not in plan.ragged_axes:
                continue
            la, lb = plan.layout(v.lhs), plan.layout(v.rhs)
            batch = dot_batch(la, lb, v.axis)
            for operand, layout in ((v.lhs, la), (v.rhs, lb)):
                perm = dot_permutation(layout, batch)
                if isinstance(operand, ir.Load) and perm != tuple(range(len(perm))):
                    found.setdefault(
                        operand.tensor,
                        PermutedLoad(operand.tensor, v.axis, 0.0, layout, perm, f"dot over '{v.axis}' in '{st.name}'"),
                    )
    return list(found.values())


class _Layouts:
    """Kernel-local layouts of every IR value, in keepdims style."""

    def __init__(self, plan: Plan, accumulators: dict[str, Layout | None]):
        self.plan = plan
        self.acc = accumulators
        self.statements: dict[str, Layout] = {}
        self.values: dict[int, Layout] = {}

    def of(self, v: ir.Value) -> Layout | None:
        out = self._of(v)
        if out is not None:
            self.values[id(v)] = out
        return out

    def _of(self, v: ir.Value) -> Layout | None:  # noqa: C901
        p = self.plan
        if isinstance(v, ir.Load):
            return tuple((d, False) for d in p.block_dims(p.ir.tensors[v.tensor].dims))
        if isinstance(v, (ir.ParamRef, ir.Literal, ir.Extent, ir.RuntimeScalar)):
            return ()
        if isinstance(v, ir.Index):  # a position along a squeezed grid axis is the grid index
            return tuple((d, False) for d in p.block_dims(v.dims))
        if isinstance(v, ir.AccRead):
            return self.acc[v.accumulator]
        if isinstance(v, ir.ValueRef):
            return self.statements.get(v.name)
        if isinstance(v, ir.Elementwise):
            layouts = [self.of(a) for a in v.args]
            known = [lay for lay in layouts if lay is not None]
            if len(known) < len(layouts) and all(lay == () for lay in known):
                return None  # only an open accumulator gives this value its shape
            out: Layout = ()
            try:
                for lay in known:
                    out = _align(out, lay, tuple(p.ir.axes))
            except LayoutError:
                raise SpecError(
                    f"cannot line up operands with dims {' and '.join(format_layout(lay) for lay in layouts)}",
                    v.loc,
                    "operands line up by axis name: list the axes they share in the same order",
                ) from None
            return out
        if isinstance(v, ir.Cast):
            return self.of(v.operand)
        if isinstance(v, ir.Reduce):
            x = self.of(v.operand)
            if x is None:
                return None
            return tuple((d, True) if d == v.axis else (d, one) for d, one in x)
        if isinstance(v, ir.Dot):
            a, b = self.of(v.lhs), self.of(v.rhs)
            if a is None or b is None:
                return None
            batch = dot_batch(a, b, v.axis)
            a_free = [s for s in a if s[0] != v.axis and s[0] not in batch]
            b_free = [s for s in b if s[0] != v.axis and s[0] not in batch]
            return tuple([(d, False) for d in batch] + a_free + b_free)
        raise AssertionError(v)

    def run(self) -> None:
        for st in self.plan.ir.statements:
            lay = self.of(st.value)
            self.statements[st.name] = lay
            if st.target == "accumulator":
                try:
                    self.acc[st.name] = _align(self.acc.get(st.name), lay)
                except LayoutError:
                    raise SpecError(
                        f"the update of '{st.name}' has dims {format_layout(lay)}, not {format_layout(self.acc[st.name])}", st.loc
                    ) from None


def _classify_axes(k: ir.KernelIR) -> dict[str, AxisPlan]:  # noqa: C901
    last_two: dict[str, list[tuple[str, int]]] = {}
    used: set[str] = {d for acc in k.accumulators.values() for d in acc.dims}
    for t in k.tensors.values():
        if t.scalar:
            continue  # scalar-prefetched to SMEM: no blocks, no tiling
        used |= set(t.dims)
        for pos, d in enumerate(t.dims[-2:]):
            need = LANES if pos == len(t.dims[-2:]) - 1 else sublane_tile(t.dtype)
            last_two.setdefault(d, []).append((t.name, need))
    # Where an axis is a major dim of some tensor and never a lane dim, a tensor holding it
    # second-to-last can take it one index at a time, as the others do, with a unit dim
    # inserted before its last (Plan.unit_major): not whole, at a size nobody gave.
    major: dict[str, set[str]] = {}
    lanes: set[str] = set()
    for t in k.tensors.values():
        if not t.scalar:
            lanes.add(t.dims[-1])
            for d in t.dims[:-2]:
                major.setdefault(d, set()).add(t.name)
    plans = {}
    segments = {a.segment for a in k.axes.values() if a.segment}
    used |= segments
    for name, axis in k.axes.items():
        align = math.lcm(*[n for _, n in last_two.get(name, [])]) if name in last_two else 1
        if axis.paged:
            if name != k.ordered_axis:
                raise SpecError(f"paged axis '{name}' must be reduced over through accumulators", axis.paged.loc)
            p = axis.paged
            plans[name] = AxisPlan(
                name, "paged", "arbitrary", axis.block, 1,
                f"paged: position t of segment '{p.segment}' is at page {p.table}[{p.segment}, t // page_size], "
                f"bounded by {p.lengths}[{p.segment}]; walked in-kernel, {axis.block} pages per compute block",
            )
        elif name not in used:
            plans[name] = AxisPlan(name, "full", None, None, 1, "only in scalar-prefetched tensors")
        elif axis.jagged and name in k.whole_axes:
            plans[name] = AxisPlan(
                name, "jagged", "parallel", axis.block, align,
                f"kept whole: a reduction over '{name}' is used elementwise against it, so each segment of "
                f"'{axis.jagged.segment}' is one tile of up to block_{name} rows (a {axis.jagged.max} above "
                "it is an error at call time), and reductions mask the rows past the segment's end",
                whole=True,
            )
        elif name in k.whole_axes:
            plans[name] = AxisPlan(
                name, "full", None, None, 1,
                f"kept whole: a reduction over '{name}' is used elementwise against it, so the whole extent "
                "sits in each block and the block given is not used",
            )
        elif axis.jagged:
            ordered = name == k.ordered_axis
            plans[name] = AxisPlan(
                name, "jagged", "arbitrary" if ordered else "parallel", axis.block, align,
                f"jagged over segments of '{axis.jagged.segment}' (offsets '{axis.jagged.offsets}'): "
                f"cdiv({axis.jagged.max}, block) tiles per segment, pl.BoundedSlice blocks, over-launched tiles skipped"
                + ("; ordered: accumulators are carried across it, 'arbitrary'" if ordered else ""),
            )
        elif name in segments:
            plans[name] = AxisPlan(name, "segment", "parallel", None, 1,
                                   "numbers the segments of jagged or paged axes: one grid step per segment")
        elif name == k.ordered_axis:
            plans[name] = AxisPlan(name, "tiled", "arbitrary", axis.block, align,
                                   "ordered: accumulators are carried across it, so it is the last grid axis, 'arbitrary'")
        elif axis.block is not None:
            plans[name] = AxisPlan(name, "tiled", "parallel", axis.block, align,
                                   "tiled (block given); blocks are independent, 'parallel'")
        elif name in k.reduced_axes:
            plans[name] = AxisPlan(name, "full", None, None, 1, "reduced over inside a block: whole extent in VMEM")
        elif name in last_two and axis.max is None and name in major and name not in lanes:
            plans[name] = AxisPlan(
                name, "squeezed", "parallel", None, 1,
                f"a major dim of {', '.join(sorted(major[name]))} without a block or max: one grid step per index; "
                f"a unit dim follows it in {', '.join(sorted({t for t, _ in last_two[name]}))}, which hold it second-to-last",
            )
        elif name in last_two:
            plans[name] = AxisPlan(name, "full", None, None, 1,
                                   f"in the last two dims of {', '.join(sorted({t for t, _ in last_two[name]}))} without a block: whole extent")
        else:
            plans[name] = AxisPlan(name, "squeezed", "parallel", None, 1,
                                   "a major dim without a block: one grid step per index, squeezed from the block")
    return plans


def _check_tiling(k: ir.KernelIR, axes: dict[str, AxisPlan]) -> None:
    """The spec's blocks, then each tune entry's, fit the TPU's tiling: a build for any
    chip defaults to that chip's entry."""
    _check_blocks_tile(k, axes, lambda d: k.axes[d].block_loc, "")
    for entry in k.spec.tune.values():
        tuned = {name: dataclasses.replace(a, block=entry.blocks[name]) if name in entry.blocks else a
                 for name, a in axes.items()}
        _check_blocks_tile(k, tuned, lambda d: entry.block_locs.get(d, k.axes[d].block_loc), f"tune.{entry.chip}: ")


def _check_blocks_tile(k: ir.KernelIR, axes: dict[str, AxisPlan], block_loc, where_from: str) -> None:
    for t in k.tensors.values():
        if t.scalar:
            continue
        if len(t.dims) == 1 and axes[t.dims[0]].mode == "tiled":
            # Mosaic's rule for rank-1 blocks: a multiple of a whole (8, 128) vreg of
            # elements, or a power of two of at least one packed row of lanes.
            block, row = axes[t.dims[0]].block, LANES * (4 // ITEMSIZE[t.dtype])
            if block % (8 * LANES) and not (block >= row and block & (block - 1) == 0):
                raise SpecError(
                    f"{where_from}block {block} of axis '{t.dims[0]}' breaks TPU tiling for '{t.name}', a rank-1 "
                    f"{t.dtype} block: it must be a power of two of at least {row}, or a multiple of {8 * LANES}",
                    block_loc(t.dims[0]),
                    f"use e.g. {max(row, 256)}",
                )
        tail = t.dims[-2:]
        for pos, d in enumerate(tail):
            a = axes[d]
            if not a.blocked:
                continue
            lane = pos == len(tail) - 1
            need = LANES if lane else sublane_tile(t.dtype)
            if a.block % need:
                where = "last (lane)" if lane else "second-to-last (sublane)"
                raise SpecError(
                    f"{where_from}block {a.block} of axis '{d}' breaks TPU tiling: it is the {where} dim of "
                    f"'{t.name}' ({t.dtype}), so its block must be a multiple of {need}",
                    block_loc(d),
                    f"use a multiple of {need}, or drop the block to keep the whole extent",
                )


def _padded_bytes(shape: list[int], dtype: str) -> int:
    if not shape:
        return ITEMSIZE[dtype]
    shape = list(shape)
    shape[-1] = -(-shape[-1] // LANES) * LANES
    if len(shape) >= 2:
        sub = sublane_tile(dtype)
        shape[-2] = -(-shape[-2] // sub) * sub
    return math.prod(shape) * ITEMSIZE[dtype]


def _estimate_vmem(plan: Plan) -> VmemEstimate:
    k = plan.ir
    assumed = []

    # Blocks at the entry point's defaults: the chip's tune: entry where it has one.
    def extent(axis: str) -> int:
        a = plan.axes[axis]
        if a.mode == "paged":
            return plan.default_block(axis) * k.axes[axis].paged.page_size
        if a.blocked:
            return plan.default_block(axis)
        if k.axes[axis].max is not None:
            return k.axes[axis].max
        if axis not in assumed:
            assumed.append(axis)
        return ASSUMED_EXTENT

    def layout_shape(layout: Layout) -> list[int]:
        return [1 if one else extent(d) for d, one in layout]

    items = []
    for op in plan.inputs:
        if op.memory != "paged":
            continue
        t = k.tensors[op.tensor]
        axis = next(d for d in t.dims if plan.axes[d].mode == "paged")
        rows = plan.default_block(axis) * k.axes[axis].paged.page_size
        shape = [rows] + [extent(d) for d in t.dims[t.dims.index(axis) + 1:]]
        items.append((f"{op.tensor} page slots x{plan.paged_slots}", plan.paged_slots * _padded_bytes(shape, t.dtype)))
    for op in plan.inputs + plan.outputs:
        if op.memory == "rows":
            t = k.tensors[op.tensor]
            shape = [extent(d) for d in plan.block_dims(t.dims)]
            items.append((f"{op.tensor} rows buffer", _padded_bytes(shape, t.dtype)))
        if op.memory != "blocked":
            continue
        t = k.tensors[op.tensor]
        shape = [extent(d) for d in plan.block_dims(t.dims)]
        kind = "in" if op in plan.inputs else "out"
        items.append((f"{kind} {op.tensor} block x{op.buffers}", op.buffers * _padded_bytes(shape, t.dtype)))
    for name, lay in plan.accumulator_layouts.items():
        acc = k.accumulators[name]
        items.append((f"scratch {name}", _padded_bytes(layout_shape(lay), acc.dtype)))
    if plan.last_block_masks:
        # lax.cond yields its block whole: the masked copy and the value it returns
        masked = sum(
            _padded_bytes([extent(d) for d in plan.block_dims(k.tensors[op.tensor].dims)], k.tensors[op.tensor].dtype)
            for op in plan.inputs
            if op.memory == "blocked" and plan.last_block_masks & set(k.tensors[op.tensor].dims)
        )
        if masked:
            items.append(("blocks masked under lax.cond x2", 2 * masked))
    values = 0
    for st in k.statements:
        if st.target == "tensor":
            continue
        lay = plan.statement_layouts[st.name]
        dtype = st.value.dtype if st.value.dtype in ITEMSIZE else "float32"  # a boolean counted as 4 bytes
        values += _padded_bytes(layout_shape(lay), dtype) if lay else 0
    if values:
        items.append(("kernel values (upper bound)", values))
    return VmemEstimate(items, assumed)


def _choose_lowering(k: ir.KernelIR, axes: dict[str, AxisPlan]) -> tuple[str, str]:
    """The first lowering in the table that applies, or the one the spec names."""
    from codegen.lowerings import LOWERINGS

    spec = k.spec
    applicable = [name for name, unit in LOWERINGS.items() if unit.applies(k, axes)]
    if spec.lowering is None:
        return applicable[0], LOWERINGS[applicable[0]].reason("the default")
    if spec.lowering not in applicable or not LOWERINGS[spec.lowering].choosable:
        choosable = [name for name in applicable if LOWERINGS[name].choosable]
        raise SpecError(
            f"lowering '{spec.lowering}' does not apply to this kernel",
            spec.lowering_loc,
            f"it may choose: {', '.join(choosable)}" if choosable else "this kernel has one lowering: remove the key",
        )
    return spec.lowering, LOWERINGS[spec.lowering].reason("from the spec")


def make_plan(k: ir.KernelIR, chip: str = "v5e") -> Plan:
    spec = k.spec
    for name, switch in spec.rules.items():
        if name not in RULE_NAMES:
            raise SpecError(f"unknown rule '{name}'", switch.loc, did_you_mean(name, RULE_NAMES) or f"rules: {', '.join(RULE_NAMES)}")
    if chip not in CHIPS:
        raise SpecError(f"unknown chip '{chip}'", None, f"one of: {', '.join(CHIPS)}")
    enabled = {r.name: spec.rules[r.name].enabled if r.name in spec.rules else r.on_by_default for r in RULES}

    axes = _classify_axes(k)
    _check_tiling(k, axes)
    grid = [a for a in k.axes if axes[a].in_grid and a != k.ordered_axis]
    if k.ordered_axis:
        grid.append(k.ordered_axis)
    from codegen.lowerings import LOWERINGS

    lowering, reason = _choose_lowering(k, axes)
    unit = LOWERINGS[lowering]
    if k.passes > 1 and not unit.walks_in_passes:
        axis = k.axes[k.ordered_axis]
        raise SpecError(
            f"a reduction over '{axis.name}' is used elementwise against it, and the {lowering} lowering "
            f"cannot walk '{axis.name}' in passes",
            axis.loc,
            "carry the reduction in declared accumulators instead (an online softmax, as specs/paged_attention.yaml does)",
        )
    grid, pipeline_grid = unit.arrange(grid, axes)
    inputs = []
    for t in k.inputs:
        if t.scalar:
            continue
        memory = unit.operand_memory(t, axes)
        inputs.append(Operand(t.name, f"{t.name}_hbm_ref" if memory in ("paged", "rows") else f"{t.name}_ref", memory))
    outputs = []
    for t in k.outputs:
        memory = unit.output_memory(t, axes)
        ref = f"{t.name}_out_ref" if t.read else f"{t.name}_ref"
        outputs.append(Operand(t.name, ref.removesuffix("_ref") + "_hbm_ref" if memory == "rows" else ref, memory))
        if t.read:
            index = next(i for i, op in enumerate(inputs) if op.tensor == t.name)
            inputs[index].alias_output = len(outputs) - 1

    plan = Plan(k, CHIPS[chip], axes, grid, inputs, outputs, enabled, lowering, reason, pipeline_grid)
    plan.unit_major += [t.name for t in k.tensors.values()
                        if not t.scalar and len(t.dims) >= 2 and axes[t.dims[-2]].mode == "squeezed"
                        and axes[t.dims[-1]].mode != "squeezed"]
    for op in inputs + outputs:
        t = k.tensors[op.tensor]
        if op.memory == "blocked" and not plan.block_dims(t.dims):
            raise SpecError(
                f"every dim of '{t.name}' [{', '.join(t.dims)}] is a grid axis, so its block would be a single "
                "element, which a TPU block cannot be",
                t.loc,
                "add a dim that stays in the block (e.g. [" + ", ".join([*t.dims, "d"]) + "]), or give one of its axes a block",
            )

    # Layouts: accumulators take the layout of their update; a first pass
    # leaves them open, a second checks everything against the result.
    first = _Layouts(plan, {name: None for name in k.accumulators})
    first.run()
    second = _Layouts(plan, dict(first.acc))
    second.run()
    for name, lay in second.acc.items():
        acc = k.accumulators[name]
        if lay is None:
            raise SpecError(f"cannot infer the layout of accumulator '{name}'", acc.loc)
        held = sorted(d for d, one in lay if not one)
        if held != sorted(plan.block_dims(acc.dims)):
            raise SpecError(
                f"accumulator '{name}' is declared over [{', '.join(acc.dims)}] but its update runs over {format_layout(lay)}",
                acc.loc,
            )
    for st in k.statements:
        if st.target == "tensor":
            want = [d for d in plan.block_dims(k.tensors[st.name].dims)]
            # Kept size-1 slots (reduced axes) are squeezed when the value is written.
            got = [d for d, one in second.statements[st.name] if not one]
            if sorted(want) != sorted(got):
                raise SpecError(f"the value written to '{st.name}' has layout {format_layout(second.statements[st.name])}, not [{', '.join(want)}]", st.loc)
    plan.layouts = second.values
    plan.statement_layouts = second.statements
    plan.accumulator_layouts = {name: second.acc[name] for name in k.accumulators}

    for rule in RULES:
        plan.decisions.extend(rule.apply(plan, enabled[rule.name]))
    unit.finish(plan)
    for t in k.tensors.values():
        # Blocks of a rank-1 array are sliced at whole tiles of its lanes; a segment's
        # first row can be anywhere (Mosaic: "dynamic offset ... multiple of the word size").
        if not t.scalar and len(t.dims) == 1 and axes[t.dims[0]].mode == "jagged" and t.dims[0] not in plan.aligned_tiles:
            raise SpecError(
                f"'{t.name}' [{t.dims[0]}] would be read in blocks that start at each segment's first row, which "
                f"Mosaic cannot slice from a rank-1 array (only at multiples of its {LANES}-element tiles)",
                t.loc,
                f"give it a dim that stays in the block (a [{t.dims[0]}, ...] tensor), or let aligned_tiles fire "
                "(see `codegen plan` for why it did not), which aligns the blocks to the array",
            )
    for op in plan.inputs:
        if op.memory == "blocked" and not plan.index_axes(op.tensor):
            op.buffers = 1  # the same block at every grid step: fetched once, resident in VMEM

    plan.vmem = _estimate_vmem(plan)
    total = plan.vmem.total
    if total > plan.chip.vmem_bytes and plan.vmem.assumed:
        # A whole-extent axis of unknown size: smaller blocks would not help.
        name = plan.vmem.assumed[0]
        raise SpecError(
            f"the plan needs {total / MiB:.1f} MiB of VMEM, over the {plan.chip.vmem_bytes // MiB} MiB of a "
            f"{plan.chip.name} TensorCore, counting {ASSUMED_EXTENT} for '{name}', which every block holds whole "
            f"({axes[name].reason}) and whose size is not known",
            k.axes[name].loc,
            f"give '{name}' a max (`{name}: {{max: N}}`) or a block, or use smaller blocks",
        )
    if total > plan.chip.vmem_bytes:
        # Blame the largest size in the estimate: a block, or the max of a whole-extent axis.
        sizes = [(a.block, a.block_loc, "blocks") for a in k.axes.values() if a.block_loc is not None]
        sizes += [(a.max, a.max_loc, "a smaller max") for a in k.axes.values()
                  if a.max_loc is not None and not axes[a.name].blocked]
        _, loc, fix = max(sizes, key=lambda s: s[0]) if sizes else (0, spec.name_loc, "blocks")
        raise SpecError(
            f"the plan needs {total / MiB:.1f} MiB of VMEM, over the {plan.chip.vmem_bytes // MiB} MiB of a {plan.chip.name} TensorCore",
            loc,
            f"use {'smaller ' + fix if fix == 'blocks' else fix} (run `codegen plan` for the breakdown)",
        )
    if total > plan.chip.scoped_vmem_default:
        # XLA keeps VMEM of its own beside the call: on v7x layernorm's and gdpa_jagged's
        # programs compiled with a 40 MiB limit and ran out of the 64 MiB at 45-51 MiB.
        ceiling = max(plan.chip.scoped_vmem_default, plan.chip.vmem_bytes * 5 // 8)
        plan.vmem_limit = min(ceiling, -(-int(total * 1.25) // MiB) * MiB)
        plan.vmem_reason = (
            f"the plan needs {total / MiB:.1f} MiB of VMEM, over {plan.chip.name}'s "
            f"{plan.chip.scoped_vmem_default // MiB} MiB scoped default: raise the limit, with a quarter to spare"
            + (f", up to {ceiling // MiB} MiB, 5/8 of the TensorCore's: XLA keeps the rest beside the call"
               if plan.vmem_limit == ceiling else "")
        )
    return plan
