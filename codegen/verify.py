"""`codegen verify`: run a generated kernel where no TPU is available.

Two checks stand in for a TPU: TPU interpret mode on the CPU, with
uninitialized memory filled with NaN so that a missing mask shows, compared
against the untiled numpy reference; and lowering for TPU with `jax.export`,
which runs the Pallas-to-Mosaic lowering and its block-shape checks.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass, field

import numpy as np

from codegen import ir
from codegen.build import Built
from codegen.plan import Plan
from codegen.reference import reference

TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 2e-2, "int32": 0, "int16": 0, "int8": 0}
NUMPY_DTYPE = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "int16": np.int16, "int8": np.int8}


def load_module(source: str, name: str) -> types.ModuleType:
    """Execute generated source as a fresh module, without writing it anywhere."""
    module = types.ModuleType(name)
    module.__file__ = f"<generated {name}>"
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


@dataclass(frozen=True)
class Case:
    name: str
    sizes: dict[str, int]  # for a jagged axis: its total over all segments
    lengths: dict[str, list[int]] = field(default_factory=dict)  # jagged axis -> per-segment extents
    maxima: dict[str, int] = field(default_factory=dict)  # entry keyword -> value
    scalars: dict[str, np.ndarray] = field(default_factory=dict)  # page tables and lengths

    def offsets(self, axis: str) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths[axis])]).astype(np.int32)


TILES = 3  # every tiled axis is walked in at least this many tiles, the last one short


def three_tiles_and_a_tail(block: int) -> int:
    """An extent that spans three blocks, the last one partly."""
    return (TILES - 1) * block + max(1, block // 2 - 1)


def jagged_cases(plan: Plan) -> list[Case]:
    """Segment extents with every edge: empty, 1, a block, one past, one short of the max,
    the max (three tiles); dense tiled axes span three blocks and a tail."""
    jagged = [a for a in plan.ir.axes.values() if a.jagged]
    patterns = {
        "mixed segments": lambda blk: [0, 1, blk, blk + 1, TILES * blk - 1, 0, TILES * blk, blk - 1],
        "a single segment": lambda blk: [TILES * blk - 1],
        "all empty but one": lambda blk: [0, 0, TILES * blk, 0],
    }
    out = []
    for name, pattern in patterns.items():
        sizes, lengths, maxima = {}, {}, {}
        for i, a in enumerate(jagged):
            ap = plan.axes[a.name]
            blk = ap.block
            if ap.whole:  # one tile must hold the longest segment: edges at a third of the block
                blk = max(ap.alignment, ap.block // TILES // ap.alignment * ap.alignment)
            ext = pattern(blk)
            ext = ext[i % len(ext):] + ext[: i % len(ext)]  # a second jagged axis sees other extents
            same_offsets = [b.name for b in jagged[:i] if b.jagged.offsets == a.jagged.offsets]
            if same_offsets:  # ... unless it shares the first one's offsets
                ext = lengths[same_offsets[0]]
            lengths[a.name], sizes[a.name] = ext, sum(ext)
            maxima[a.jagged.max] = max(maxima.get(a.jagged.max, 0), TILES * blk)
            sizes[a.jagged.segment] = len(ext)
        for axis, ap in plan.axes.items():
            if axis in sizes:
                continue
            if ap.blocked:
                sizes[axis] = three_tiles_and_a_tail(ap.block)
            else:
                sizes[axis] = (plan.ir.axes[axis].max or 64) if ap.mode == "full" else 2
        out.append(Case(name, sizes, lengths, maxima))
    return out


def paged_cases(plan: Plan, seed: int = 0) -> list[Case]:
    """Lengths 0, 1, a page, one past a page, one past a block, the maximum; shuffled pages;
    the sizes of the other axes (query heads per K/V head, say) varied between cases."""
    rng = np.random.default_rng(seed)
    axis = next(a for a in plan.ir.axes.values() if a.paged)
    paged, block = axis.paged, plan.axes[axis.name].block
    page_size, pages = paged.page_size, 2 * block
    longest = pages * page_size
    table_axis = next(t for t in plan.ir.tensors.values() if t.name == paged.table).dims[1]
    last_dims = {t.dims[-1] for t in plan.ir.tensors.values() if not t.scalar}
    varied = [a for a, ap in plan.axes.items() if ap.mode in ("squeezed", "full") and a not in last_dims and a != table_axis]
    patterns = {
        "edge lengths": [0, 1, page_size, page_size + 1, block * page_size + 1, longest],
        "one full sequence": [longest],
        "all empty but one": [0, 0, 3, 0],
    }
    # Rows of jagged axes in the same segments (queries of a ragged batch): none, more rows than
    # positions (the first rows see nothing), 1, a block, one short of the max, the max.
    row_patterns = {
        "edge lengths": lambda blk: [0, 3, 1, blk, TILES * blk - 1, TILES * blk],
        "one full sequence": lambda blk: [TILES * blk],
        "all empty but one": lambda blk: [0, 0, 2, 0],
    }
    jagged = [a for a in plan.ir.axes.values() if a.jagged]
    out = []
    for i, (name, lengths) in enumerate(patterns.items()):
        sizes = {paged.segment: len(lengths), table_axis: pages, axis.name: longest, "page_size": page_size}
        sizes["num_pages"] = len(lengths) * pages + 3
        rows, maxima = {}, {}
        for a in jagged:
            blk = plan.axes[a.name].block
            rows[a.name] = row_patterns[name](blk)
            sizes[a.name] = sum(rows[a.name])
            maxima[a.jagged.max] = max(maxima.get(a.jagged.max, 0), TILES * blk)
        for a, ap in plan.axes.items():
            if a in sizes:
                continue
            if a in varied:
                sizes[a] = (2, 4, 1)[i % 3] if ap.mode == "full" else (2, 1, 3)[i % 3]
            else:
                sizes[a] = plan.ir.axes[a].max or 128
        table = rng.permutation(sizes["num_pages"])[: len(lengths) * pages].reshape(len(lengths), pages)
        scalars = {paged.lengths: np.asarray(lengths, np.int32), paged.table: table.astype(np.int32)}
        out.append(Case(name, sizes, rows, maxima, scalars=scalars))
    return out


def cases(plan: Plan) -> list[Case]:
    """Sizes for every axis: aligned, one past a block, one short of two, under one block."""
    if any(a.paged for a in plan.ir.axes.values()):
        return paged_cases(plan)
    if any(a.jagged for a in plan.ir.axes.values()):
        return jagged_cases(plan)

    def full(axis: str, aligned: bool) -> int:
        cap = plan.ir.axes[axis].max or 256
        return min(cap, 128) if aligned else min(cap, 100)

    def sizes(tiled, squeezed: int, aligned_full: bool) -> dict[str, int]:
        out = {}
        for name, a in plan.axes.items():
            if a.mode == "tiled":
                out[name] = tiled(a.block)
            elif a.mode == "squeezed":
                out[name] = squeezed
            else:
                out[name] = full(name, aligned_full)
        return out

    return [
        Case("aligned", sizes(lambda b: 2 * b, 2, True)),
        Case("three tiles and a tail", sizes(three_tiles_and_a_tail, 3, False)),
        Case("one past a block", sizes(lambda b: b + 1, 1, False)),
        Case("one short of two blocks", sizes(lambda b: 2 * b - 1, 2, False)),
        Case("under one block", sizes(lambda b: max(1, b // 2 + 1), 1, False)),
    ]


def random_inputs(plan: Plan, case: Case, rng: np.random.Generator) -> dict[str, np.ndarray]:
    import jax.numpy as jnp

    sizes = case.sizes
    out = {}
    for t in plan.ir.inputs:
        if t.offsets_of:
            out[t.name] = case.offsets(t.offsets_of)
            continue
        if t.name in case.scalars:
            out[t.name] = case.scalars[t.name]
            continue
        shape = plan.ir.caller_shape(t, sizes)
        if t.dtype.startswith("int"):
            out[t.name] = rng.integers(-8, 8, size=shape).astype(NUMPY_DTYPE[t.dtype])
        else:
            out[t.name] = np.asarray(jnp.asarray(rng.standard_normal(shape), dtype=getattr(jnp, t.dtype)))
    return out


def run_generated(module, plan: Plan, inputs: dict[str, np.ndarray], case: Case, interpret, **blocks):
    """Call the entry point the way a user would; returns {output name: array}."""
    fn = getattr(module, plan.ir.name)
    kwargs = {a: case.sizes[a] for a in _keyword_axes(plan)} | case.maxima
    result = fn(*(inputs[t.name] for t in plan.ir.inputs), **kwargs, **blocks, interpret=interpret)
    outputs = plan.ir.outputs
    result = (result,) if len(outputs) == 1 else tuple(result)
    return {t.name: np.asarray(r) for t, r in zip(outputs, result)}


def _keyword_axes(plan: Plan) -> list[str]:
    inputs = {d for t in plan.ir.inputs for d in t.dims}
    return [a for a in plan.ir.axes if a not in inputs and any(a in t.dims for t in plan.ir.tensors.values())]


def max_error(got: np.ndarray, want: np.ndarray) -> float:
    """The largest error relative to the output's own scale (its largest magnitude): NaN if
    any NaN; for an all-zero output, 0 if the kernel gave exact zeros, else infinite."""
    got = got.astype(np.float64)
    if np.isnan(got).any():
        return float("nan")
    if not got.size:
        return 0.0
    # Equal infinities are exact: a max over an empty segment is -inf in both.
    with np.errstate(invalid="ignore"):
        error = float(np.max(np.where(got == want, 0.0, np.abs(got - want))))
    finite = np.abs(want[np.isfinite(want)])
    scale = float(np.max(finite)) if finite.size else 0.0
    if scale == 0.0:
        return 0.0 if error == 0.0 else float("inf")
    return error / scale


def interpret_params():
    from jax.experimental.pallas import tpu as pltpu

    return pltpu.InterpretParams(uninitialized_memory="nan")


def lower_for_tpu(module, plan: Plan, case: Case) -> str:
    """Lower the entry point for TPU from this machine; returns the StableHLO text."""
    import jax

    fn = getattr(module, plan.ir.name)
    sizes = case.sizes
    kwargs = {a: sizes[a] for a in _keyword_axes(plan)} | case.maxima
    args = [jax.ShapeDtypeStruct(plan.ir.caller_shape(t, sizes), getattr(jax.numpy, t.dtype)) for t in plan.ir.inputs]
    exported = jax.export.export(jax.jit(functools.partial(fn, **kwargs)), platforms=["tpu"])(*args)
    return exported.mlir_module()


def tolerance(k, tensor: str) -> float:
    """The output dtype's tolerance, or a cast's where the kernel rounds a value to a
    coarser dtype: an online reduction rounds against each step's running state, the
    untiled reference against the final one, so the two differ by that dtype's rounding."""
    casts = [v.dtype for st in k.statements for v in ir.walk(st.value) if isinstance(v, ir.Cast)]
    return max(TOLERANCE[d] for d in [k.tensors[tensor].dtype, *casts])


