"""The TPU compiler's own estimate of every generated kernel, next to a peer's.

Usage:
  python benchmarks/compiler_estimates.py [--chips v5e v6e v7x] [--python PATH | --v7x-python PATH] \
      > benchmarks/compiler_estimates_results.md

For each spec at the shapes in SHAPES, on each chip, the generated kernel (built for
that chip, so with its tuned default blocks where the spec has them) and a peer are
compiled the same way, each in a fresh child process with libtpu's static profile
on (codegen.tpu_compile.profile_kernel), and their estimated cycles compared. Peers
are JAX's hand-written Pallas kernels where one exists (flash_attention, causal too;
paged_attention; ragged_paged_attention; megablox gmm), else XLA's own jnp
implementation, with f32 matmuls at HIGHEST precision and bf16 ones with f32 results;
jagged inputs are given with every segment full, so the dense jnp peer does the same
work. Below the table, each ratio is set against its goal (GOALS). libtpu 0.0.42
(jax 0.10.2) aborts when profiling v7x kernels and some emit_pipeline kernels;
--python names an interpreter with jax[tpu]==0.12.0 (libtpu 0.0.50.1), which profiles
them, for every chip (--v7x-python: for v7x only). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from codegen.build import build_source  # noqa: E402
from codegen.chips import CHIPS  # noqa: E402
from codegen.estimate import CLOCK_HZ, case_from_shapes, data_dependent_note, shapes_text  # noqa: E402
from codegen.tpu_compile import ChildCrashed, Compiled, Kernel, _run_child, profile_kernel, read_profile  # noqa: E402
from codegen.verify import kernel_to_compile  # noqa: E402

# Realistic shapes, the same for every chip. gdpa is at the scale of the seeds'
# GDPA measurements: 768 segments of up to 4096 query rows.
SHAPES = {
    "exp": {"m": 4096, "n": 4096},
    "axpy": {"m": 4096, "n": 4096},
    "softmax": {"m": 4096, "n": 4096},
    "bmm": {"batch": 4, "m": 2048, "n": 2048, "k": 2048},
    "attention": {"batch": 2, "head": 8, "sq": 2048, "skv": 2048, "d": 128},
    "gdpa": {"b": 768, "max_seq_len": 4096, "skv": 256, "h": 8, "d": 128},
    # At 64 segments of 2048 the compile (with the profile) outgrew 11 GiB of memory here.
    "gdpa_jagged": {"b": 16, "max_seq_len_q": 1024, "max_seq_len_kv": 1024, "h": 8, "d": 128},
    "paged_attention": {"b": 32, "kvh": 8, "g": 4, "d": 128, "pages": 128},
    # Whole rows in one block: n within the specs' max of 8192.
    "rmsnorm": {"m": 4096, "n": 4096},
    "layernorm": {"m": 4096, "n": 4096},
    "matmul_bias_gelu": {"m": 2048, "n": 2048, "k": 2048},
    "causal_attention": {"batch": 2, "head": 8, "sq": 2048, "skv": 2048, "d": 128},
    # The jagged kernels stay moderate, as gdpa_jagged does: their compiles run in a child
    # process each, on 2 shared cores, and grow with the grid.
    "hstu": {"b": 16, "max_seq_len": 1024, "h": 4, "d": 128},
    "segment_sum": {"b": 64, "max_seq_len": 1024, "d": 512},
    "segment_mean": {"b": 64, "max_seq_len": 1024, "d": 512},
    # Each segment is held whole in one tile: max_seq_len is at most the spec's block of 512.
    "jagged_softmax": {"b": 64, "max_seq_len": 512, "h": 128},
    "grouped_gemm": {"g": 8, "max_group_size": 512, "k": 2048, "n": 2048},
    # Mixed prefill/decode at paged_attention's cache: 16 sequences of up to 64 query rows,
    # 128 pages of 16 positions (2048) each.
    "ragged_paged_attention": {"b": 16, "max_q_len": 64, "kvh": 8, "g": 4, "d": 128, "pages": 128},
}

_HEADER = """import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

HIGHEST = lax.Precision.HIGHEST


def _fast_gelu(x):
    return x * 0.5 * (1 + jnp.tanh(0.7978845608 * x * (1 + 0.044715 * x * x)))

