"""Print IR values and statements as the Python lines of a kernel.

Only validated identifiers from the spec and numeric literals reach the
output; everything else is fixed text chosen here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from codegen import ir
from codegen.plan import Layout, Operand, Plan, dot_batch, dot_permutation

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
BINARY_OPS = {"+": 1, "-": 1, "*": 2, "/": 2}
ATOM = 4


def literal(value: float | int) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "jnp.inf" if value > 0 else "-jnp.inf"
        return repr(value)
    return str(int(value))


def param_constant(name: str) -> str:
    return name.upper()


def _tuple(items) -> str:
    items = [str(i) for i in items]
    if not items:
        return "()"
    if len(items) == 1:
        return f"({items[0]},)"
    return "(" + ", ".join(items) + ")"


def tile_count(axis: str) -> str:
    return f"num_{axis}_tiles"


def block_spec(plan: Plan, op: Operand) -> str:
    """The BlockSpec of one operand, for the pallas_call or for the inner pipeline."""
    if op.memory == "any":
        return "pl.BlockSpec(memory_space=pl.ANY)"
    k = plan.ir
    t = k.tensors[op.tensor]
    shape, index = [], []
    for d in t.dims:
        mode = plan.axes[d].mode
        if mode in ("squeezed", "segment"):
            shape.append("None")
            index.append(f"{d}_index")
        elif mode == "tiled":
            shape.append(f"block_{d}")
            index.append(f"{d}_index")
        elif mode == "jagged":
            j = k.axes[d].jagged
            shape.append(f"pl.BoundedSlice(block_{d})")
            index.append(f"_jagged_tile({j.offsets}_ref, {j.segment}_index, {d}_index, block_{d})")
        else:
            shape.append(d)
            index.append("0")
    params = ", ".join([f"{a}_index" for a in plan.block_grid] + (["*_"] if plan.lowering == "paged" else []))
    extra = ", pipeline_mode=pl.Buffered(1)" if op.buffers == 1 else ""
    return f"pl.BlockSpec({_tuple(shape)}, lambda {params}: {_tuple(index)}{extra})"


@dataclass
class Section:
    """One straight-line block of kernel code (the per-step body, or the finalize block)."""

    phase: str
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


class KernelPrinter:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.k = plan.ir
        self.static_args: list[str] = []  # keyword arguments the kernel needs
        self.uses: set[str] = set()  # "math", "jax", "lax", "mask_tail", activation names
        self.emitted: set[tuple[str, str]] = set()
        self.ordered = self.k.ordered_axis

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
            return self.need(v.axis), ATOM
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
        return v.dtype is None and not v.dims and all(self.is_static(c) for c in ir.children(v))

    def elementwise(self, v: ir.Elementwise, sec: Section) -> tuple[str, int]:
        if v.fn in BINARY_OPS:
            prec = BINARY_OPS[v.fn]
            a, pa = self.expr(v.args[0], sec)
            b, pb = self.expr(v.args[1], sec)
            return f"{self.paren(a, pa, prec)} {v.fn} {self.paren(b, pb, prec + 1)}", prec
        if v.fn == "neg":
            a, pa = self.expr(v.args[0], sec)
            return f"-{self.paren(a, pa, 3)}", 3
        args = [self.expr(a, sec)[0] for a in v.args]
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
        return f"{fn}({args[0]})", ATOM

    @staticmethod
    def position(layout: Layout, axis: str) -> int:
        return next(i for i, (d, one) in enumerate(layout) if d == axis and not one)

    # -- tails of the ordered axis
    def tile_start(self, sec: Section) -> str:
        name = f"{self.ordered}_start"
        if name not in sec.loaded:
            paged = self.plan.axes[self.ordered].mode == "paged"
            block = f"block_{self.ordered}" if paged else self.need("block_" + self.ordered)
            sec.indices.append(f"{name} = {self.ordered}_index * {block}")
            sec.loaded.add(name)
        return name

    def extent(self, axis: str, sec: Section) -> str:
        """The axis's extent: static for a dense axis, this segment's for a jagged or paged one."""
        if self.k.axes[axis].paged:
            return f"{axis}_size"  # read from the lengths at the top of the kernel
        j = self.k.axes[axis].jagged
        if j is None:
            return self.need(axis)
        name = f"{axis}_size"
        if name not in sec.loaded:
            sec.indices.append(f"{name} = {j.offsets}_ref[{j.segment}_index + 1] - {j.offsets}_ref[{j.segment}_index]")
            sec.loaded.add(name)
        return name

    def mask_call(self, text: str, axis: str, position: int, fill: float, sec: Section) -> str:
        self.uses.add("mask_tail")
        start, size = self.tile_start(sec), self.extent(axis, sec)
        return f"_mask_tail({text}, axis={position}, start={start}, size={size}, fill={literal(fill)})"

    def masked(self, text: str, axis: str, position: int, fill: float, sec: Section) -> str:
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
            sec.lines.append(f"{name} = {call}")
            sec.masked[key] = name
        return sec.masked[key]

    def transpose(self, text: str, perm: tuple[int, ...], sec: Section) -> str:
        if perm == tuple(range(len(perm))):
            return text
        if not text.isidentifier():
            return f"jnp.transpose({text}, {_tuple(perm)})"
        key = (text, perm)
        if key not in sec.transposed:
            name = f"{text}_t" if f"{text}_t" not in sec.transposed.values() else f"{text}_t{len(sec.transposed)}"
            sec.lines.append(f"{name} = jnp.transpose({text}, {_tuple(perm)})")
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
                text = self.masked(text, v.axis, position, 0.0, sec)
            operands.append(text)
            contracting.append(position)
        ca, cb = contracting
        accumulate = JNP_DTYPE[v.dtype]
        a, b = operands
        if not batch and len(la) == 2 and len(lb) == 2 and ca == 1 and cb == 0:
            return f"jnp.dot({a}, {b}, preferred_element_type={accumulate})"
        self.uses.add("lax")
        nb = tuple(range(len(batch)))
        dims = f"((({ca},), ({cb},)), ({_tuple(nb)}, {_tuple(nb)}))"
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
            if tensor in self.plan.mask_at_load:
                axis, fill = self.plan.mask_at_load[tensor]
                layout = tuple((d, False) for d in self.plan.block_dims(self.k.tensors[tensor].dims))
                call = self.mask_call(f"{ref}[...]", axis, self.position(layout, axis), fill, sec)
                sec.masked_loads.append(f"{tensor} = {call}")
            else:
                sec.loads.append(f"{tensor} = {ref}[...]")
            sec.loaded.add(tensor)
        return tensor

    def output_ref(self, tensor: str) -> str:
        return next(op.ref for op in self.plan.outputs if op.tensor == tensor)

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
        """Emit a neutral statement into the section that first needs it."""
        st = next(s for s in self.k.statements if s.name == name)
        if st.phase == "neutral":
            self.statement(st, sec)

    def statement(self, st: ir.Statement, sec: Section) -> None:
        key = (sec.phase, st.name)
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
            text = self.transposed(text, st)
            sec.lines.append(f"{self.output_ref(st.name)}[...] = {text}")
        else:
            self.update(st, sec)

    def transposed(self, text: str, st: ir.Statement) -> str:
        have = [d for d, _ in self.plan.statement_layouts[st.name]]
        want = list(self.plan.block_dims(self.k.tensors[st.name].dims))
        if have == want:
            return text
        return f"jnp.transpose({text}, {_tuple(have.index(d) for d in want)})"

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

    def section(self, phase: str) -> list[str]:
        sec = Section(phase)
        for st in self.k.statements:
            if st.phase == phase:
                self.statement(st, sec)
        return sec.code()

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
class KernelSource:
    name: str
    params: list[str]  # positional refs
    static_args: list[str]
    lines: list[str]  # the body, indented relative to the def
    uses: set[str]


def _indent(lines: list[str], by: str = "    ") -> list[str]:
    return [by + line if line else "" for line in lines]


def _def(name: str, body: list[str], decorator: str | None = None) -> list[str]:
    return ([decorator] if decorator else []) + [f"def {name}():"] + _indent(body or ["pass"])


def _grid_kernel(plan: Plan, p: KernelPrinter) -> list[str]:
    ordered = plan.ir.ordered_axis
    if ordered is None:
        return p.section("step")
    index = plan.grid_position(ordered)
    lines = [f"{ordered}_index = pl.program_id({index})", ""]
    lines += _def("_init", p.init_lines(), f"@pl.when({ordered}_index == 0)") + [""]
    lines += p.section("step") + [""]
    lines += _def("_finalize", p.section("final"), f"@pl.when({ordered}_index == pl.num_programs({index}) - 1)")
    return lines


def _pipeline_kernel(plan: Plan, p: KernelPrinter) -> list[str]:
    k, ordered = plan.ir, plan.ir.ordered_axis
    lines = []
    for a in plan.grid:
        lines.append(f"{a}_index = pl.program_id({plan.grid.index(a)})")
    body = []
    names = [f"{a}_index" for a in plan.pipeline_grid]
    body.append(f"{', '.join(names)}{',' if len(names) == 1 else ''} = indices")

    # Tiles past a segment's end are launched (the grid is static) but skip their work.
    parallel_checks = []
    valid_lines = []
    for a in plan.pipeline_grid:
        if plan.axes[a].mode == "jagged" and a != ordered:
            j = k.axes[a].jagged
            valid_lines.append(f"{a}_size = {j.offsets}_ref[{j.segment}_index + 1] - {j.offsets}_ref[{j.segment}_index]")
            parallel_checks.append(f"{a}_index * {p.need('block_' + a)} < {a}_size")
    if parallel_checks:
        valid_lines.append(f"tile_valid = {' & '.join(f'({c})' if len(parallel_checks) > 1 else c for c in parallel_checks)}")
    body += valid_lines

    if ordered is None:
        step = p.section("step")
        body += [""] + _def("compute", step) + [""]
        body.append("lax.cond(tile_valid, compute, lambda: None)" if parallel_checks else "compute()")
    else:
        body += [""] + _def("_init", p.init_lines(), f"@pl.when({ordered}_index == 0)") + [""]
        step_sec = Section("step")
        for st in k.statements:
            if st.phase == "step":
                p.statement(st, step_sec)
        checks = ["tile_valid"] if parallel_checks else []
        if plan.axes[ordered].mode == "jagged":
            checks.append(f"({p.tile_start(step_sec)} < {p.extent(ordered, step_sec)})")
            # the ordered tile's start and extent are needed by the guard: compute them outside
            body += step_sec.indices
            step_sec.indices = []
        body += _def("step", step_sec.code()) + [""]
        body.append(f"lax.cond({' & '.join(checks)}, step, lambda: None)" if checks else "step()")
        last = f"{ordered}_index == {p.need(tile_count(ordered))} - 1"
        guard = f"tile_valid & ({last})" if parallel_checks else last
        body += [""] + _def("_finalize", p.section("final"), f"@pl.when({guard})")
    p.uses.add("lax")

    # An output passed in only to be aliased (output_only off) stays in HBM, outside the pipeline.
    piped_inputs = [op for op in plan.inputs if op.memory != "any"]
    refs = [op.ref for op in piped_inputs] + [op.ref for op in plan.outputs]
    lines += [f"def body(indices, {', '.join(refs)}):"] + _indent(body) + [""]
    grid = []
    for a in plan.pipeline_grid:
        mode = plan.axes[a].mode
        grid.append(p.need(tile_count(a)) if mode in ("tiled", "jagged") else p.need(a))
    for a in plan.pipeline_grid:
        if plan.axes[a].blocked:
            p.need(f"block_{a}")
    for op in plan.inputs + plan.outputs:
        for d in k.tensors[op.tensor].dims:
            if plan.axes[d].mode == "full":
                p.need(d)
    semantics = ", ".join("pltpu.PARALLEL" if plan.axes[a].semantics == "parallel" else "pltpu.ARBITRARY" for a in plan.pipeline_grid)
    hbm = [op.ref.removesuffix("_ref") + "_hbm_ref" for op in piped_inputs + plan.outputs]
    lines += [
        "pltpu.emit_pipeline(",
        "    body,",
        f"    grid={_tuple(grid)},",
        f"    in_specs=[{', '.join(block_spec(plan, op) for op in piped_inputs)}],",
        f"    out_specs=[{', '.join(block_spec(plan, op) for op in plan.outputs)}],",
        f"    dimension_semantics=({semantics}{',' if len(plan.pipeline_grid) == 1 else ''}),",
        "    _explicit_indices=True,",
        f")({', '.join(hbm)})",
    ]
    if any(plan.axes[a].mode == "jagged" for a in plan.pipeline_grid):
        p.uses.add("jagged_tile")
    return lines


def _paged_kernel(plan: Plan, p: KernelPrinter) -> list[str]:  # noqa: C901
    """A grid over segments (and heads); the paged axis walked by an in-kernel loop over blocks
    of pages, each page DMA'd from HBM into a VMEM slot."""
    k, t = plan.ir, plan.ir.ordered_axis
    paged_spec = k.axes[t].paged
    seg = paged_spec.segment
    paged_ops = [op for op in plan.inputs if op.memory == "paged"]
    inner = [a for a in plan.grid if a != seg]
    p.need("pages_per_compute_block")
    p.need("page_size")
    lines = [f"{a}_index = pl.program_id({plan.grid.index(a)})" for a in plan.grid]
    lines += [
        f"block_{t} = pages_per_compute_block * page_size",
        f"{t}_size = {paged_spec.lengths}_ref[{seg}_index]",
        f"num_{t}_blocks = pl.cdiv({t}_size, block_{t})",
        "",
    ]

    def sem(op, slot: str) -> str:
        per_slot = plan.paged_prefetch and plan.semaphore_per_slot
        return f"{op.tensor}_sems.at[{slot}]" if per_slot else f"{op.tensor}_sems"

    def leading(op) -> list[str]:
        dims = k.tensors[op.tensor].dims
        return list(dims[: dims.index(t)])

    # start_fetch: the DMAs of one block of pages; each page id is read once and serves every
    # paged tensor. wait_fetch never reads the table: a wait only needs the copy's size.
    at = [f"{a}_at" for a in plan.grid]
    fetch = [
        f"def start_fetch({', '.join(at)}, {t}_block, slot):",
        f'    """Start the DMAs of block `{t}_block` of pages into `slot`: each page id is read once."""',
        "    for page in range(pages_per_compute_block):",
        "",
        f"        @pl.when({t}_block * block_{t} + page * page_size < {paged_spec.lengths}_ref[{seg}_at])",
        "        def _(page=page):  # pl.when runs it at once; the default binds this iteration's page",
        f"            page_id = {paged_spec.table}_ref[{seg}_at, {t}_block * pages_per_compute_block + page]",
        "            rows = pl.ds(page * page_size, page_size)",
    ]
    for op in paged_ops:
        index = ", ".join([f"{a}_at" for a in leading(op)] + ["page_id"])
        fetch.append(
            f"            pltpu.make_async_copy({op.ref}.at[{index}], {op.tensor}_buffer.at[slot, rows], {sem(op, 'slot')}).start()"
        )
    fetch += [
        "",
        f"def wait_fetch({t}_block, slot):",
        f'    """Wait for block `{t}_block` in `slot`; the source of each wait only sizes it, so the table is not read."""',
        "    for page in range(pages_per_compute_block):",
        "",
        f"        @pl.when({t}_block * block_{t} + page * page_size < {t}_size)",
        "        def _(page=page):",
        "            rows = pl.ds(page * page_size, page_size)",
    ]
    for op in paged_ops:
        zeros = ", ".join(["0"] * (len(leading(op)) + 1))
        fetch.append(f"            pltpu.make_async_copy({op.ref}.at[{zeros}], {op.tensor}_buffer.at[slot, rows], {sem(op, 'slot')}).wait()")
    lines += fetch + [""]

    if plan.paged_prefetch:
        p.need(seg)
        for a in inner:
            p.need(a)
        here = [f"{a}_index" for a in plan.grid]
        lines += [
            f"def next_block({t}_block):",
            f'    """The block after this one in grid order, skipping empty segments; {seg} == {seg} past the last."""',
            "",
            f"    def advance_{seg}():",
            f"        {seg}_at = lax.while_loop(",
            f"            lambda s: (s < {seg}) & ({paged_spec.lengths}_ref[jnp.minimum(s, {seg} - 1)] == 0), lambda s: s + 1, {seg}_index + 1",
            "        )",
            f"        return ({seg}_at, {', '.join(['0'] * len(inner) + ['0'])})",
            "",
        ]
        previous = f"advance_{seg}"
        for i, a in enumerate(inner):
            after = ["0"] * (len(inner) - i - 1)
            nxt = here[: i + 1] + [f"{a}_index + 1"] + after + ["0"]
            lines += [
                f"    def advance_{a}():",
                f"        return lax.cond({a}_index + 1 < {a}, lambda: ({', '.join(nxt)}), {previous})",
                "",
            ]
            previous = f"advance_{a}"
        lines += [
            f"    return lax.cond({t}_block + 1 < num_{t}_blocks, lambda: ({', '.join(here)}, {t}_block + 1), {previous})",
            "",
        ]
        lines += [
            f"@pl.when({' & '.join(f'({a}_index == 0)' for a in plan.grid)})",
            "def _first_grid_step():",
            "    slot_ref[0] = 0",
            "    prefetched_ref[0] = 0  # nothing is in flight yet",
            "",
        ]
    lines += p.init_lines() + [""]

    step = Section("step")
    step.loaded.add(f"{t}_size")
    for st in k.statements:
        if st.phase == "step":
            p.statement(st, step)
    here = ", ".join(f"{a}_index" for a in plan.grid)
    nexts = [f"next_{a}" for a in plan.grid] + [f"next_{t}"]
    if plan.paged_prefetch:
        head = [
            "slot = slot_ref[0]",
            "",
            "@pl.when(prefetched_ref[0] == 0)",
            "def _fetch_this_block():",
            f"    start_fetch({here}, {t}_index, slot)",
            "",
            f"{', '.join(nexts)} = next_block({t}_index)",
            f"has_next = next_{seg} < {seg}",
            "",
            "@pl.when(has_next)",
            "def _prefetch_next_block():  # in flight while this block is computed on",
            f"    start_fetch({', '.join(nexts)}, 1 - slot)",
            "",
            "prefetched_ref[0] = has_next.astype(jnp.int32)",
            f"wait_fetch({t}_index, slot)",
        ]
        tail = ["slot_ref[0] = 1 - slot"]
    else:
        head = ["slot = 0", f"start_fetch({here}, {t}_index, slot)", f"wait_fetch({t}_index, slot)"]
        tail = []
    body = head + step.code() + tail + ["return carry"]
    lines += [f"def step({t}_index, carry):"] + _indent(body) + [""]
    lines += [f"lax.fori_loop(0, num_{t}_blocks, step, 0)"]
    lines += p.section("final")
    p.uses.add("lax")
    return lines


