"""Measure the data each generated kernel moves, by running it in TPU interpret mode.

Usage: python benchmarks/dma_traffic.py > benchmarks/dma_traffic_results.md

Per kernel call it counts DMAs issued by the kernel, block copies made by the
pallas_call pipeline, bytes copied HBM->VMEM and VMEM->HBM, and grid steps, and
compares the bytes with the minimum: every needed input byte read once and every
output byte written once. JAX's own paged_attention runs on the same inputs as
the generated one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental.pallas import tpu as pltpu  # noqa: E402

from codegen.build import build_source  # noqa: E402
from codegen.chips import ITEMSIZE  # noqa: E402
from codegen.verify import Case, cases, load_module, random_inputs, run_generated  # noqa: E402


@dataclasses.dataclass
class Traffic:
    dmas: int = 0  # make_async_copy starts inside the kernel (emit_pipeline's copies included)
    block_copies: int = 0  # copies the pallas_call grid pipeline makes for BlockSpec operands
    hbm_to_vmem: int = 0
    vmem_to_hbm: int = 0
    grid_steps: int = 0
    pipeline_grid: tuple[int, ...] = ()  # the emit_pipeline grid, where the kernel runs one

    @property
    def pipeline_steps(self) -> int:
        """Steps of emit_pipeline over the call: its grid runs once per pallas_call grid step."""
        return int(np.prod(self.pipeline_grid)) * self.grid_steps if self.pipeline_grid else 0


@contextlib.contextmanager
def counting_traffic():
    """Count what interpreted Pallas TPU kernels move between HBM and VMEM.

    This reaches into the TPU interpreter of jax 0.10 and 0.12 (the same there): its
    DMA start, DMA write-out, the `get`/`store` callbacks that move pallas_call blocks,
    and its grid order; and the grid a kernel gives emit_pipeline. Nothing else here does.
    """
    if not jax.__version__.startswith(("0.10.", "0.12.")):
        raise RuntimeError(f"the traffic hook knows the interpreter of jax 0.10 and 0.12, not jax {jax.__version__}")
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as interp

    spaces = interp.TPU_MEMORY_SPACE_NAMES
    traffic = Traffic()
    saved = {name: getattr(interp, name) for name in ("dma_start", "get", "store")}
    saved_write = interp.DMA.execute_write
    saved_order = interp._get_randomized_grid_coordinates
    saved_pipeline = pltpu.emit_pipeline

    def emit_pipeline(body, *, grid, **kwargs):  # traced once per pallas_call trace
        traffic.pipeline_grid = tuple(int(n) for n in grid)
        return saved_pipeline(body, grid=grid, **kwargs)

    def dma_start(*args, **kwargs):
        traffic.dmas += 1
        return saved["dma_start"](*args, **kwargs)

    def execute_write(dma):
        if dma.state == interp.DmaState.READ and dma.data is not None:
            src, dst = spaces[dma.src_memory_space], spaces[dma.dst_memory_space]
            if src in ("hbm", "any") and dst == "vmem":
                traffic.hbm_to_vmem += dma.data.nbytes
            elif src == "vmem" and dst in ("hbm", "any"):
                traffic.vmem_to_hbm += dma.data.nbytes
        return saved_write(dma)

    def get(*args, input_name=None, **kwargs):
        token, value = saved["get"](*args, input_name=input_name, **kwargs)
        if input_name is not None:  # a pallas_call input block, copied in for a grid step
            traffic.block_copies += 1
            traffic.hbm_to_vmem += np.asarray(value).nbytes
        return token, value

    def store(*args, output_name=None, **kwargs):
        if output_name is not None:  # a pallas_call output block, copied out after a grid step
            traffic.block_copies += 1
            traffic.vmem_to_hbm += np.asarray(args[6]).nbytes
        return saved["store"](*args, output_name=output_name, **kwargs)

    get.__wrapped__ = saved["get"].__wrapped__  # a DMA's own read is counted at its write
    store.__wrapped__ = saved["store"].__wrapped__
    jax.clear_caches()  # kernels traced before the hook would keep the old callbacks
    interp.dma_start, interp.get, interp.store = dma_start, get, store
    interp.DMA.execute_write = execute_write
    pltpu.emit_pipeline = emit_pipeline
    # One TensorCore walks the grid in order. The interpreter shuffles 'parallel' dims (to
    # expose races), and the blocks a step reuses from the step before depend on the order.
    interp._get_randomized_grid_coordinates = lambda grid, *_: (np.zeros((0,), np.int32),) * len(grid)
    try:
        yield traffic
    finally:
        interp.dma_start, interp.get, interp.store = saved["dma_start"], saved["get"], saved["store"]
        interp.DMA.execute_write = saved_write
        interp._get_randomized_grid_coordinates = saved_order
        pltpu.emit_pipeline = saved_pipeline
        jax.clear_caches()


def interpret_params(traffic: Traffic):
    def record(token, *_):
        traffic.grid_steps += 1
        return token  # the interpreter threads its ordering token through this callback

    return pltpu.InterpretParams(dma_execution_mode="eager", grid_point_recorder=record)


def minimum_bytes(plan, case, inputs) -> tuple[int, int]:
    """(input bytes a kernel must read, output bytes it must write), each element once."""
    k = plan.ir
    read = 0
    for t in k.inputs:
        if t.scalar:
            continue  # scalar-prefetched to SMEM, not copied into VMEM
        elements = 1
        for d in t.dims:
            axis = k.axes[d]
            if axis.paged:
                other = np.prod([case.sizes[x] for x in t.dims if x != d], dtype=np.int64)
                elements = int(np.asarray(inputs[axis.paged.lengths]).sum()) * int(other)
                break
            elements *= case.sizes[d]
        read += elements * ITEMSIZE[t.dtype]
    written = sum(int(np.prod(k.caller_shape(t, case.sizes))) * ITEMSIZE[t.dtype] for t in k.outputs)
    return read, written


def grouped_gemm_cases(plan) -> list[Case]:
    """Balanced groups (one row tile each, N in one block: the minimum is reachable) and
    skewed ones (one group of 8 tiles, the rest nearly empty: the grid is sized by the max)."""
    block_t, block_n, block_k = (plan.axes[a].block for a in ("t", "n", "k"))
    out = []
    for label, lengths in (("balanced groups", [block_t] * 8), ("skewed groups", [8 * block_t] + [1] * 7)):
        sizes = {"g": len(lengths), "t": sum(lengths), "n": block_n, "k": 3 * block_k}
        out.append(Case(label, sizes, {"t": lengths}, {"max_group_size": max(lengths)}))
    return out


def long_sequence_cases(plan) -> list[Case]:
    """One head at S = 2048: where causal attention's skipped blocks show against full attention."""
    return [Case("S=2048, 1 head", {"batch": 1, "head": 1, "sq": 2048, "skv": 2048, "d": 128})]