"""

# Each peer takes the generated entry point's positional arguments, at the same shapes,
# and computes the same result (jagged inputs at full segments, so dense is the same work).
PEERS = {
    "exp": ("XLA jnp.exp", "def peer(x):\n    return jnp.exp(x)\n"),
    "axpy": ("XLA y + alpha * x", "def peer(x, y):\n    return y + 2.0 * x\n"),
    "softmax": ("XLA jax.nn.softmax", "def peer(x):\n    return jax.nn.softmax(x, axis=-1)\n"),
    "bmm": ("XLA jnp.matmul, HIGHEST", "def peer(a, b):\n    return jnp.matmul(a, b, precision=HIGHEST)\n"),
    "attention": (
        "JAX flash_attention",
        "from jax.experimental.pallas.ops.tpu.flash_attention import flash_attention\n\n"
        "def peer(q, k, v):\n    return flash_attention(q, k, v, sm_scale=1.0 / math.sqrt(q.shape[-1]))\n",
    ),
    "gdpa": (
        "XLA jnp (dense, full segments)",
        "def peer(q, k, v, q_offsets):\n"
        "    b, skv, h, d = k.shape\n"
        "    q = q.reshape(b, -1, h, d)\n"
        "    s = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)\n"
        "    p = _fast_gelu(s).astype(jnp.bfloat16)\n"
        "    out = jnp.einsum('bhqk,bkhd->bqhd', p, v, preferred_element_type=jnp.float32)\n"
        "    return out.astype(jnp.bfloat16).reshape(-1, h, d)\n",
    ),
    "gdpa_jagged": (
        "XLA jnp (dense, full segments)",
        "def peer(q, k, v, q_offsets, kv_offsets):\n"
        "    b = q_offsets.shape[0] - 1\n"
        "    h, d = q.shape[1:]\n"
        "    q, k, v = (x.reshape(b, -1, h, d) for x in (q, k, v))\n"
        "    s = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)\n"
        "    p = _fast_gelu(s).astype(jnp.bfloat16)\n"
        "    out = jnp.einsum('bhqk,bkhd->bqhd', p, v, preferred_element_type=jnp.float32)\n"
        "    return out.astype(jnp.bfloat16).reshape(-1, h, d)\n",
    ),
    "paged_attention": (
        "JAX paged_attention",
        "from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention\n\n"
        "def peer(q, k_pages, v_pages, lengths, page_indices):\n"
        "    return paged_attention(q, k_pages, v_pages, lengths, page_indices, pages_per_compute_block=8)\n",
    ),
    "rmsnorm": (
        "XLA jnp",
        "def peer(x, w):\n"
        "    return x * lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * w\n",
    ),
    "layernorm": (
        "XLA jnp",
        "def peer(x, gamma, beta):\n"
        "    centered = x - jnp.mean(x, axis=-1, keepdims=True)\n"
        "    variance = jnp.mean(centered * centered, axis=-1, keepdims=True)\n"
        "    return centered * lax.rsqrt(variance + 1e-5) * gamma + beta\n",
    ),
    "matmul_bias_gelu": (
        "XLA jnp.dot (bf16, f32 result) + gelu",
        "def peer(a, b, bias):\n"
        "    return jax.nn.gelu(jnp.dot(a, b, preferred_element_type=jnp.float32) + bias, approximate=True)\n",
    ),
    "causal_attention": (
        "JAX flash_attention, causal",
        "from jax.experimental.pallas.ops.tpu.flash_attention import flash_attention\n\n"
        "def peer(q, k, v):\n"
        "    return flash_attention(q, k, v, causal=True, sm_scale=1.0 / math.sqrt(q.shape[-1]))\n",
    ),
    "hstu": (
        "XLA jnp (dense, full segments)",
        "def peer(q, k, v, seq_offsets):\n"
        "    b = seq_offsets.shape[0] - 1\n"
        "    h, d = q.shape[1:]\n"
        "    q, k, v = (x.reshape(b, -1, h, d) for x in (q, k, v))\n"
        "    n = q.shape[1]  # max_seq_len: every segment full\n"
        "    s = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)\n"
        "    causal = lax.broadcasted_iota(jnp.int32, (n, n), 1) <= lax.broadcasted_iota(jnp.int32, (n, n), 0)\n"
        "    p = jnp.where(causal, jax.nn.silu(0.125 * s) / n, 0).astype(jnp.bfloat16)\n"
        "    out = jnp.einsum('bhqk,bkhd->bqhd', p, v, preferred_element_type=jnp.float32)\n"
        "    return out.astype(jnp.bfloat16).reshape(-1, h, d)\n",
    ),
    "segment_sum": (
        "XLA jnp.sum (dense, full segments)",
        "def peer(x, offsets):\n"
        "    b = offsets.shape[0] - 1\n"
        "    return x.reshape(b, -1, x.shape[-1]).sum(axis=1)\n",
    ),
    "segment_mean": (
        "XLA jnp.mean (dense, full segments)",
        "def peer(x, offsets):\n"
        "    b = offsets.shape[0] - 1\n"
        "    return x.reshape(b, -1, x.shape[-1]).mean(axis=1)\n",
    ),
    "jagged_softmax": (
        "XLA jax.nn.softmax (dense, full segments)",
        "def peer(x, offsets):\n"
        "    b = offsets.shape[0] - 1\n"
        "    return jax.nn.softmax(x.reshape(b, -1, x.shape[-1]), axis=1).reshape(x.shape)\n",
    ),
    # Tiles of 128 x 128 x 128 (m, k, n): gmm's default, and the generated kernel's blocks, so
    # the two tile alike. (At 512 x 1024 x 1024, gmm's estimate on v6e was about 10x fewer cycles.)
    "grouped_gemm": (
        "JAX megablox gmm",
        "from jax.experimental.pallas.ops.tpu.megablox import gmm\n\n"
        "def peer(lhs, rhs, group_offsets):\n"
        "    group_sizes = jnp.diff(group_offsets)\n"
        "    return gmm(lhs, rhs, group_sizes, preferred_element_type=jnp.float32, tiling=(128, 128, 128))\n",
    ),
    # JAX's kernel reads K and V from one cache, [pages, page_size, 2 * kvh, d], K at even
    # heads and V at odd: it is given the cache in that layout (PEER_LAYOUTS). Its block
    # sizes are named: off a TPU it cannot look up its tuned table (it asks the default
    # device, the CPU here). 16 pages and 32 query rows per block are that table's choice
    # for these heads at its longest tuned context (256 positions), on v5e and v6e alike.
    "ragged_paged_attention": (
        "JAX ragged_paged_attention",
        "from jax.experimental.pallas.ops.tpu.ragged_paged_attention import ragged_paged_attention\n\n"
        "def peer(q, kv_pages, kv_lens, page_indices, cu_q_lens):\n"
        "    num_seqs = jnp.array([kv_lens.shape[0]], jnp.int32)\n"
        "    return ragged_paged_attention(q, kv_pages, kv_lens, page_indices, cu_q_lens, num_seqs,\n"
        "                                  sm_scale=1.0 / math.sqrt(q.shape[-1]),\n"
        "                                  num_kv_pages_per_block=16, num_queries_per_block=32)\n",
    ),
}

# Peers whose own loops run to lengths known only at run time, as the generated kernels' do
# (data_dependent_note): the compiler guesses their trip counts too.
PEER_NOTES = {
    "paged_attention": "JAX's paged_attention, the peer, runs its K/V loop (lax.fori_loop) to each sequence's "
                       "length too, so both sides' cycles rest on the compiler's guess",
    "ragged_paged_attention": "JAX's ragged_paged_attention, the peer, walks sequences and K/V blocks in "
                              "lax.while_loops bounded by cu_q_lens and kv_lens, so both sides' cycles rest on the "
                              "compiler's guess",
    "grouped_gemm": "megablox gmm, the peer, sizes its grid by the number of active row tiles, computed from "
                    "group_sizes at run time, so both sides' cycles rest on the compiler's guess",
}

# The goal for each spec's ratio, by its peer: at most 1.0x a hand-written JAX kernel, 1.2x
# XLA where the work is matmuls, 1.1x XLA for elementwise and normalization work.
GOALS = {"JAX kernel": 1.0, "XLA matmul": 1.2, "XLA elementwise/normalization": 1.1}
PEER_KIND = {
    "attention": "JAX kernel", "causal_attention": "JAX kernel", "paged_attention": "JAX kernel",
    "ragged_paged_attention": "JAX kernel", "grouped_gemm": "JAX kernel",
    "bmm": "XLA matmul", "matmul_bias_gelu": "XLA matmul", "gdpa": "XLA matmul",
    "gdpa_jagged": "XLA matmul", "hstu": "XLA matmul",
    "exp": "XLA elementwise/normalization", "axpy": "XLA elementwise/normalization",
    "softmax": "XLA elementwise/normalization", "rmsnorm": "XLA elementwise/normalization",
    "layernorm": "XLA elementwise/normalization", "segment_sum": "XLA elementwise/normalization",
    "segment_mean": "XLA elementwise/normalization", "jagged_softmax": "XLA elementwise/normalization",
}


def _rpa_cache_args(args):
    """ragged_paged_attention's arguments as JAX's kernel takes them: one K/V cache."""
    q, (k_shape, dtype), _, *rest = args
    kvh, num_pages, page_size, d = k_shape
    return [q, ((num_pages, page_size, 2 * kvh, d), dtype), *rest]


# Peers whose kernel takes a tensor in another layout than the generated one: the peer is
# given it in its own layout (a system using that kernel keeps its data so), and the
# conversion from the generated layout is compiled and profiled on its own, as the cost a
# caller holding the generated layout would add per call. name -> (peer's arguments from the
# generated ones, the conversion's source defining `peer` on the generated arguments, what
# it does).
PEER_LAYOUTS = {
    "ragged_paged_attention": (
        _rpa_cache_args,
        "def peer(q, k_pages, v_pages, kv_lens, page_indices, cu_q_lens):\n"
        "    kvh, num_pages, page_size, d = k_pages.shape\n"
        "    kv = jnp.stack([k_pages, v_pages], axis=1)  # [kvh, 2, num_pages, page_size, d]\n"
        "    return kv.transpose(2, 3, 0, 1, 4).reshape(num_pages, page_size, 2 * kvh, d)\n",
        "K/V pages [kvh, num_pages, page_size, d] each, interleaved into one [num_pages, page_size, 2*kvh, d] cache",
    ),
}


_ITEMSIZE = {"bfloat16": 2, "float32": 4, "int32": 4}


def _fmt(n) -> str:
    return "-" if n is None else f"{n:,}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", nargs="+", default=sorted(CLOCK_HZ), choices=sorted(CLOCK_HZ))
    parser.add_argument("--specs", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--python", default=None, help="interpreter whose jax and libtpu compile, for every chip")
    parser.add_argument("--v7x-python", default=None, help="interpreter with jax[tpu]==0.12.0, for v7x only")
    return measure_and_report(parser.parse_args(), Run(), measure, report)


def measure_and_report(args, run, measure, report) -> int:
    """Run `measure`, then print `report`; a stopped run (SIGTERM, Ctrl-C) still prints
    the rows it measured."""
    started = time.perf_counter()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        measure(args, started, run)
    except KeyboardInterrupt:
        print("stopped: the tables have the rows measured so far", file=sys.stderr)
    print(report(args, started, run))
    return 0


@dataclass
class Run:
    """What a run measured: the table's rows and what the report says about them."""

    # (spec, chip, case, peer label, generated kernel's Compiled, peer's Compiled)
    rows: list = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # spec -> why its estimate does not track it
    versions: set[str] = field(default_factory=set)
    conversions: dict = field(default_factory=dict)  # (spec, chip) -> (conversion's Compiled, bytes it moves)
    two_pass: list[str] = field(default_factory=list)  # "label on chip (why)", profiled in two passes