def print_kernel(plan: Plan) -> KernelSource:
    k = plan.ir
    p = KernelPrinter(plan)
    if plan.lowering == "paged":
        refs = [f"{t.name}_ref" for t in k.scalars] + [op.ref for op in plan.inputs] + [op.ref for op in plan.outputs]
        lines = _paged_kernel(plan, p)
        refs += [f"{name}_ref" for name in k.accumulators]
        paged = [op.tensor for op in plan.inputs if op.memory == "paged"]
        refs += [f"{t}_buffer" for t in paged] + [f"{t}_sems" for t in paged]
        if plan.paged_prefetch:
            refs += ["slot_ref", "prefetched_ref"]
        return KernelSource(f"_{k.name}_kernel", refs, p.static_args, lines, p.uses)
    if plan.lowering == "pallas_grid":
        refs = [op.ref for op in plan.inputs] + [op.ref for op in plan.outputs]
        lines = _grid_kernel(plan, p)
    else:
        refs = [f"{t.name}_ref" for t in k.scalars]
        refs += [op.ref.removesuffix("_ref") + "_hbm_ref" for op in plan.inputs + plan.outputs]
        lines = _pipeline_kernel(plan, p)
    refs += [f"{name}_ref" for name in k.accumulators]
    return KernelSource(f"_{k.name}_kernel", refs, p.static_args, lines, p.uses)