# Cases a kernel is measured at beyond the first `codegen verify` case.
EXTRA_CASES = {
    "grouped_gemm": grouped_gemm_cases,
    "attention": long_sequence_cases,
    "causal_attention": long_sequence_cases,
}


def measure(name: str, pick=lambda plan: cases(plan)[0], rules: dict[str, str] | None = None):
    """One kernel's traffic at one case, at the blocks its spec declares (a copy without its
    `tune:` section); `rules` switches rules of that copy."""
    import tempfile

    path = ROOT / "specs" / f"{name}.yaml"
    text = path.read_text().split("\ntune:")[0] + "\n"  # the tune: section is the file's last
    for rule, state in (rules or {}).items():
        if re.search(rf"\nrules: {{.*\b{rule}: ", text):  # switched already: switch it again
            text = re.sub(rf"(\nrules: {{.*\b{rule}: )[a-z]+", rf"\g<1>{state}", text, count=1)
        elif "\nrules: {" in text:
            text = text.replace("\nrules: {", f"\nrules: {{{rule}: {state}, ", 1)
        elif "\nrules:" not in text:
            text += f"rules: {{{rule}: {state}}}\n"
        else:
            raise ValueError(f"{name}.yaml: switch {rule} in its own rules: mapping")
    path = Path(tempfile.mkdtemp()) / f"{name}.yaml"
    path.write_text(text)
    built = build_source(path)
    plan = built.plan
    case = pick(plan)
    inputs = random_inputs(plan, case, np.random.default_rng(0))
    module = load_module(built.source, name)
    with counting_traffic() as traffic:
        run_generated(module, plan, inputs, case, interpret_params(traffic))
    return plan, case, inputs, traffic


def measure_jax_paged_attention(inputs, block_pages: int) -> Traffic:
    from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention

    args = [inputs[n] for n in ("q", "k_pages", "v_pages", "lengths", "page_indices")]
    with counting_traffic() as traffic:
        with pltpu.force_tpu_interpret_mode(interpret_params(traffic)):
            jax.block_until_ready(paged_attention(*args, pages_per_compute_block=block_pages))
    return traffic