def profile(kernel: Kernel, chip: str, python: str | None) -> tuple[Compiled, str]:
    """profile_kernel's result, and why it took two passes ('' if it did not).

    libtpu 0.0.50.1 aborts on some programs (megablox gmm's) with both of its dumps on
    ("Check failed: it != hlo_deduplication_map.end()" in llo_dumper), yet writes each dump
    alone: where the profiler aborted, the program is compiled twice more, with one dump on
    each time, and the two are read together.
    """
    result = profile_kernel(kernel, chip, python=python)
    if not (result.ok and result.profile_error):
        return result, ""
    with tempfile.TemporaryDirectory(prefix="codegen-tpu-") as scratch:
        profile_dir, dump_dir = Path(scratch, "profile"), Path(scratch, "dump")
        try:
            for flags in (f"--xla_jf_dump_static_llo_profile_to={profile_dir}", f"--xla_jf_dump_to={dump_dir}"):
                (again,) = _run_child([asdict(kernel)], chip, python, flags=flags, timeout=1800)
                if not again.ok:
                    return result, ""
        except ChildCrashed:
            return result, ""
        read_profile(again, profile_dir, dump_dir)
    if again.estimated_cycles is None:
        return result, ""
    again.seconds = result.seconds
    return again, result.profile_error


# Rules switched for a spec here, and why: its estimate could not be had otherwise.
RULE_SWITCHES = {
    # At 768 segments the real-tiles map has 12,288 visits, and libtpu 0.0.50.1's profiler
    # grows past 10 GiB on the kernel and is killed. At full segments the per-segment grid
    # launches the same tiles, and it profiles.
    "gdpa": ({"real_tiles_only": False}, "built with real_tiles_only off: with the rule, libtpu's profiler "
             "ran out of memory on the kernel's 12,288-visit grid; at full segments both grids launch the same tiles"),
}


