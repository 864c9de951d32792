"""The TPU compiler's own estimate of every generated kernel, next to a peer's.

Usage:
  python benchmarks/compiler_estimates.py [--chips v5e v6e v7x] [--python PATH | --v7x-python PATH] \
      > benchmarks/compiler_estimates_results.md

For each spec at the shapes in SHAPES, on each chip, the generated kernel (built for
that chip, so with its tuned default blocks where the spec has them) and a peer are
compiled the same way, each in a fresh child process with libtpu's static profile
on (codegen.tpu_compile.profile_kernel), and their estimated cycles compared. Peers
are JAX's hand-written Pallas kernels where one exists (flash_attention,
paged_attention), else XLA's own jnp implementation, with f32 matmuls at HIGHEST
precision. libtpu 0.0.42 (jax 0.10.2) aborts when profiling v7x kernels and some
emit_pipeline kernels; --python names an interpreter with jax[tpu]==0.12.0 (libtpu
0.0.50.1), which profiles them, for every chip (--v7x-python: for v7x only). Progress
goes to stderr.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from codegen.build import build_source  # noqa: E402
from codegen.chips import CHIPS  # noqa: E402
from codegen.estimate import CLOCK_HZ, case_from_shapes, data_dependent_note, shapes_text  # noqa: E402
from codegen.tpu_compile import Kernel, profile_kernel  # noqa: E402
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
}


def _fmt(n) -> str:
    return "-" if n is None else f"{n:,}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", nargs="+", default=sorted(CLOCK_HZ), choices=sorted(CLOCK_HZ))
    parser.add_argument("--specs", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--python", default=None, help="interpreter whose jax and libtpu compile, for every chip")
    parser.add_argument("--v7x-python", default=None, help="interpreter with jax[tpu]==0.12.0, for v7x only")
    args = parser.parse_args()

    started = time.perf_counter()
    rows, notes, versions = [], {}, set()
    # A stopped run (SIGTERM, Ctrl-C) still prints the rows it measured.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        measure(args, started, rows, notes, versions)
    except KeyboardInterrupt:
        print("stopped: the table has the rows measured so far", file=sys.stderr)
    print(report(args, started, rows, notes, versions))
    return 0


def measure(args, started, rows, notes, versions) -> None:
    for name in args.specs:
        peer_label, peer_source = PEERS[name]
        for chip in args.chips:
            # Built for the chip: its default blocks are the spec's tune: entry for it, if any.
            built = build_source(ROOT / "specs" / f"{name}.yaml", chip=chip)
            case = case_from_shapes(built.plan, SHAPES[name], "benchmark")
            kernel = kernel_to_compile(built, case)
            peer = Kernel(f"{name} peer", _HEADER + peer_source, "peer", kernel.args, {})
            note = data_dependent_note(built.plan)
            if note:
                notes[name] = note
            python = (args.v7x_python if chip == "v7x" else None) or args.python
            measured = {}
            for who, k in (("generated", kernel), ("peer", peer)):
                print(f"[{time.perf_counter() - started:6.0f}s] {name} on {chip}: {who} ...", file=sys.stderr, flush=True)
                measured[who] = profile_kernel(k, chip, python=python)
                r = measured[who]
                versions.add(f"jax {r.jax_version} / libtpu {r.libtpu_version}" + (" (v7x)" if chip == "v7x" else ""))
                print(f"         compiled={r.ok} in {r.seconds:.1f}s, cycles={_fmt(r.estimated_cycles)}"
                      f"{' ' + r.profile_error[:120] if r.profile_error else ''}{' ' + r.error[:200] if r.error else ''}",
                      file=sys.stderr, flush=True)
            rows.append((name, chip, case, peer_label, measured["generated"], measured["peer"]))


def report(args, started, rows, notes, versions) -> str:
    out = ["# Compiler estimates: generated kernels against peers", ""]
    out.append("Command: `python benchmarks/compiler_estimates.py " + " ".join(sys.argv[1:])
               + " > benchmarks/compiler_estimates_results.md`")
    out.append("")
    out.append("Compilers: " + "; ".join(sorted(versions)) + ". Cycles are libtpu's static estimate "
               "(`--xla_jf_dump_static_llo_profile_to`), summed over the program's ops; spills and fills "
               "are instructions in the final bundles (VMEM spills/fills, SMEM spills/fills). Ratio: generated "
               "cycles / peer cycles (below 1 is faster). TFLOP/s uses the kernel's pl.CostEstimate FLOPs and "
               f"the clock of codegen.estimate ({', '.join(f'{c} {h / 1e9:.2f} GHz' for c, h in CLOCK_HZ.items())}; "
               "derived from the bf16 peak, not published).")
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
            return "no estimate (profiler aborted)" if r.profile_error else "no estimate in the profile"

        ratio = (f"{gen.estimated_cycles / peer.estimated_cycles:.2f}x"
                 if gen.estimated_cycles and peer.estimated_cycles else "-")
        rate = "-"
        if gen.estimated_cycles and gen.flops:
            tflops = gen.flops / (gen.estimated_cycles / CLOCK_HZ[chip]) / 1e12
            rate = f"{tflops:.1f} ({100 * tflops * 1e12 / CHIPS[chip].bf16_flops_per_s:.0f}%)"
        vmem = "-" if gen.scoped_vmem_bytes is None else f"{gen.scoped_vmem_bytes / 2**20:.2f}"
        out.append(f"| {name} | {shapes_text(case)} | {chip} | {'yes' if gen.ok else 'NO'} | {cycles(gen)} | {spills(gen)} | "
                   f"{vmem} | {rate} | {peer_label} | {'yes' if peer.ok else 'NO'} | {cycles(peer)} | {ratio} |")
    out.append("")
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
    failures = [(n, c, r) for n, c, _, _, g, p in rows for r in (g, p) if not r.ok or r.profile_error]
    if failures:
        out.append("## Compile and profile failures")
        out.append("")
        for name, chip, r in failures:
            why = r.error.splitlines()[0] if not r.ok else r.profile_error
            out.append(f"- {r.label} on {chip}: {why[:300]}")
        out.append("")
    out.append(f"Total time: {time.perf_counter() - started:.0f}s on this machine (2 cores, shared).")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
