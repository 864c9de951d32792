"""`codegen estimate`: the TPU compiler's own cost estimate of a generated kernel.

The kernel is compiled for a chip in a child process with libtpu's static profile on
(see codegen.tpu_compile), and its estimated cycles are set against the chip's
roofline: the kernel's FLOPs and HBM bytes (its `pl.CostEstimate`) over the chip's
bf16 peak and HBM bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass

from codegen.build import Built
from codegen.chips import CHIPS
from codegen.errors import SpecError
from codegen.plan import Plan
from codegen.verify import Case, _keyword_axes

# The compiler estimates cycles; no clock is in libtpu's output, nor published for
# v6e and v7x. The one used makes a kernel that keeps every MXU busy run at the chip's
# bf16 peak: peak / (2 FLOP x MXUs x width^2), with the peak, MXU count and width of
# jax's `pltpu.get_tpu_info_for_chip` (per TensorCore). The compiler agrees on the
# MXUs: it estimates a bf16-pass bmm with 1024 blocks on v6e at 264k FLOP per cycle,
# which is 2 x 256^2 MXUs' worth.
CLOCK_HZ = {"v5e": 197e12 / (2 * 4 * 128**2), "v6e": 920e12 / (2 * 2 * 256**2), "v7x": 1155e12 / (2 * 2 * 256**2)}
CLOCK_SOURCE = "bf16 peak / (2 x MXUs x MXU width^2), jax TpuInfo; makes MXU-bound = peak"


def parse_shapes(values: list[str]) -> dict[str, int]:
    """`NAME=N` strings into a dict; a clear error for anything else."""
    out: dict[str, int] = {}
    for text in values or []:
        name, sep, value = text.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit():
            raise SpecError(f"--shape {text!r}: expected NAME=N with N a non-negative integer, e.g. --shape m=2048")
        out[name.strip()] = int(value)
    return out


def shape_names(plan: Plan) -> list[str]:
    """The names a shape is given by: every axis sized at the call, and each jagged max."""
    k = plan.ir
    names = []
    for name, axis in k.axes.items():
        if axis.paged:
            names += ["pages"] if "pages" not in k.axes else []
            continue
        if axis.jagged:
            names.append(axis.jagged.max)
        names.append(name)
    return names


def case_from_shapes(plan: Plan, shapes: dict[str, int], name: str = "given shapes") -> Case:
    """The sizes for compiling the kernel at `shapes` (axis name or jagged max -> size).

    A jagged axis needs its max; its total defaults to every segment full (segments x
    max). A paged axis's table width comes from the `pages` axis, its pages from
    `num_pages` (default: one table's worth per sequence).
    """
    k = plan.ir
    sizes: dict[str, int] = {}
    maxima: dict[str, int] = {}
    unknown = [n for n in shapes if n not in k.axes and n not in {a.jagged.max for a in k.axes.values() if a.jagged}
               and n not in ("num_pages",)]
    if unknown:
        raise SpecError(f"--shape: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not an axis of "
                        f"{k.name}; its shapes are {', '.join(shape_names(plan))}")

    def need(axis: str) -> int:
        if axis not in shapes:
            raise SpecError(f"--shape: {k.name} needs a size for {axis} (its shapes are {', '.join(shape_names(plan))})")
        return shapes[axis]

    paged = next((a for a in k.axes.values() if a.paged), None)
    for axis_name, axis in k.axes.items():
        if axis.jagged:
            maxima[axis.jagged.max] = need(axis.jagged.max)
            sizes[axis.jagged.segment] = need(axis.jagged.segment)
            sizes[axis_name] = shapes.get(axis_name, sizes[axis.jagged.segment] * maxima[axis.jagged.max])
        elif axis.paged:
            continue
        elif axis_name not in sizes:
            sizes[axis_name] = need(axis_name)
    # The entry point refuses an axis held whole beyond its max: say so before compiling.
    beyond = [a for a, size in sizes.items() if a in k.axes and k.axes[a].max is not None
              and plan.axes[a].mode == "full" and size > k.axes[a].max]
    if beyond:
        a = beyond[0]
        raise SpecError(f"--shape: {a}={sizes[a]} is more than its max, {k.axes[a].max}, which the kernel's VMEM "
                        f"is budgeted for", hint=f"raise axes.{a}.max in the spec ({k.axes[a].max_loc})")
    if paged:
        table = next(t for t in k.tensors.values() if t.name == paged.paged.table)
        pages = sizes[table.dims[1]]
        sizes["page_size"] = paged.paged.page_size
        sizes[paged.name] = pages * paged.paged.page_size
        sizes["num_pages"] = shapes.get("num_pages", sizes[paged.paged.segment] * pages)
    return Case(name, sizes, maxima=maxima)


def shapes_text(case: Case) -> str:
    return ", ".join(f"{n}={v}" for n, v in (case.sizes | case.maxima).items() if n != "page_size")


@dataclass
class Work:
    flops: int
    transcendentals: int
    bytes_accessed: int


def data_dependent_note(plan: Plan) -> str:
    """Why the compiler's cycles may not track this kernel, or ''."""
    if any(a.paged for a in plan.ir.axes.values()):
        return ("its K/V loop runs to each sequence's length, read from SMEM at run time; the compiler "
                "costs such a loop at a fixed guess (about 40 trips), so these cycles are not the kernel's")
    if any(a.jagged for a in plan.ir.axes.values()):
        return ("its tiles past a segment's end are skipped at run time (lax.cond on the offsets); the compiler "
                "cannot know how many, so the cycles are for an unknown mix of full and skipped tiles")
    return ""


def format_estimate(built: Built, case: Case, chip: str, result, blocks: dict[str, int]) -> str:
    """The report `codegen estimate` prints."""
    spec = CHIPS[chip]
    lines = [f"estimate {built.plan.ir.name} for {chip} at {shapes_text(case)}"]
    if blocks:
        lines.append("  blocks: " + ", ".join(f"{n}={v}" for n, v in blocks.items()))
    if result.libtpu_version:  # a compiler that crashed said nothing of itself
        lines.append(f"  compiler: jax {result.jax_version}, libtpu {result.libtpu_version}; compiled in {result.seconds:.1f}s")
    if not result.ok:
        lines.append("  compile FAILED:")
        lines += [f"    {line}" for line in result.error.splitlines()[:40]]
        return "\n".join(lines) + "\n"
    if result.estimated_cycles is None:
        why = result.profile_error or result.profile_gap or "the compiler wrote no static profile"
        lines.append(f"  estimated cycles: unavailable: {why}")
        if chip == "v7x":
            lines.append("    (libtpu 0.0.50.1, from jax[tpu]==0.12.0 on Python 3.12, profiles v7x: run with --python)")
    else:
        clock = CLOCK_HZ[chip]
        seconds = result.estimated_cycles / clock
        lines.append(f"  estimated cycles: {result.estimated_cycles:,} (the compiler's static profile)")
        lines.append(f"  time: {seconds * 1e6:,.1f} us at {clock / 1e9:.2f} GHz (clock: {CLOCK_SOURCE})")
        if result.flops is not None:
            flop_rate = result.flops / seconds
            byte_rate = result.bytes_accessed / seconds
            roofline = max(result.flops / spec.bf16_flops_per_s, result.bytes_accessed / spec.hbm_bytes_per_s)
            bound = "compute" if result.flops / spec.bf16_flops_per_s >= result.bytes_accessed / spec.hbm_bytes_per_s else "memory"
            lines.append(f"  work: {result.flops:,} FLOP, {result.bytes_accessed:,} bytes of HBM traffic ({result.cost_source})")
            lines.append(f"  FLOP/s: {flop_rate / 1e12:,.2f} T = {100 * flop_rate / spec.bf16_flops_per_s:.1f}% "
                         f"of the {spec.bf16_flops_per_s / 1e12:g} TFLOP/s bf16 peak")
            lines.append(f"  bytes/s: {byte_rate / 1e9:,.1f} G = {100 * byte_rate / spec.hbm_bytes_per_s:.1f}% "
                         f"of the {spec.hbm_bytes_per_s / 1e12:g} TB/s HBM bandwidth")
            lines.append(f"  roofline: {roofline * 1e6:,.1f} us ({bound}-bound); the estimate is "
                         f"{seconds / roofline:.2f}x that" if roofline else "  roofline: no work")
    if result.vmem_spills is not None:
        lines.append(f"  spills: VMEM {result.vmem_spills} spills / {result.vmem_fills} fills, SMEM {result.smem_spills} / "
                     f"{result.smem_fills} (instructions in the final bundles)")
        lines.append(f"  VMEM: {result.scoped_vmem_bytes / 2**20:.2f} MiB scoped, of {spec.scoped_vmem_default / 2**20:g} MiB "
                     f"default limit and {spec.vmem_bytes / 2**20:g} MiB per TensorCore")
    note = data_dependent_note(built.plan)
    if note:
        lines.append(f"  caution: {note}")
    return "\n".join(lines) + "\n"


def keyword_sizes(plan: Plan, case: Case) -> dict[str, int]:
    return {a: case.sizes[a] for a in _keyword_axes(plan)} | case.maxima