def measure(args, started, run: Run) -> None:
    for name in args.specs:
        peer_label, peer_source = PEERS[name]
        for chip in args.chips:
            # Built for the chip: its default blocks are the spec's tune: entry for it, if any.
            switches, why = RULE_SWITCHES.get(name, (None, ""))
            built = build_source(ROOT / "specs" / f"{name}.yaml", chip=chip, rules=switches)
            case = case_from_shapes(built.plan, SHAPES[name], "benchmark")
            kernel = kernel_to_compile(built, case)
            compiles = [("generated", kernel)]
            if name in PEER_LAYOUTS:
                peer_args, conversion_source, _ = PEER_LAYOUTS[name]
                compiles.append(("peer", Kernel(f"{name} peer", _HEADER + peer_source, "peer", peer_args(kernel.args), {})))
                compiles.append(("conversion", Kernel(f"{name} peer's layout conversion", _HEADER + conversion_source,
                                                      "peer", kernel.args, {})))
            else:
                # Given up as the kernel's are: an in-place caller donates what it updates.
                compiles.append(("peer", Kernel(f"{name} peer", _HEADER + peer_source, "peer", kernel.args, {}, kernel.donate)))
            note = data_dependent_note(built.plan)
            if note:
                run.notes[name] = note + (f". {PEER_NOTES[name]}" if name in PEER_NOTES else "") + (f". {why.capitalize()}" if why else "")
            python = (args.v7x_python if chip == "v7x" else None) or args.python
            measured = {}
            for who, k in compiles:
                print(f"[{time.perf_counter() - started:6.0f}s] {name} on {chip}: {who} ...", file=sys.stderr, flush=True)
                measured[who], two_pass = profile(k, chip, python)
                r = measured[who]
                if two_pass:
                    run.two_pass.append(f"{k.label} on {chip} ({two_pass.removeprefix('the profiler of ')[:160]})")
                if r.libtpu_version:  # a compiler that crashed said nothing of itself
                    run.versions.add(f"jax {r.jax_version} / libtpu {r.libtpu_version}" + (" (v7x)" if chip == "v7x" else ""))
                print(f"         compiled={r.ok} in {r.seconds:.1f}s, cycles={_fmt(r.estimated_cycles)}"
                      f"{' (two passes)' if two_pass else ''}"
                      f"{' ' + r.profile_error[:120] if r.profile_error else ''}{' ' + r.error[:200] if r.error else ''}",
                      file=sys.stderr, flush=True)
            run.rows.append((name, chip, case, peer_label, measured["generated"], measured["peer"]))
            if "conversion" in measured:
                # The least the conversion moves: each changed argument read once and written once.
                changed = [a for a in compiles[1][1].args if a not in kernel.args]
                moved = 2 * sum(math.prod(shape) * _ITEMSIZE[dtype] for shape, dtype in changed)
                run.conversions[name, chip] = (measured["conversion"], moved)