def verify_built(built: Built, seed: int = 0, log=print) -> bool:
    plan = built.plan
    module = load_module(built.source, plan.ir.name)
    rng = np.random.default_rng(seed)
    ok = True
    log(f"verify {plan.ir.name}: TPU interpret mode on CPU (uninitialized memory = NaN) vs. untiled numpy reference")
    for case in cases(plan):
        inputs = random_inputs(plan, case, rng)
        want = reference(plan.ir, inputs, case.sizes | case.maxima)
        got = run_generated(module, plan, inputs, case, interpret_params())
        shown = ", ".join(f"{a}={case.lengths[a] if a in case.lengths else n}" for a, n in case.sizes.items())
        shown += "".join(f", {name}={v.tolist()}" for name, v in case.scalars.items() if v.ndim == 1)
        for name, value in got.items():
            err = max_error(value, want[name])
            tol = tolerance(plan.ir, name)
            good = err <= tol  # NaN compares false
            ok &= good
            log(f"  {case.name:<24} ({shown}): {name} max err {err:.2e} of scale (tol {tol:.0e}) {'ok' if good else 'FAILED'}")
    for case in (cases(plan)[0], cases(plan)[-1]):
        try:
            text = lower_for_tpu(module, plan, case)
            log(f"  lowered for TPU ({case.name}): ok, {len(text)} characters of StableHLO with a Mosaic kernel")
        except Exception as err:  # the lowering's own message is the useful part
            ok = False
            log(f"  lowered for TPU ({case.name}): FAILED: {type(err).__name__}: {str(err).splitlines()[0]}")
    log(f"verify {plan.ir.name}: {'passed' if ok else 'FAILED'}")
    return ok