def measure_megablox_gmm(inputs, tiling: tuple[int, int, int]) -> Traffic:
    """megablox gmm on the same groups, at the same (rows, k, n) tiles. It takes only a row
    count that its row tile divides: lhs gets zero rows after the last group, in no group."""
    from jax.experimental.pallas.ops.tpu.megablox import gmm

    lhs = jnp.asarray(inputs["lhs"])
    lhs = jnp.pad(lhs, ((0, -lhs.shape[0] % tiling[0]), (0, 0)))
    sizes = jnp.asarray(np.diff(np.asarray(inputs["group_offsets"])), jnp.int32)
    with counting_traffic() as traffic:
        with pltpu.force_tpu_interpret_mode(interpret_params(traffic)):
            jax.block_until_ready(gmm(lhs, jnp.asarray(inputs["rhs"]), sizes, preferred_element_type=jnp.float32,
                                      tiling=tiling))
    return traffic


def row(label, traffic: Traffic, minimum: tuple[int, int], case_text: str) -> str:
    need_in, need_out = minimum
    ratio = (traffic.hbm_to_vmem + traffic.vmem_to_hbm) / max(1, need_in + need_out)
    steps = f"{traffic.pipeline_steps:,}" if traffic.pipeline_grid else "-"
    return (f"| {label} | {case_text} | {traffic.grid_steps} | {steps} | {traffic.dmas} | {traffic.block_copies} | "
            f"{traffic.hbm_to_vmem:,} | {need_in:,} | {traffic.vmem_to_hbm:,} | {need_out:,} | {ratio:.2f}x |")