def report(args, started, run: Run) -> str:
    rows, notes, versions, conversions = run.rows, run.notes, run.versions, run.conversions
    out = ["# Compiler estimates: generated kernels against peers", ""]
    out.append("Command: `python benchmarks/compiler_estimates.py " + " ".join(sys.argv[1:])
               + " > benchmarks/compiler_estimates_results.md`")
    out.append("")
    out.append("Compilers: " + "; ".join(sorted(versions)) + ". Cycles are libtpu's static estimate "
               "(`--xla_jf_dump_static_llo_profile_to`), summed over the program's ops; spills and fills "
               "are instructions in the final bundles (VMEM spills/fills, SMEM spills/fills). Ratio: generated "
               "cycles / peer cycles (below 1 is faster); none where a peer's estimate would run its FLOPs "
               f"faster than {_PEAK_MARGIN:g}x the chip's bf16 peak, which leaves some of its ops uncosted. "
               "TFLOP/s uses the kernel's pl.CostEstimate FLOPs and "
               f"the clock of codegen.estimate ({', '.join(f'{c} {h / 1e9:.2f} GHz' for c, h in CLOCK_HZ.items())}; "
               "derived from the bf16 peak, not published). Each program is a jit that donates the "
               "arguments a kernel updates in place (axpy's y), and so does a peer given the same arguments; without that XLA "
               "copies them before the call, and the copy's cycles would count.")
    out.append("")
    out.append("| spec | shapes | chip | compiles | cycles | spills (V/V/S/S) | scoped VMEM MiB | est. TFLOP/s (% bf16 peak) | peer | peer compiles | peer cycles | ratio |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, chip, case, peer_label, gen, peer in rows:
        def spills(r):
            return "-" if r.vmem_spills is None else f"{r.vmem_spills}/{r.vmem_fills}/{r.smem_spills}/{r.smem_fills}"

        def cycles(r):
            if not r.ok:
                return "compile failed"
            if r.estimated_cycles is not None:
                return _fmt(r.estimated_cycles)
            if r.profile_error:
                return "no estimate (profiler aborted)"
            return "no estimate of the kernel (0 cycles)" if r.profile_gap else "no estimate in the profile"

        ratio = "-" if _ratio(chip, gen, peer) is None else f"{_ratio(chip, gen, peer):.2f}x"
        if _beyond_peak(chip, peer):
            ratio = f"- (peer at {_beyond_peak(chip, peer):.0f}x peak)"
        rate = "-"
        if gen.estimated_cycles and gen.flops:
            tflops = gen.flops / (gen.estimated_cycles / CLOCK_HZ[chip]) / 1e12
            rate = f"{tflops:.1f} ({100 * tflops * 1e12 / CHIPS[chip].bf16_flops_per_s:.0f}%)"
        vmem = "-" if gen.scoped_vmem_bytes is None else f"{gen.scoped_vmem_bytes / 2**20:.2f}"
        out.append(f"| {name} | {shapes_text(case)} | {chip} | {'yes' if gen.ok else 'NO'} | {cycles(gen)} | {spills(gen)} | "
                   f"{vmem} | {rate} | {peer_label} | {'yes' if peer.ok else 'NO'} | {cycles(peer)} | {ratio} |")
    out.append("")
    out += _against_goals(rows, notes)
    out += _beyond_hbm(rows)
    out += _layout_conversions(rows, conversions)
    gdpa_v7x = [gen for name, chip, _, _, gen, _ in rows if name == "gdpa" and chip == "v7x"]
    if gdpa_v7x and gdpa_v7x[0].estimated_cycles and gdpa_v7x[0].flops:
        gen = gdpa_v7x[0]
        seconds = gen.estimated_cycles / CLOCK_HZ["v7x"]
        out.append("## GDPA at the seeds' scale on v7x")
        out.append("")
        out.append(f"B=768 segments, max 4096 query rows each (all full here: the compiler sees shapes, not lengths), "
                   f"K/V 256 rows, 8 heads, d=128, bf16: {gen.flops / 1e12:.2f} TFLOP by the kernel's cost estimate, "
                   f"{gen.estimated_cycles:,} estimated cycles = {seconds * 1e3:.2f} ms at "
                   f"{CLOCK_HZ['v7x'] / 1e9:.2f} GHz, so {gen.flops / seconds / 1e12:.0f} TFLOP/s against the "
                   f"{CHIPS['v7x'].bf16_flops_per_s / 1e12:g} TFLOP/s bf16 roofline of one v7x TensorCore "
                   f"({100 * gen.flops / seconds / CHIPS['v7x'].bf16_flops_per_s:.0f}%). The seeds measured 283 TFLOP/s "
                   "for their GDPA kernel at B=768, q 4096 (seed 001), on their own shapes and hardware."
                   + (" Above the roofline, which no kernel reaches: the compiler's estimate does not cover every "
                      "step of this kernel's loop (see below), so the figure does not measure the kernel."
                      if gen.flops / seconds > CHIPS["v7x"].bf16_flops_per_s else ""))
        out.append("")
    if notes:
        out.append("## Where the estimate does not track the kernel")
        out.append("")
        for name, note in notes.items():
            out.append(f"- {name}: {note}. The interpret-mode HBM<->VMEM traffic in "
                       "benchmarks/dma_traffic_results.md measures such kernels instead.")
        out.append("")
    failures = [(n, c, r) for n, c, _, _, g, p in rows for r in (g, p, conversions.get((n, c), (None,))[0])
                if r is not None and (not r.ok or r.profile_error or r.profile_gap)]
    if failures:
        out.append("## Compile and profile failures")
        out.append("")
        for name, chip, r in failures:
            why = r.error.splitlines()[0] if not r.ok else r.profile_error or r.profile_gap
            out.append(f"- {r.label} on {chip}: {why[:300]}")
        out.append("")
    if run.two_pass:
        out.append("## Profiled in two passes")
        out.append("")
        out.append("libtpu's profiler aborted on these with both of its dumps on, but wrote each dump alone: each "
                   "was compiled once with the static profile on and once with the bundle dump on, and the two "
                   "read together. " + "; ".join(run.two_pass) + ".")
        out.append("")
    out.append(f"Total time: {time.perf_counter() - started:.0f}s on this machine (2 cores, shared).")
    return "\n".join(out)


# A peer estimate above this multiple of the chip's bf16 peak FLOP rate leaves ops uncosted
# rather than being off by the clock's uncertainty (XLA's matmuls come to about 1.4x on v6e and
# v7x at the clock of codegen.estimate): it gives no ratio.
_PEAK_MARGIN = 2.0


def _beyond_peak(chip, r) -> float | None:
    """The multiple of the chip's bf16 peak that `r`'s FLOPs in its estimated cycles make, if above _PEAK_MARGIN."""
    if not (r.flops and r.estimated_cycles):
        return None
    multiple = r.flops / (r.estimated_cycles / CLOCK_HZ[chip]) / CHIPS[chip].bf16_flops_per_s
    return multiple if multiple > _PEAK_MARGIN else None


def _ratio(chip, gen, peer) -> float | None:
    """Generated cycles over the peer's, where both have an estimate and the peer's is whole."""
    if not (gen.estimated_cycles and peer.estimated_cycles) or _beyond_peak(chip, peer):
        return None
    return gen.estimated_cycles / peer.estimated_cycles


def _against_goals(rows, notes) -> list[str]:
    """Each row's ratio against the goal for its peer's kind, and the rows that meet or miss it."""
    if not rows:
        return []
    chips = list(dict.fromkeys(chip for _, chip, *_ in rows))
    by_spec: dict[str, dict[str, float | None]] = {}
    for name, chip, _, _, gen, peer in rows:
        by_spec.setdefault(name, {})[chip] = _ratio(chip, gen, peer)
    out = ["## Against the goals", ""]
    out.append("Goal: a ratio of at most " + ", ".join(f"{goal:.1f}x against {kind} peers" for kind, goal in GOALS.items())
               + ". Specs marked * have cycles the compiler cannot tie to the kernel's data-dependent loop (see "
               "below), so their verdict is the estimate's, not the kernel's.")
    out.append("")
    out.append("| spec | peer kind | goal | " + " | ".join(chips) + " |")
    out.append("|---|---|---|" + "---|" * len(chips))
    met, missed, unmeasured = [], [], []
    for name, ratios in by_spec.items():
        kind = PEER_KIND[name]
        goal = GOALS[kind]
        cells = []
        for chip in chips:
            if chip not in ratios:
                cells.append("")
                continue
            ratio = ratios[chip]
            label = f"{name}{'*' if name in notes else ''} on {chip}"
            if ratio is None:
                cells.append("no ratio")
                unmeasured.append(label)
            elif ratio <= goal:
                cells.append(f"{ratio:.2f}x meets")
                met.append(f"{label} ({ratio:.2f}x)")
            else:
                cells.append(f"{ratio:.2f}x misses")
                missed.append(f"{label} ({ratio:.2f}x)")
        out.append(f"| {name}{'*' if name in notes else ''} | {kind} | <= {goal:.1f}x | " + " | ".join(cells) + " |")
    out.append("")
    measured = len(met) + len(missed)
    out.append(f"- Meet their goal: {len(met)} of {measured} rows with a ratio"
               + (f": {', '.join(met)}." if met else "."))
    out.append(f"- Miss it: {len(missed)} of {measured}" + (f": {', '.join(missed)}." if missed else "."))
    if unmeasured:
        out.append(f"- No ratio (a compile or an estimate missing, or a peer's estimate beyond {_PEAK_MARGIN:g}x its "
                   f"chip's peak, see the table): {', '.join(unmeasured)}.")
    out.append("")
    return out


def _hbm_multiple(chip, r) -> float | None:
    """The multiple of the chip's HBM bandwidth at which `r`'s estimated cycles would move its bytes."""
    if not (r.bytes_accessed and r.estimated_cycles):
        return None
    return r.bytes_accessed / (r.estimated_cycles / CLOCK_HZ[chip]) / CHIPS[chip].hbm_bytes_per_s


def _beyond_hbm(rows) -> list[str]:
    """Rows whose peer's estimate is faster than its HBM traffic allows: there the estimate
    does not charge the traffic, and a ratio compares instruction schedules alone."""
    table = []
    for name, chip, _, _, gen, peer in rows:
        peer_multiple = _hbm_multiple(chip, peer)
        if peer_multiple is None or peer_multiple <= 1 or _ratio(chip, gen, peer) is None:
            continue
        gen_multiple = _hbm_multiple(chip, gen)
        table.append(f"| {name} | {chip} | {peer.bytes_accessed / 2**20:,.0f} | {peer_multiple:.1f}x | "
                     f"{'-' if gen_multiple is None else f'{gen.bytes_accessed / 2**20:,.0f}'} | {'-' if gen_multiple is None else f'{gen_multiple:.1f}x'} | "
                     f"{_ratio(chip, gen, peer):.2f}x |")
    if not table:
        return []
    out = ["## Where the estimate does not charge HBM traffic", ""]
    out.append("A program's bytes (XLA's cost analysis for a peer, the kernel's pl.CostEstimate for a generated "
               "kernel: every input read once, every output written once) over its estimated time, as a multiple of "
               "the chip's HBM bandwidth (codegen.chips). Above 1x, the estimate has the program finish before its "
               "bytes could have moved: it prices the instructions, not the traffic that bounds a memory-bound "
               "kernel on a TPU. For these rows the ratio compares instruction schedules; the traffic itself is "
               "compared in benchmarks/dma_traffic_results.md. Rows listed are those whose peer is above 1x.")
    out.append("")
    out.append("| spec | chip | peer MiB | peer, x HBM bandwidth | generated MiB | generated, x HBM bandwidth | ratio |")
    out.append("|---|---|---|---|---|---|---|")
    return out + table + [""]


def _layout_conversions(rows, conversions) -> list[str]:
    """For peers given their own layout: what converting to it costs, and the ratio had the peer paid it."""
    if not conversions:
        return []
    out = ["## Peers given their own layout", ""]
    for name in dict.fromkeys(name for name, _ in conversions):
        _, _, what = PEER_LAYOUTS[name]
        out.append(f"{name}: JAX's kernel takes another layout ({what}). The peer is given its input in that layout, "
                   "so its cycles are its kernel's alone (one jit would otherwise fold the conversion into them). "
                   "The conversion from the generated kernel's layout, which a caller keeping that layout would add "
                   "per call, was compiled and profiled on its own; it is data movement (copies by DMA), which "
                   "the compiler's static profile costs at 0 cycles, so where it gives none the conversion is "
                   "costed here at the HBM roofline instead: each converted byte read once and written once, at "
                   "the chip's HBM bandwidth (codegen.chips) and the clock above.")
        out.append("")
        for row_name, chip, _, _, gen, peer in rows:
            if row_name != name or (name, chip) not in conversions:
                continue
            conversion, moved = conversions[name, chip]
            if conversion.estimated_cycles:
                cost, how = conversion.estimated_cycles, "the compiler's estimate"
            else:
                cost = round(moved / CHIPS[chip].hbm_bytes_per_s * CLOCK_HZ[chip])
                how = f"{moved / 2**20:,.0f} MiB at the HBM roofline"
            line = f"- {chip}: conversion {cost:,} cycles ({how})"
            if peer.estimated_cycles and gen.estimated_cycles:
                line += (f", {cost / peer.estimated_cycles:.2f}x the peer's cycles; the ratio against peer + "
                         f"conversion would be {gen.estimated_cycles / (peer.estimated_cycles + cost):.2f}x "
                         f"(against the peer alone, {gen.estimated_cycles / peer.estimated_cycles:.2f}x)")
            out.append(line + ".")
        out.append("")
    return out

if __name__ == "__main__":
    sys.exit(main())
