"""Lower a validated spec to the IR: typed values over named axes.

The IR knows what the kernel computes, not how it is tiled: every value
carries the axes it varies over and its dtype; tensors know whether they are
read, written or both; accumulators (declared, or synthesized for a
contraction over a tiled axis that feeds an output) know the ordered axis
they are carried across; every statement knows whether it runs on each step
of that axis or once after the last one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from codegen import expr as ast
from codegen.chips import ITEMSIZE
from codegen.errors import Location, SpecError, did_you_mean
from codegen.spec import DTYPES, Axis, Spec, dtype_hint

# name -> (jnp function, counts as a transcendental)
UNARY_FUNCTIONS = {
    "exp": True,
    "log": True,
    "sqrt": True,
    "rsqrt": True,
    "tanh": True,
    "sigmoid": True,
    "abs": False,
}
# Activations by name (the name is what a spec param may hold): name -> transcendental.
ACTIVATIONS = {
    "raw": False,
    "relu": False,
    "leaky_relu": False,  # slope 0.01
    "gelu": True,  # exact, with erf
    "gelu_tanh": True,
    "fast_gelu": True,  # x*0.5*(1+tanh(0.7978845608*x*(1+0.044715*x*x)))
    "silu": True,
    "relu_square": False,
}
UNARY_FUNCTIONS = {**UNARY_FUNCTIONS, **ACTIVATIONS}
BINARY_FUNCTIONS = ("maximum", "minimum")
COMPARISONS = ast.COMPARISONS  # give booleans
LOGICAL = ("&", "|")  # combine booleans; "not" negates one
REDUCTIONS = {"sum": 0.0, "max": float("-inf"), "min": float("inf")}  # kind -> identity
COMBINE = {"sum": "+", "dot": "+", "max": "maximum", "min": "minimum"}
FUNCTIONS = (*UNARY_FUNCTIONS, *BINARY_FUNCTIONS, *REDUCTIONS, "dot", "cast", "extent", "index", "where")


# --- values -----------------------------------------------------------------

@dataclass(frozen=True)
class Value:
    dims: tuple[str, ...]
    dtype: str | None  # None: a weakly typed Python scalar
    loc: Location


@dataclass(frozen=True)
class Load(Value):
    tensor: str


@dataclass(frozen=True)
class ParamRef(Value):
    name: str


@dataclass(frozen=True)
class Literal(Value):
    value: float | int


@dataclass(frozen=True)
class Extent(Value):
    axis: str


@dataclass(frozen=True)
class Index(Value):
    """The int32 position along an axis: within its segment for a jagged axis, within its
    sequence for a paged one."""

    axis: str


@dataclass(frozen=True)
class RuntimeScalar(Value):
    """An entry keyword read as a number: the `max` of a jagged axis."""

    name: str


@dataclass(frozen=True)
class AccRead(Value):
    accumulator: str
    updated: bool  # False: the state before this step's update


@dataclass(frozen=True)
class ValueRef(Value):
    name: str


@dataclass(frozen=True)
class Elementwise(Value):
    fn: str  # "+", "-", "*", "/", "neg", a comparison, "&", "|", "not", "where", or a UNARY/BINARY function name
    args: tuple[Value, ...]


@dataclass(frozen=True)
class Cast(Value):
    operand: Value


@dataclass(frozen=True)
class Reduce(Value):
    kind: str  # "sum" | "max" | "min"
    operand: Value
    axis: str


@dataclass(frozen=True)
class Dot(Value):
    lhs: Value
    rhs: Value
    axis: str


def children(v: Value) -> tuple[Value, ...]:
    if isinstance(v, Elementwise):
        return v.args
    if isinstance(v, (Cast, Reduce)):
        return (v.operand,)
    if isinstance(v, Dot):
        return (v.lhs, v.rhs)
    return ()


def walk(v: Value):
    yield v
    for c in children(v):
        yield from walk(c)


# --- kernel -----------------------------------------------------------------

@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[str, ...]
    dtype: str
    read: bool
    written: bool
    loc: Location
    scalar: str | None = None  # scalar-prefetched: "offsets" (jagged), "table" or "lengths" (paged)
    scalar_of: str | None = None  # the axis it describes
    fused: tuple[tuple[str, ...], ...] = ()  # the caller's dims: groups of axes stored as one dim

    @property
    def offsets_of(self) -> str | None:
        return self.scalar_of if self.scalar == "offsets" else None

    @property
    def role(self) -> str:
        if self.scalar:
            return self.scalar
        if self.read and self.written:
            return "inout"
        return "output" if self.written else "input"


@dataclass(frozen=True)
class AccumulatorInfo:
    name: str
    over: str
    dims: tuple[str, ...]
    init: float
    dtype: str
    loc: Location
    synthesized_from: str | None = None  # the statement whose contraction it accumulates


@dataclass(frozen=True)
class Statement:
    name: str
    value: Value
    target: str  # "value" | "tensor" | "accumulator"
    phase: str  # "step" | "final" | "neutral" (needs neither: placed by its consumers)
    loc: Location
    pass_index: int = 0  # which pass over the ordered axis does it, when it is walked in passes


@dataclass
class KernelIR:
    name: str
    doc: str
    spec: Spec
    axes: dict[str, Axis]
    params: dict[str, object]
    tensors: dict[str, TensorInfo]
    accumulators: dict[str, AccumulatorInfo]
    statements: list[Statement]
    ordered_axis: str | None
    reduced_axes: set[str] = field(default_factory=set)
    # Tiled axes held whole in each block, because a reduction over one is used elementwise
    # against it (a softmax over a segment's rows): see `_axes_used_against_their_reductions`.
    whole_axes: set[str] = field(default_factory=set)
    # How many times the ordered axis is walked: above 1 when a reduction over it is used
    # elementwise against it and the axis is not kept whole (see `_assign_passes`).
    passes: int = 1
    flops: dict[tuple[str, ...], int] = field(default_factory=dict)
    transcendentals: dict[tuple[str, ...], int] = field(default_factory=dict)

    @property
    def inputs(self) -> list[TensorInfo]:
        """Entry-point arguments, in spec order: tensors read, and offsets tensors."""
        return [t for t in self.tensors.values() if t.read or t.scalar]

    @property
    def scalars(self) -> list[TensorInfo]:
        """Tensors scalar-prefetched to SMEM (offsets, page tables, lengths), in spec order."""
        return [t for t in self.tensors.values() if t.scalar]

    def caller_shape(self, t: TensorInfo, sizes: dict[str, int]) -> tuple[int, ...]:
        """The shape the caller passes for `t`: fused axes multiply; a paged axis is stored as
        (num_pages, page_size); an offsets tensor has one more entry than segments."""
        if t.offsets_of:
            return (sizes[t.dims[0]] + 1,)
        shape = []
        for group in t.fused or tuple((d,) for d in t.dims):
            if len(group) == 1 and self.axes[group[0]].paged:
                shape += [sizes["num_pages"], sizes["page_size"]]
            else:
                size = 1
                for d in group:
                    size *= sizes[d]
                shape.append(size)
        return tuple(shape)

    @property
    def outputs(self) -> list[TensorInfo]:
        return [t for t in self.tensors.values() if t.written]


# --- dtype rules --------------------------------------------------------------

FLOATS = ("float32", "bfloat16", "float16")


def promote(a: str | None, b: str | None) -> str | None:
    if a is None or a == b:
        return b
    if b is None:
        return a
    if a in FLOATS and b in FLOATS:
        return "float32"
    if a in FLOATS:
        return a
    if b in FLOATS:
        return b
    return "int32"


def as_float(dtype: str | None) -> str | None:
    return dtype if dtype is None or dtype in FLOATS else "float32"


def _union(*dim_lists: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for dims in dim_lists:
        out.extend(d for d in dims if d not in out)
    return tuple(out)


# --- lowering -----------------------------------------------------------------

class _Lowering:
    def __init__(self, spec: Spec, whole: frozenset[str] = frozenset(), probe: bool = False,
                 in_passes: frozenset[str] = frozenset()):
        self.spec = spec
        self.whole = whole  # tiled axes kept whole in each block: reductions over them stay in-block
        self.in_passes = in_passes  # tiled axes walked once per level of nested reductions, then once to write
        self.probe = probe  # a first pass that only finds `whole`: no accumulators, no checks
        self.env: dict[str, Value] = {}
        self.defined_at: dict[str, Location] = {}
        self.used: set[str] = set()
        self.tensor_reads: set[str] = set()
        self.tensor_writes: dict[str, Location] = {}
        self.updated: set[str] = set()
        self.accumulators: dict[str, AccumulatorInfo] = {
            a.name: AccumulatorInfo(
                a.name, a.over, tuple(d.axis for d in a.dims), a.init, a.dtype, a.loc
            )
            for a in spec.accumulators.values()
        }
        self.statements: list[Statement] = []
        self.pending_synth: list[Statement] = []
        self.reduced: set[str] = set()
        self.flops: dict[tuple[str, ...], int] = {}
        self.transcendentals: dict[tuple[str, ...], int] = {}
        for a in spec.accumulators.values():
            if a.over in {d.axis for d in a.dims}:
                raise SpecError(f"accumulator '{a.name}' cannot vary over '{a.over}', the axis it is carried across", a.over_loc)
            if spec.axes[a.over].block is None:
                raise SpecError(
                    f"accumulator '{a.name}' is carried across axis '{a.over}', which has no block",
                    a.over_loc,
                    f"set axes.{a.over}.block so that '{a.over}' is walked in tiles",
                )

    def tiled(self, axis: str) -> bool:
        return self.spec.axes[axis].block is not None

    def closure(self, dims) -> set[str]:
        """`dims` with the segment axis of each jagged or paged axis among them: what a value
        really varies over (a jagged tensor's rows belong to segments without naming them)."""
        out = set(dims)
        for d in dims:
            if self.spec.axes[d].segment:
                out.add(self.spec.axes[d].segment)
        return out

    def count(self, table, dims, n=1):
        key = tuple(sorted(dims))
        table[key] = table.get(key, 0) + n

    # -- expressions
    def lower(self, e: ast.Expr, statement: str, writes_tensor: bool) -> Value:
        if isinstance(e, ast.Const):
            return Literal((), None, e.loc, e.value)
        if isinstance(e, ast.Name):
            return self.name(e)
        if isinstance(e, ast.Unary):
            x = self.lower(e.operand, statement, writes_tensor)
            if e.op == "~":
                self.boolean(x, "~")
                return Elementwise(x.dims, "bool", e.loc, "not", (x,))
            self.numeric(x, "-")
            if isinstance(x, Literal):
                return Literal((), None, e.loc, -x.value)
            self.count(self.flops, x.dims)
            return Elementwise(x.dims, x.dtype, e.loc, "neg", (x,))
        if isinstance(e, ast.Binary):
            a = self.lower(e.left, statement, writes_tensor)
            b = self.lower(e.right, statement, writes_tensor)
            dims = _union(a.dims, b.dims)
            self.count(self.flops, dims)
            if e.op in LOGICAL:
                self.boolean(a, e.op)
                self.boolean(b, e.op)
                return Elementwise(dims, "bool", e.loc, e.op, (a, b))
            if e.op not in ("==", "!=") or (a.dtype == "bool") != (b.dtype == "bool"):
                self.numeric(a, e.op)
                self.numeric(b, e.op)
            if e.op in COMPARISONS:
                return Elementwise(dims, "bool", e.loc, e.op, (a, b))
            dtype = promote(a.dtype, b.dtype)
            if e.op == "/":
                dtype = as_float(dtype)
            return Elementwise(dims, dtype, e.loc, e.op, (a, b))
        if isinstance(e, ast.Call):
            return self.call(e, statement, writes_tensor)
        raise AssertionError(e)

    @staticmethod
    def boolean(x: Value, op: str) -> None:
        if x.dtype != "bool":
            raise SpecError(f"'{op}' combines booleans, but this operand is a number", x.loc, "compare first, e.g. (x > 0) & (y < 1)")

    @staticmethod
    def numeric(x: Value, op: str) -> None:
        if x.dtype == "bool":
            raise SpecError(
                f"'{op}' needs a number, but this operand is a boolean", x.loc,
                "combine booleans with & | ~, or turn one into numbers with where(cond, a, b)",
            )

    def name(self, e: ast.Name) -> Value:
        n = e.id
        spec = self.spec
        if n in self.accumulators:
            acc = self.accumulators[n]
            self.used.add(n)
            return AccRead(acc.dims, acc.dtype, e.loc, n, n in self.updated)
        if n in self.env:
            self.used.add(n)
            return self.env[n]
        if n in spec.tensors:
            t = spec.tensors[n]
            role, _ = _scalar_role(spec, n)
            if role:
                what = {"offsets": "segment offsets", "table": "a page table", "lengths": "lengths"}[role]
                raise SpecError(f"'{n}' holds {what}, which the kernel reads from SMEM; compute cannot read it", e.loc)
            if n in self.tensor_writes:
                raise SpecError(
                    f"tensor '{n}' is read after it is written (line {self.tensor_writes[n].line})",
                    e.loc,
                    "read inputs before writing them, or name the new value",
                )
            self.tensor_reads.add(n)
            return Load(t.axes, t.dtype, e.loc, n)
        if n in spec.params:
            value = spec.params[n].value
            if isinstance(value, (bool, str)):
                raise SpecError(f"param '{n}' is {value!r}, not a number", e.loc)
            return ParamRef((), None, e.loc, n)
        if n in spec.axes:
            raise SpecError(f"axis '{n}' used as a value", e.loc, f"use extent({n}) for its size")
        if n in ("inf",):
            return Literal((), None, e.loc, float("inf"))
        if n in runtime_scalars(spec):
            return RuntimeScalar((), None, e.loc, n)
        known = [*self.env, *spec.tensors, *spec.params, *self.accumulators, *runtime_scalars(spec)]
        later = [s.name for s in spec.compute]
        if n in later:
            raise SpecError(f"'{n}' is used before it is computed", e.loc, "statements run in order")
        raise SpecError(f"undefined name '{n}'", e.loc, did_you_mean(n, known))

    def axis_arg(self, e: ast.Call, *operands) -> str:
        kws = {k: (v, loc) for k, v, loc in e.keywords}
        unknown = [k for k in kws if k != "over"]
        if unknown:
            raise SpecError(f"{e.func}() takes no keyword '{unknown[0]}'", kws[unknown[0]][1], "use over=AXIS")
        if "over" not in kws:
            raise SpecError(f"{e.func}() needs over=AXIS", e.loc)
        node, loc = kws["over"]
        if not isinstance(node, ast.Name) or node.id not in self.spec.axes:
            name = node.id if isinstance(node, ast.Name) else "?"
            raise SpecError(f"over= must name an axis, got '{name}'", node.loc, did_you_mean(name, self.spec.axes))
        for dims, what in operands:
            if node.id not in dims:
                raise SpecError(
                    f"{e.func}() over '{node.id}', but {what} has dims [{', '.join(dims)}]", node.loc
                )
        return node.id

    def call(self, e: ast.Call, statement: str, writes_tensor: bool) -> Value:
        f = e.func
        if f in self.spec.params:
            f = self.activation_param(f, e.loc)
            e = ast.Call(e.loc, f, e.args, e.keywords)
        if f not in FUNCTIONS:
            raise SpecError(f"unknown function '{f}'", e.loc, did_you_mean(f, FUNCTIONS) or f"functions: {', '.join(FUNCTIONS)}")

        def want(n: int):
            if len(e.args) != n:
                raise SpecError(f"{f}() takes {n} positional argument{'s' if n > 1 else ''}, got {len(e.args)}", e.loc)

        if f == "extent":
            want(1)
            arg = e.args[0]
            if not isinstance(arg, ast.Name) or arg.id not in self.spec.axes:
                raise SpecError("extent() takes an axis name", arg.loc)
            return Extent((), None, e.loc, arg.id)
        if f == "index":
            want(1)
            arg = e.args[0]
            if not isinstance(arg, ast.Name) or arg.id not in self.spec.axes:
                name = arg.id if isinstance(arg, ast.Name) else "?"
                raise SpecError("index() takes an axis name", arg.loc, did_you_mean(name, self.spec.axes))
            return Index((arg.id,), "int32", e.loc, arg.id)
        if f == "where":
            want(3)
            if e.keywords:
                raise SpecError("where() takes no keyword arguments", e.keywords[0][2])
            c, a, b = (self.lower(x, statement, writes_tensor) for x in e.args)
            if c.dtype != "bool":
                raise SpecError("where() needs a boolean condition, e.g. a comparison", c.loc)
            self.numeric(a, "where")
            self.numeric(b, "where")
            dims = _union(c.dims, a.dims, b.dims)
            self.count(self.flops, dims)
            return Elementwise(dims, promote(a.dtype, b.dtype), e.loc, "where", (c, a, b))
        if f == "cast":
            want(2)
            x = self.lower(e.args[0], statement, writes_tensor)
            d = e.args[1]
            if not isinstance(d, ast.Name) or d.id not in DTYPES:
                name = d.id if isinstance(d, ast.Name) else "?"
                raise SpecError(f"cast() needs a supported dtype, got '{name}'", d.loc, dtype_hint(name))
            return Cast(x.dims, d.id, e.loc, x)
        if e.keywords and f not in (*REDUCTIONS, "dot"):
            raise SpecError(f"{f}() takes no keyword arguments", e.keywords[0][2])
        if f in UNARY_FUNCTIONS:
            want(1)
            x = self.lower(e.args[0], statement, writes_tensor)
            self.numeric(x, f)
            self.count(self.transcendentals if UNARY_FUNCTIONS[f] else self.flops, x.dims)
            return Elementwise(x.dims, as_float(x.dtype), e.loc, f, (x,))
        if f in BINARY_FUNCTIONS:
            want(2)
            a = self.lower(e.args[0], statement, writes_tensor)
            b = self.lower(e.args[1], statement, writes_tensor)
            self.numeric(a, f)
            self.numeric(b, f)
            dims = _union(a.dims, b.dims)
            self.count(self.flops, dims)
            return Elementwise(dims, promote(a.dtype, b.dtype), e.loc, f, (a, b))
        if f in REDUCTIONS:
            want(1)
            x = self.lower(e.args[0], statement, writes_tensor)
            self.numeric(x, f)
            axis = self.axis_arg(e, (x.dims, "its operand"))
            self.count(self.flops, x.dims)
            self.reduced.add(axis)
            dims = tuple(d for d in x.dims if d != axis)
            segment = self.spec.axes[axis].segment
            if segment and segment not in dims:
                dims += (segment,)  # over a jagged or paged axis: one value per segment
            v = Reduce(dims, x.dtype, e.loc, f, x, axis)
            return self.maybe_accumulate(v, f, statement, writes_tensor)
        if f == "dot":
            want(2)
            a = self.lower(e.args[0], statement, writes_tensor)
            b = self.lower(e.args[1], statement, writes_tensor)
            axis = self.axis_arg(e, (a.dims, "the left operand"), (b.dims, "the right operand"))
            for x, what in ((a, "left"), (b, "right")):
                self.numeric(x, "dot")
                if x.dtype is None:
                    raise SpecError(f"the {what} operand of dot() must be a tensor value, not a scalar", x.loc)
            dims = _union(tuple(d for d in a.dims if d != axis), tuple(d for d in b.dims if d != axis))
            self.count(self.flops, (*dims, axis), 2)
            self.reduced.add(axis)
            dtype = "int32" if a.dtype not in FLOATS and b.dtype not in FLOATS else "float32"
            v = Dot(dims, dtype, e.loc, a, b, axis)
            return self.maybe_accumulate(v, "dot", statement, writes_tensor)
        raise AssertionError(f)

    def activation_param(self, name: str, loc: Location) -> str:
        param = self.spec.params[name]
        value = param.value
        if value not in ACTIVATIONS:
            where = Location("<command line>", 1, 1) if name in self.spec.overrides else param.loc
            raise SpecError(
                f"param '{name}' is {value!r}, which is not an activation (it is called at line {loc.line})",
                where,
                f"activations: {', '.join(ACTIVATIONS)}",
            )
        return value

    def maybe_accumulate(self, v: Reduce | Dot, kind: str, statement: str, writes_tensor: bool) -> Value:
        """A reduction over a tiled axis that feeds an output becomes an accumulator."""
        axis = v.axis
        if not self.tiled(axis) or axis in self.whole or self.probe:
            return v
        explicitly_ordered = any(a.over == axis for a in self.accumulators.values() if a.synthesized_from is None)
        if not writes_tensor and axis not in self.in_passes:
            if explicitly_ordered:
                return v  # a per-tile partial result, combined by a declared accumulator
            raise SpecError(
                f"{kind}() over '{axis}', which is tiled (axes.{axis}.block), must feed an accumulator",
                v.loc,
                f"write it straight to an output tensor, or declare accumulators over '{axis}'",
            )
        base = f"{statement}_acc"
        name, n = base, 2
        while name in self.accumulators or name in self.spec.tensors or name in self.spec.params or any(s.name == name for s in self.spec.compute):
            name, n = f"{base}{n}", n + 1
        dtype = "float32" if (v.dtype in FLOATS) else "int32"
        acc = AccumulatorInfo(name, axis, v.dims, REDUCTIONS.get(kind, 0.0), dtype, v.loc, synthesized_from=statement)
        self.accumulators[name] = acc
        previous = AccRead(v.dims, dtype, v.loc, name, False)
        update = Elementwise(v.dims, dtype, v.loc, COMBINE[kind], (previous, v))
        self.pending_synth.append(Statement(name, update, "accumulator", "step", v.loc))
        self.updated.add(name)
        self.used.add(name)
        return AccRead(v.dims, dtype, v.loc, name, True)

    # -- statements
    def lower_statements(self) -> None:
        spec = self.spec
        for st in spec.compute:
            parsed = ast.parse_expression(st.text, st.text_loc)
            writes_tensor = st.name in spec.tensors
            value = self.lower(parsed, st.name, writes_tensor)
            self.statements.extend(self.pending_synth)
            self.pending_synth = []
            if writes_tensor:
                t = spec.tensors[st.name]
                if self.closure(value.dims) != self.closure(t.axes):
                    raise SpecError(
                        f"tensor '{t.name}' has dims [{', '.join(t.axes)}] but its value has dims [{', '.join(value.dims)}]",
                        st.text_loc,
                    )
                if value.dtype is None:
                    raise SpecError(f"tensor '{t.name}' is assigned a scalar", st.text_loc)
                self.tensor_writes[t.name] = st.loc
                self.statements.append(Statement(st.name, value, "tensor", "step", st.loc))
            elif st.name in self.accumulators:
                acc = self.accumulators[st.name]
                if self.closure(value.dims) != self.closure(acc.dims):
                    raise SpecError(
                        f"accumulator '{acc.name}' has dims [{', '.join(acc.dims)}] but its update has dims [{', '.join(value.dims)}]",
                        st.text_loc,
                    )
                self.updated.add(acc.name)
                self.statements.append(Statement(st.name, value, "accumulator", "step", st.loc))
            else:
                if st.name in self.env:
                    raise SpecError(f"'{st.name}' is assigned twice", st.loc)
                self.statements.append(Statement(st.name, value, "value", "step", st.loc))
                self.env[st.name] = ValueRef(value.dims, value.dtype, st.loc, st.name)
                self.defined_at[st.name] = st.loc

    def run(self) -> KernelIR:
        spec = self.spec
        self.lower_statements()

        for name, loc in self.defined_at.items():
            if name not in self.used and name not in self.accumulators:
                raise SpecError(f"'{name}' is computed but never used", loc)
        for acc in self.accumulators.values():
            if acc.name not in self.updated:
                raise SpecError(f"accumulator '{acc.name}' is never updated", acc.loc, f"add a compute statement '{acc.name}: ...'")
        for t in spec.tensors.values():
            is_scalar = _scalar_role(spec, t.name)[0] is not None
            if t.name not in self.tensor_reads and t.name not in self.tensor_writes and not is_scalar:
                raise SpecError(f"tensor '{t.name}' is neither read nor written", t.loc)
        if not self.tensor_writes:
            raise SpecError("compute writes no tensor", spec.compute[0].loc, "assign to a tensor name to produce an output")

        overs = {}
        for acc in self.accumulators.values():
            overs.setdefault(acc.over, acc)
        if len(overs) > 1:
            first, second = list(overs.values())[:2]
            raise SpecError(
                f"accumulators are carried across both '{first.over}' and '{second.over}'; one ordered axis is supported",
                second.loc,
            )
        ordered = next(iter(overs), None)
        passes = 1
        if ordered in self.in_passes:
            statements, passes = _assign_passes(self.statements, ordered, spec)
        else:
            statements = _assign_phases(self.statements, ordered, spec)
        tensors = {
            t.name: TensorInfo(
                t.name, t.axes, t.dtype, t.name in self.tensor_reads, t.name in self.tensor_writes, t.loc,
                *_scalar_role(spec, t.name), fused=t.fused,
            )
            for t in spec.tensors.values()
        }
        return KernelIR(
            name=spec.name,
            doc=spec.doc,
            spec=spec,
            axes=spec.axes,
            params={p.name: p.value for p in spec.params.values()},
            tensors=tensors,
            accumulators=self.accumulators,
            statements=statements,
            ordered_axis=ordered,
            reduced_axes=self.reduced,
            whole_axes=set(self.whole),
            passes=passes,
            flops=self.flops,
            transcendentals=self.transcendentals,
        )


def _assign_phases(statements: list[Statement], ordered: str | None, spec: Spec) -> list[Statement]:
    """Split statements into per-step work and work done once after the last step."""
    if ordered is None:
        return statements
    phase: dict[str, str] = {}
    last_update: dict[str, int] = {}
    for i, st in enumerate(statements):
        if st.target == "accumulator":
            last_update[st.name] = i
    out = []
    for i, st in enumerate(statements):
        kind = "neutral"
        if st.target == "accumulator":
            kind = "step"
        for v in walk(st.value):
            if isinstance(v, (Load, Index)) and ordered in v.dims:
                kind = "step"
            elif isinstance(v, AccRead):
                if not v.updated:
                    kind = "step"
                elif kind == "neutral":
                    kind = "final"
            elif isinstance(v, ValueRef):
                dep = phase.get(v.name, "neutral")
                if dep == "step":
                    kind = "step"
                elif dep == "final" and kind == "neutral":
                    kind = "final"
        if kind == "final":
            for v in walk(st.value):
                if isinstance(v, AccRead) and last_update.get(v.accumulator, -1) > i:
                    raise SpecError(
                        f"'{st.name}' reads accumulator '{v.accumulator}' before its last update",
                        v.loc,
                    )
        if st.target == "tensor" and kind == "step":
            raise SpecError(
                f"tensor '{st.name}' would be written on every step of ordered axis '{ordered}'",
                st.loc,
                "an output of a kernel with accumulators must be computed from their final values",
            )
        phase[st.name] = kind
        out.append(st)
    # A neutral value (constants, loads invariant to the ordered axis) is
    # computed in whichever phase consumes it; an output always is final.
    return [
        Statement(st.name, st.value, st.target, "final" if st.target == "tensor" else phase[st.name], st.loc)
        for st in out
    ]


def _assign_passes(statements: list[Statement], axis: str, spec: Spec) -> tuple[list[Statement], int]:
    """Walk `axis` in passes: pass p folds the reductions that read the final values of
    pass p-1's, and outputs along `axis` are written in the pass after the last they read.
    Values are placed by their consumers, in every pass that needs them."""
    level: dict[str, int] = {}  # accumulator -> the pass that folds it
    ready: dict[str, int] = {}  # value -> the first pass in which its inputs are final

    def first_pass(v: Value) -> int:
        p = 0
        for w in walk(v):
            if isinstance(w, AccRead) and w.updated:
                p = max(p, level[w.accumulator] + 1)
            elif isinstance(w, ValueRef):
                p = max(p, ready[w.name])
        return p

    out = []
    for st in statements:
        p = first_pass(st.value)
        if st.target == "accumulator":
            level[st.name] = p
            out.append(Statement(st.name, st.value, st.target, "step", st.loc, p))
        elif st.target == "tensor":
            along = axis in spec.tensors[st.name].axes
            out.append(Statement(st.name, st.value, st.target, "step" if along else "final", st.loc, p))
        else:
            ready[st.name] = p
            out.append(Statement(st.name, st.value, st.target, "neutral", st.loc, p))
    # One pass writes every output along the axis: their blocks move only then.
    writes = [st for st in out if st.target == "tensor" and st.phase == "step"]
    write_pass = max((st.pass_index for st in writes), default=-1)
    out = [Statement(st.name, st.value, st.target, st.phase, st.loc, write_pass) if st in writes else st for st in out]
    passes = max([write_pass, *level.values()]) + 1
    return out, passes


def _scalar_role(spec: Spec, tensor: str) -> tuple[str | None, str | None]:
    """Whether a tensor describes an axis (segment offsets, a page table, lengths), and which."""
    for a in spec.axes.values():
        if a.jagged and a.jagged.offsets == tensor:
            return "offsets", a.name
        if a.paged and a.paged.table == tensor:
            return "table", a.name
        if a.paged and a.paged.lengths == tensor:
            return "lengths", a.name
    return None, None


def _axes_used_against_their_reductions(statements: list[Statement], spec: Spec) -> frozenset[str]:
    """Tiled axes X such that a reduction over X meets X again, as in `e / sum(e, over=X)`.

    Such a reduction cannot be a running accumulator: every element along X needs its
    final value. Axes that declared accumulators are carried across are left out: their
    reductions are per-tile partial results by the author's design (online softmax).
    """
    declared = {a.over for a in spec.accumulators.values()}
    hidden_by_statement: dict[str, set[str]] = {}
    found: set[str] = set()

    memo: dict[int, set[str]] = {}

    def hidden(v: Value) -> set[str]:
        """Axes reduced somewhere inside `v` that `v` no longer varies over."""
        if isinstance(v, ValueRef):
            return hidden_by_statement.get(v.name, set())
        if id(v) in memo:
            return memo[id(v)]
        below = [hidden(c) for c in children(v)]  # each child once: trees may be deep
        inner = set().union(*below)
        if isinstance(v, (Reduce, Dot)):
            inner.add(v.axis)
        for h in below:
            found.update(x for x in h if x in v.dims)
        memo[id(v)] = {x for x in inner if x not in v.dims}
        return memo[id(v)]

    for st in statements:
        hidden_by_statement[st.name] = hidden(st.value)
        if st.target == "tensor" and st.name in spec.tensors:
            found.update(x for x in hidden_by_statement[st.name] if x in spec.tensors[st.name].axes)
    return frozenset(x for x in found if spec.axes[x].block is not None and x not in declared)


def runtime_scalars(spec: Spec) -> list[str]:
    """Entry keywords that expressions may read as numbers: each jagged axis's `max`, once
    (two jagged axes naming the same `max` share one keyword)."""
    return list(dict.fromkeys(a.jagged.max for a in spec.axes.values() if a.jagged))


# Above this, an axis's whole extent (its `max`) is walked in passes rather than held in
# VMEM: the smallest scoped-VMEM default of the chips planned for, with both buffers.
WHOLE_AXIS_BUDGET = 16 * 1024 * 1024


def whole_axis_bytes(spec: Spec, axis: str) -> int | None:
    """VMEM that blocks holding `axis` whole would take, double-buffered, where the spec
    bounds it (`max`); None where nothing bounds it."""
    a = spec.axes[axis]
    if a.jagged or a.max is None:
        return None
    total = 0
    for t in spec.tensors.values():
        if axis in t.axes:
            n = a.max * ITEMSIZE[t.dtype] * 2
            for d in t.axes:
                if d != axis:
                    n *= spec.axes[d].block or 1
            total += n
    return total


def keeps_whole(spec: Spec, axis: str) -> bool:
    """Whether a tiled axis that a reduction over it meets again is held whole in each
    block (one pass) or walked in passes: the `keep_whole` rule's decision."""
    switch = spec.rules.get("keep_whole")
    if switch is not None and not switch.enabled:
        return False
    size = whole_axis_bytes(spec, axis)
    return size is None or size <= WHOLE_AXIS_BUDGET


def lower(spec: Spec) -> KernelIR:
    probe = _Lowering(spec, probe=True)
    probe.lower_statements()
    found = _axes_used_against_their_reductions(probe.statements, spec)
    whole = frozenset(a for a in found if keeps_whole(spec, a))
    return _Lowering(spec, whole, in_passes=found - whole).run()
