"""Print IR values and statements as the Python lines of a kernel body.

Only validated identifiers from the spec and numeric literals reach the
output; everything else is fixed text chosen here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from codegen import ir
from codegen.plan import Layout, Plan

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


@dataclass
class Section:
    """One straight-line block of kernel code (the per-step body, or the finalize block)."""

    phase: str
    indent: str
    head: list[str] = field(default_factory=list)  # loads, first thing in the block
    lines: list[str] = field(default_factory=list)
    loaded: set[str] = field(default_factory=set)
    masked: dict[tuple[str, int, str], str] = field(default_factory=dict)
    acc_vars: dict[str, str] = field(default_factory=dict)  # accumulator -> variable holding it now


class KernelPrinter:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.k = plan.ir
        self.static_args: list[str] = []  # keyword arguments the kernel needs
        self.uses: set[str] = set()  # "math", "jax", "lax", "mask_tail"
        self.emitted: set[str] = set()
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
            if v.tensor not in sec.loaded:
                sec.head.append(f"{v.tensor} = {self.input_ref(v.tensor)}[...]")
                sec.loaded.add(v.tensor)
            return v.tensor, ATOM
        if isinstance(v, ir.AccRead):
            return self.acc_value(v.accumulator, sec), ATOM
        if isinstance(v, ir.ValueRef):
            self.ensure_statement(v.name, sec)
            return v.name, ATOM
        if isinstance(v, ir.Elementwise):
            return self.elementwise(v, sec)
        if isinstance(v, ir.Cast):
            x, p = self.expr(v.operand, sec)
            if not self.plan.layouts.get(id(v.operand)) and v.operand.dtype is None:
                return f"jnp.asarray({x}, {JNP_DTYPE[v.dtype]})", ATOM
            return f"{self.paren(x, p, ATOM)}.astype({JNP_DTYPE[v.dtype]})", ATOM
        if isinstance(v, ir.Reduce):
            fn = {"sum": "jnp.sum", "max": "jnp.max", "min": "jnp.min"}[v.kind]
            x = self.masked(v.operand, v.axis, ir.REDUCTIONS[v.kind], sec)
            axis = self.position(v.operand, v.axis)
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

    def position(self, v: ir.Value, axis: str) -> int:
        layout: Layout = self.plan.layout(v)
        return next(i for i, (d, one) in enumerate(layout) if d == axis and not one)

    def masked(self, v: ir.Value, axis: str, fill: float, sec: Section) -> str:
        """`v` as a reduction over `axis` should see it: past the axis's end, `fill`."""
        text, _ = self.expr(v, sec)
        if axis != self.ordered or self.plan.axes[axis].mode != "tiled":
            return text  # only the ordered axis is walked in blocks that a reduction crosses
        self.uses.add("mask_tail")
        start = self.step_start(sec)
        size = self.need(axis)
        position = self.position(v, axis)
        call = f"_mask_tail({text}, axis={position}, start={start}, size={size}, fill={literal(fill)})"
        if not text.isidentifier():
            return call
        # A named value masked the same way for several reductions is masked once.
        key = (text, position, literal(fill))
        if key not in sec.masked:
            taken = set(sec.masked.values())
            name = f"{text}_masked"
            if name in taken or name in self.k.tensors or any(st.name == name for st in self.k.statements):
                name = f"{text}_masked_{len(sec.masked)}"
            sec.lines.append(f"{name} = {call}")
            sec.masked[key] = name
        return sec.masked[key]

    def step_start(self, sec: Section) -> str:
        name = f"{self.ordered}_start"
        if name not in sec.loaded:
            sec.head.append(f"{name} = {self.ordered}_index * {self.need('block_' + self.ordered)}")
            sec.loaded.add(name)
        return name

    def dot(self, v: ir.Dot, sec: Section) -> str:
        a = self.masked(v.lhs, v.axis, 0.0, sec)
        b = self.masked(v.rhs, v.axis, 0.0, sec)
        la, lb = self.plan.layout(v.lhs), self.plan.layout(v.rhs)
        ca, cb = self.position(v.lhs, v.axis), self.position(v.rhs, v.axis)
        a_axes = [d for d, one in la if not one]
        b_axes = [d for d, one in lb if not one]
        batch = [d for d in a_axes if d in b_axes and d != v.axis]
        ba = tuple(self.position(v.lhs, d) for d in batch)
        bb = tuple(self.position(v.rhs, d) for d in batch)
        accumulate = JNP_DTYPE[v.dtype]
        if not batch and len(la) == 2 and len(lb) == 2 and ca == 1 and cb == 0:
            return f"jnp.dot({a}, {b}, preferred_element_type={accumulate})"
        self.uses.add("lax")
        dims = f"((({ca},), ({cb},)), ({_tuple(ba)}, {_tuple(bb)}))"
        return f"lax.dot_general({a}, {b}, {dims}, preferred_element_type={accumulate})"

    # -- refs and accumulators
    def input_ref(self, tensor: str) -> str:
        return next(op.ref for op in self.plan.inputs if op.tensor == tensor)

    def output_ref(self, tensor: str) -> str:
        return next(op.ref for op in self.plan.outputs if op.tensor == tensor)

    def acc_value(self, acc: str, sec: Section) -> str:
        if acc not in sec.acc_vars:
            if sec.phase == "final" and self.final_reads(acc) == 1:
                return f"{acc}_ref[...]"
            sec.head.append(f"{acc} = {acc}_ref[...]")
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
        key = (sec.phase, name)
        if key in self.emitted:
            return
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
            text = self.transposed(text, st, sec)
            sec.lines.append(f"{self.output_ref(st.name)}[...] = {text}")
        else:
            self.update(st, sec)

    def transposed(self, text: str, st: ir.Statement, sec: Section) -> str:
        have = [d for d, _ in self.plan.statement_layouts[st.name]]
        want = list(self.plan.block_dims(self.k.tensors[st.name].dims))
        if have == want:
            return text
        perm = tuple(have.index(d) for d in want)
        return f"jnp.transpose({text}, {perm})"

    def update(self, st: ir.Statement, sec: Section) -> None:
        acc = self.k.accumulators[st.name]
        v = st.value
        cast = "" if v.dtype == acc.dtype else f".astype({st.name}_ref.dtype)"
        reads_elsewhere = sum(
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
            and reads_elsewhere == 1
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

    def section(self, phase: str, indent: str) -> list[str]:
        sec = Section(phase, indent)
        for st in self.k.statements:
            if st.phase == phase:
                self.statement(st, sec)
        loads = [line for line in sec.head if line.endswith("[...]")]
        return loads + [line for line in sec.head if line not in loads] + sec.lines

    def init_lines(self) -> list[str]:
        lines = []
        for acc in self.k.accumulators.values():
            ref = f"{acc.name}_ref"
            if acc.init == 0:
                lines.append(f"{ref}[...] = jnp.zeros({ref}.shape, {ref}.dtype)")
            else:
                lines.append(f"{ref}[...] = jnp.full({ref}.shape, {literal(acc.init)}, {ref}.dtype)")
        return lines


def _tuple(items: tuple[int, ...]) -> str:
    if not items:
        return "()"
    if len(items) == 1:
        return f"({items[0]},)"
    return "(" + ", ".join(map(str, items)) + ")"


@dataclass
class KernelSource:
    name: str
    params: list[str]  # positional refs
    static_args: list[str]
    lines: list[str]  # body, already indented by four spaces per level relative to the def
    uses: set[str]


def print_kernel(plan: Plan) -> KernelSource:
    k = plan.ir
    p = KernelPrinter(plan)
    refs = [op.ref for op in plan.inputs] + [op.ref for op in plan.outputs]
    refs += [f"{name}_ref" for name in k.accumulators]
    lines: list[str] = []
    ordered = k.ordered_axis
    if ordered is None:
        lines += p.section("step", "")
    else:
        index = plan.grid_position(ordered)
        lines.append(f"{ordered}_index = pl.program_id({index})")
        lines.append("")
        lines.append(f"@pl.when({ordered}_index == 0)")
        lines.append("def _init():")
        lines += ["    " + line for line in p.init_lines()]
        lines.append("")
        lines += p.section("step", "")
        lines.append("")
        lines.append(f"@pl.when({ordered}_index == pl.num_programs({index}) - 1)")
        lines.append("def _finalize():")
        lines += ["    " + line for line in p.section("final", "    ")]
    return KernelSource(f"_{k.name}_kernel", refs, p.static_args, lines, p.uses)