def main() -> None:
    names = sorted(p.stem for p in (ROOT / "specs").glob("*.yaml"))
    print("# Measured HBM<->VMEM traffic per kernel call (TPU interpret mode)\n")
    print("Command: `python benchmarks/dma_traffic.py > benchmarks/dma_traffic_results.md`\n")
    print("Inputs: the first case `codegen verify` runs for each spec, at the block sizes the spec "
          "declares (its `tune:` entries, chosen for the compiler's estimate at compiler_estimates' "
          "shapes, left out); "
          "DMAs execute eagerly. 'minimum' is every needed input byte read once and every output byte "
          "written once (scalar-prefetched tables, offsets and lengths excluded).\n")
    print("| kernel | case | grid steps | emit_pipeline steps | kernel DMAs | pipeline block copies | "
          "HBM->VMEM bytes | minimum | VMEM->HBM bytes | minimum | total / minimum |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    long_sequence = {}
    def peer_rows(name, plan, case, inputs):
        if name == "grouped_gemm":
            tiling = tuple(plan.axes[a].block for a in ("t", "k", "n"))
            print(row("JAX megablox gmm", measure_megablox_gmm(inputs, tiling), minimum_bytes(plan, case, inputs),
                      f"same inputs, tiling {tiling}"))

    for name in names:
        plan, case, inputs, traffic = measure(name)
        print(row(name, traffic, minimum_bytes(plan, case, inputs), case.name))
        peer_rows(name, plan, case, inputs)
        extra = EXTRA_CASES.get(name)
        for i in range(len(extra(plan)) if extra else 0):
            plan, case, inputs, traffic = measure(name, lambda plan, i=i: extra(plan)[i])
            print(row(name, traffic, minimum_bytes(plan, case, inputs), case.name))
            peer_rows(name, plan, case, inputs)
            if extra is long_sequence_cases:
                long_sequence[name] = traffic
        if name == "paged_attention":
            block = plan.axes[plan.ir.ordered_axis].block
            jax_traffic = measure_jax_paged_attention(inputs, block)
            print(row("JAX paged_attention", jax_traffic, minimum_bytes(plan, case, inputs), "same inputs"))
    causal, full = long_sequence["causal_attention"], long_sequence["attention"]
    *_, forward = measure("attention", lambda plan: long_sequence_cases(plan)[0], {"snake_order": "off"})
    moved = lambda t: t.hbm_to_vmem + t.vmem_to_hbm  # noqa: E731
    print(f"\ncausal_attention against attention at S=2048, one head, the same blocks: "
          f"{moved(causal) / moved(full):.3f}x the bytes ({causal.block_copies} block copies against "
          f"{full.block_copies}), and {moved(causal) / moved(forward):.3f}x those of attention with "
          f"snake_order off ({forward.block_copies} block copies); the same {causal.grid_steps} grid steps, "
          f"of which mask_skip leaves {live_tiles(2048, 128)} computing.")
    skewed = lambda plan: grouped_gemm_cases(plan)[1]  # noqa: E731
    # aligned_tiles stands down with real_tiles_only off (n is walked between groups), so
    # both sides have row blocks that start at each group's first row
    _, case, _, on = measure("grouped_gemm", skewed, {"aligned_tiles": "off"})
    _, _, _, off = measure("grouped_gemm", skewed, {"aligned_tiles": "off", "real_tiles_only": "off"})
    print(f"\ngrouped_gemm, {case.name}, against the same with real_tiles_only off (aligned_tiles off on both): "
          f"{on.pipeline_steps:,} emit_pipeline steps against {off.pipeline_steps:,}, and {moved(on):,} bytes "
          f"against {moved(off):,}.")
    print(NOTES)


def live_tiles(s: int, block: int) -> int:
    """(q tile, kv tile) pairs with a key at or before a query: causal attention's work."""
    n = -(-s // block)
    return n * (n + 1) // 2


NOTES = """
## Where a kernel moves more than the minimum, and why

- **At the minimum: exp, axpy, softmax, rmsnorm, layernorm, gdpa_jagged, jagged_softmax,
  segment_sum, segment_mean, and grouped_gemm with balanced groups.** Each block of each
  tensor moves once. The segment sums read each input byte once. (Jagged kernels show 1
  grid step: their work is one emit_pipeline inside a single pallas_call step, whose
  steps are counted apart and whose copies count as kernel DMAs.)
- **gdpa: under the minimum.** K and V follow the segment alone, so the pipeline fetches
  them once per segment, and with real_tiles_only a segment with no query rows is never
  visited, so its K and V are never read. The minimum counts every input byte, needed or
  not.
- **attention: K and V once per query block.** Its grid walks kv inside each (batch, head,
  q block): at S=2048 with 128-row blocks K/V are read 16 times (8.50x).
- **causal_attention: mask_skip and snake_order** (the line under the table). A q tile
  fetches only the K/V blocks up to the diagonal, and computes only those tiles. The
  diagonal blocks are half used, so K/V cost (n+1)/2n of the full walk with n = 16 blocks.
  With two buffers, a tile can reuse at most one block of the tile before; snake_order
  gets that reuse at every q tile: odd tiles walk forward from block 0, where the even
  tile before ended, and even tiles walk backwards from the block below their diagonal,
  where the odd tile before ended. attention gets the plain rule: each q tile after the
  first starts on its predecessor's last block.
- **bmm, matmul_bias_gelu: A once per column block, B once per row block** (1.67x).
- **gdpa_jagged, hstu: K and V once per real q tile.** A segment's kv rows are walked
  again for each of its real q tiles; hstu's causal mask (mask_skip) skips the kv tiles
  after each q tile. With real_tiles_only the pipeline visits only real q tiles; the few
  visits past the last one, like the tiles past a segment's end that the grid launched
  before that rule, hold kv at the block the real tile before them ended on and fetch
  nothing (idle_tiles_hold; gdpa_jagged moved 1.78x before it, hstu 1.28x).
- **grouped_gemm: rhs once per real row tile, and each group's row blocks whole.** With
  real_tiles_only the pipeline visits each group's real row tiles alone (the line under
  the table: with skewed groups, a quarter of the steps of a grid that gives every group
  cdiv(max, block) row tiles, and no step for an empty group, which moved onto its own rhs
  blocks before). Before idle_tiles_hold a tile past its group's rows walked K again and
  fetched rhs each time: 3.63x with skewed groups, 2.49x with mixed ones. With
  aligned_tiles the row blocks are aligned to the array, as megablox gmm's are: a group
  reads (and writes) the whole blocks its rows overlap, so a block two groups share is
  read by both, and small groups read their neighbours' rows (mixed segments: 2.02x, where
  blocks that started at each group's first row moved 1.54x but as [t, 1, k] rows, one row
  per DMA on a TPU, relaid out by XLA around the call). megablox gmm at the same tiles and
  groups moves more on each case but the balanced one (its rows padded to whole tiles, as
  it requires). The visits are sized statically, cdiv(t, block) + groups - 1 at most
  (megablox sizes its grid at run time): the balanced groups take 15 visits for 8 real
  tiles, and the 7 after the last do nothing and fetch nothing.
- **paged_attention: whole pages.** DMAs move whole pages, so a sequence's last page is read
  in full even when only some of its rows are below the length. No page past a length is
  touched, and zero-length sequences issue no DMA: 68 DMAs = 2 (K, V) x 2 K/V heads x 17 pages.
- **JAX's paged_attention on the same inputs** reads whole compute blocks of 4 pages (112
  DMAs, pages past the length included), and writes its m and l statistics as extra outputs.
- **ragged_paged_attention: whole pages, and K/V once per query tile** (1.54x); mask_skip
  stops each tile's page loop at the last block its rows can see.

Scalar-prefetched inputs (offsets, page tables, lengths) go to SMEM and are not counted.
Interpret mode pads partial blocks, so ragged cases would count padding; these cases are
aligned or move whole rows (BoundedSlice, pages).
"""


if __name__ == "__main__":
    main()
