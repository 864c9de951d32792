"""Evaluate a kernel's IR with numpy, untiled: the reference for `codegen verify`.

Nothing here knows about blocks, grids or masks. Values are whole arrays over
named axes, in float64 (casts round through the target dtype), and an
ordered axis is consumed in one single step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from codegen import ir


@dataclass
class Named:
    data: np.ndarray | float
    dims: tuple[str, ...]

    def to(self, dims: tuple[str, ...]) -> np.ndarray:
        """This array transposed and broadcast to `dims` (a superset of its own)."""
        if not self.dims:
            return np.asarray(self.data, dtype=np.float64)
        data, have = np.asarray(self.data), self.dims
        # A segment's own size-1 axis (a jagged axis's rows belong to it without naming it).
        extra = [i for i, d in enumerate(have) if d not in dims]
        if extra and all(data.shape[i] == 1 for i in extra):
            data = np.squeeze(data, axis=tuple(extra))
            have = tuple(d for d in have if d in dims)
        own = [d for d in dims if d in have]
        data = np.transpose(data, [have.index(d) for d in own])
        return data.reshape([data.shape[own.index(d)] if d in have else 1 for d in dims])


def _round(x: np.ndarray, dtype: str) -> np.ndarray:
    import ml_dtypes  # a dependency of jax; numpy has no bfloat16

    np_dtype = {"bfloat16": ml_dtypes.bfloat16}.get(dtype, np.dtype(dtype))
    return np.asarray(x).astype(np_dtype).astype(np.float64 if dtype.startswith(("float", "bfloat")) else np.int64)


_erf = np.vectorize(math.erf, otypes=[np.float64])

_UNARY = {
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1.0 / np.sqrt(x),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "abs": np.abs,
    "neg": np.negative,
    "not": np.logical_not,
    # activations
    "raw": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))),
    "fast_gelu": lambda x: x * 0.5 * (1.0 + np.tanh(0.7978845608 * x * (1.0 + 0.044715 * x * x))),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "relu_square": lambda x: np.maximum(x, 0.0) ** 2,
}
_BINARY = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.divide,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
    "&": np.logical_and,
    "|": np.logical_or,
    "where": np.where,
}
_REDUCE = {"sum": np.sum, "max": np.max, "min": np.min}


class Evaluator:
    def __init__(self, k: ir.KernelIR, inputs: dict[str, np.ndarray], sizes: dict[str, int], origin=None):
        self.k = k
        self.inputs = inputs
        self.sizes = sizes
        self.origin = origin or {}  # axis -> the position of its first index here (a segment's number)
        self.values: dict[str, Named] = {}
        self.state: dict[str, Named] = {}

    def eval(self, v: ir.Value) -> Named:
        if isinstance(v, ir.Literal):
            return Named(float(v.value), ())
        if isinstance(v, ir.ParamRef):
            return Named(float(self.k.params[v.name]), ())
        if isinstance(v, ir.Extent):  # a jagged or paged axis: this segment's own extent
            return Named(float(self.sizes[v.axis]), ())
        if isinstance(v, ir.Index):  # within a segment: from 0
            return Named(self.origin.get(v.axis, 0) + np.arange(self.sizes[v.axis], dtype=np.float64), (v.axis,))
        if isinstance(v, ir.RuntimeScalar):  # an entry keyword, passed in `sizes`
            return Named(float(self.sizes[v.name]), ())
        if isinstance(v, ir.Load):
            return Named(np.asarray(self.inputs[v.tensor], dtype=np.float64), self.k.tensors[v.tensor].dims)
        if isinstance(v, ir.AccRead):
            return self.state[v.accumulator]
        if isinstance(v, ir.ValueRef):
            return self.values[v.name]
        if isinstance(v, ir.Elementwise):
            args = [self.eval(a) for a in v.args]
            dims = v.dims
            if v.fn in _UNARY:
                return Named(_UNARY[v.fn](args[0].to(dims) if dims else args[0].data), dims)
            with np.errstate(invalid="ignore"):
                return Named(_BINARY[v.fn](*(x.to(dims) if dims else x.data for x in args)), dims)
        if isinstance(v, ir.Cast):
            x = self.eval(v.operand)
            return Named(_round(x.data, v.dtype), x.dims)
        if isinstance(v, ir.Reduce):
            x = self.eval(v.operand)
            reduced = _REDUCE[v.kind](x.data, axis=x.dims.index(v.axis), initial=ir.REDUCTIONS[v.kind])  # empty: identity
            return Named(reduced, tuple(d for d in x.dims if d != v.axis))
        if isinstance(v, ir.Dot):
            a, b = self.eval(v.lhs), self.eval(v.rhs)
            letters = {d: chr(ord("a") + i) for i, d in enumerate(dict.fromkeys((*a.dims, *b.dims)))}
            spec = "".join(letters[d] for d in a.dims) + "," + "".join(letters[d] for d in b.dims)
            spec += "->" + "".join(letters[d] for d in v.dims)
            return Named(np.einsum(spec, a.data, b.data), v.dims)
        raise AssertionError(v)

    def run(self) -> dict[str, np.ndarray]:
        for acc in self.k.accumulators.values():
            shape = [self.sizes[d] for d in acc.dims]
            self.state[acc.name] = Named(np.full(shape, acc.init, dtype=np.float64), acc.dims)
        outputs = {}
        ordered = self.k.ordered_axis
        for st in self.k.statements:
            if ordered and self.sizes[ordered] == 0 and st.phase == "step":
                continue  # a loop over no blocks: the accumulators keep their initial values
            value = self.eval(st.value)
            if st.target == "accumulator":
                self.state[st.name] = Named(value.to(self.k.accumulators[st.name].dims), self.k.accumulators[st.name].dims)
            elif st.target == "tensor":
                t = self.k.tensors[st.name]
                # A segment's value may still carry the (size-1) segment axis that a jagged
                # output folds into its rows.
                extra = tuple(d for d in value.dims if d not in t.dims)
                data = value.to(t.dims + extra).reshape([self.sizes[d] for d in t.dims])
                outputs[st.name] = _round(data, t.dtype)
            else:
                self.values[st.name] = value
        return outputs


def reference(k: ir.KernelIR, inputs: dict[str, np.ndarray], sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """The kernel's outputs, from inputs as the caller passes them.

    With jagged or paged axes, each segment is evaluated on its own rows: a jagged
    tensor's slice of rows, a paged tensor's rows gathered through the page table.
    """
    logical = {}
    for t in k.inputs:
        array = np.asarray(inputs[t.name])
        if any(len(group) > 1 for group in t.fused):
            array = array.reshape([sizes[d] for d in t.dims])
        logical[t.name] = array
    segmented = {name: a for name, a in k.axes.items() if a.segment}
    if not segmented:
        outputs = Evaluator(k, logical, sizes).run()
    else:
        outputs = _by_segment(k, logical, sizes, segmented)
    return {name: value.reshape(k.caller_shape(k.tensors[name], sizes)) for name, value in outputs.items()}


def _by_segment(k: ir.KernelIR, inputs, sizes, segmented) -> dict[str, np.ndarray]:
    segment = next(iter(segmented.values())).segment
    offsets = {name: np.asarray(inputs[a.jagged.offsets]) for name, a in segmented.items() if a.jagged}
    paged = {name: a.paged for name, a in segmented.items() if a.paged}
    outputs = {t.name: np.zeros([sizes[d] for d in t.dims]) for t in k.outputs}
    for b in range(sizes[segment]):
        rows = {name: slice(int(o[b]), int(o[b + 1])) for name, o in offsets.items()}
        extents = {name: r.stop - r.start for name, r in rows.items()}
        positions = {}
        for name, p in paged.items():
            length = int(inputs[p.lengths][b])
            pos = np.arange(length)
            positions[name] = (inputs[p.table][b, pos // sizes["page_size"]], pos % sizes["page_size"])
            extents[name] = length

        def part(dims):
            return tuple(rows[d] if d in rows else slice(b, b + 1) if d == segment else slice(None) for d in dims)

        seg_inputs = {}
        for t in k.inputs:
            if t.scalar:
                continue
            paged_dims = [d for d in t.dims if d in positions]
            if paged_dims:  # gather this segment's positions from their pages
                at = t.dims.index(paged_dims[0])
                index = tuple([slice(None)] * at) + positions[paged_dims[0]]
                seg_inputs[t.name] = inputs[t.name][index]
            else:
                seg_inputs[t.name] = inputs[t.name][part(t.dims)]
        seg_sizes = dict(sizes, **{segment: 1}, **extents)
        for name, value in Evaluator(k, seg_inputs, seg_sizes, origin={segment: b}).run().items():
            outputs[name][part(k.tensors[name].dims)] = value
    return outputs