# --- compiling for a TPU chip with the real compiler ---------------------------------


def kernel_to_compile(built: Built, case: Case, blocks: dict[str, int] | None = None):
    """The entry point at `case`'s sizes, as the TPU compiler's child process takes it."""
    from codegen.tpu_compile import Kernel

    plan = built.plan
    args = [(plan.ir.caller_shape(t, case.sizes), t.dtype) for t in plan.ir.inputs]
    kwargs = {a: case.sizes[a] for a in _keyword_axes(plan)} | case.maxima | (blocks or {})
    updated_in_place = {op.tensor for op in plan.inputs if op.alias_output is not None}
    donate = [i for i, t in enumerate(plan.ir.inputs) if t.name in updated_in_place]
    return Kernel(f"{plan.ir.name} ({case.name})", built.source, plan.ir.name, args, kwargs, donate)


def compile_cases(built: Built) -> list[Case]:
    """The shapes verify compiles at: the same two that it lowers."""
    all_cases = cases(built.plan)
    return [all_cases[0], all_cases[-1]]


def compile_for_chip(built: Built, chip: str, extra: list[Case] = (), log=print, python: str | None = None) -> bool:
    """Compile the kernel for `chip` with libtpu at the verify shapes and at `extra`.

    A failure prints the compiler's own message. Raises CompilerUnavailable when
    libtpu is not installed.
    """
    from codegen.tpu_compile import ChildCrashed, compile_kernels

    kernels = [kernel_to_compile(built, case) for case in [*compile_cases(built), *extra]]
    log(f"compile {built.plan.ir.name} for {chip} with the TPU compiler (libtpu), {len(kernels)} shapes")
    try:
        results = compile_kernels(kernels, chip, python=python)
    except ChildCrashed as crash:  # libtpu aborted the whole process: its message is all there is
        log(f"  the compiler crashed: {crash}")
        log(f"compile {built.plan.ir.name} for {chip}: FAILED")
        return False
    ok = True
    for result in results:
        if result.ok:
            log(f"  compiled for {chip}: {result.label}: ok in {result.seconds:.1f}s")
            continue
        ok = False
        log(f"  compiled for {chip}: {result.label}: FAILED")
        message = result.error.splitlines()
        for line in message[:40]:
            log(f"    {line}")
        if len(message) > 40:
            log(f"    ... ({len(message) - 40} more lines)")
    log(f"compile {built.plan.ir.name} for {chip}: {'passed' if ok else 'FAILED'} "
        f"(jax {result.jax_version}, libtpu {result.libtpu_version})")
    return ok
