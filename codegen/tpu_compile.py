"""Compile generated kernels with the real TPU compiler, on a machine without a TPU.

libtpu compiles for a TPU topology that has no TPU attached: the devices of
`jax.experimental.topologies.get_topology_desc` stand for the chip, and a jit lowered
and compiled with arguments placed on one of them runs Mosaic and the XLA TPU
backend. With `--xla_jf_dump_static_llo_profile_to` the compiler also writes its
static estimate of each op's cycles, and with `--xla_jf_dump_to` the bundle
profile that counts spills and fills.

Every compile runs in a child process, for three reasons: libtpu reads its flags
(LIBTPU_INIT_ARGS) once per process, so each profiled kernel needs a fresh one; the
profiler of some libtpu releases aborts the whole process on some kernels; and the
caller, a test run say, keeps its own JAX on the CPU backend. Unprofiled compiles
are batched: one child compiles a list of kernels.

The child is this module: `python -m codegen.tpu_compile JOB.json RESULT.json`. It
needs jax and libtpu, not the rest of the generator, and may run under another
interpreter (`python=`): a Python 3.12 environment with jax 0.12 brings a libtpu
whose profiler handles v7x.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# A 1x1 layout is refused; the kernels here use one device of the smallest slice.
TOPOLOGY = {"v5e": "v5e:2x2", "v6e": "v6e:2x2", "v7x": "tpu7x:2x2x1"}

# libtpu's own environment for a machine with no TPU: no metadata server to ask
# (without this each start waits on it), and JAX itself stays on the CPU. libtpu
# also takes a machine-wide lock file, which makes a second process fail while one
# holds it; with no TPU to share, compiles may run side by side.
CHILD_ENVIRONMENT = {"JAX_PLATFORMS": "cpu", "TPU_SKIP_MDS_QUERY": "1", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def libtpu_installed(python: str | None = None) -> bool:
    """Whether the TPU compiler is importable here (or by the interpreter `python`)."""
    # A virtual environment's python links to the same binary as the one it was made
    # from, with other packages: only the same path is the same interpreter.
    if python is None or os.path.abspath(python) == os.path.abspath(sys.executable):
        return importlib.util.find_spec("libtpu") is not None
    probe = subprocess.run([python, "-c", "import importlib.util as u, sys; sys.exit(u.find_spec('libtpu') is None)"],
                           capture_output=True)
    return probe.returncode == 0


@dataclass
class Kernel:
    """One call to compile: a module's source, its entry point, and the arguments.

    `args` are (shape, dtype name) per positional argument; `kwargs` are the entry
    point's static keywords (axis sizes, maxima, block sizes). `donate` lists the
    positional arguments the caller gives up, as one updating a tensor in place does:
    without that, XLA copies an argument the kernel aliases to its output before the
    call, and the copy's cycles would be counted as the kernel's.
    """

    label: str
    source: str
    entry: str
    args: list[tuple[tuple[int, ...], str]]
    kwargs: dict[str, int] = field(default_factory=dict)
    donate: list[int] = field(default_factory=list)


@dataclass
class Compiled:
    label: str
    chip: str
    ok: bool
    error: str = ""
    seconds: float = 0.0
    # From the compiler's dumps, when profiled; None where the dump was not there.
    estimated_cycles: int | None = None
    vmem_spills: int | None = None
    vmem_fills: int | None = None
    smem_spills: int | None = None
    smem_fills: int | None = None
    scoped_vmem_bytes: int | None = None
    # The work done: the kernels' own pl.CostEstimate where the program has Pallas
    # kernels, else XLA's cost analysis.
    flops: int | None = None
    transcendentals: int | None = None
    bytes_accessed: int | None = None
    cost_source: str = ""
    profile_error: str = ""
    # Why the profile, written, holds no estimate of the program (a kernel costed at 0 cycles).
    profile_gap: str = ""
    jax_version: str = ""
    libtpu_version: str = ""


class CompilerUnavailable(RuntimeError):
    """libtpu is not installed where the compile was asked to run."""


def compile_kernels(kernels: list[Kernel], chip: str, python: str | None = None, timeout: float = 1800) -> list[Compiled]:
    """Compile each kernel for `chip` in one child process; failures are per kernel."""
    return _run_child([asdict(k) for k in kernels], chip, python, flags="", timeout=timeout)


def profile_kernel(kernel: Kernel, chip: str, python: str | None = None, timeout: float = 1800) -> Compiled:
    """Compile one kernel with the compiler's cost dumps on, in a fresh child, and read them.

    If the profiler aborts the child, the kernel is compiled again without it, so the
    result still says whether it compiles, with the abort in `profile_error`; if the
    compiler aborts that child too, the result is a failure with the compiler's last words.
    """
    with tempfile.TemporaryDirectory(prefix="codegen-tpu-") as scratch:
        profile_dir, dump_dir = Path(scratch, "profile"), Path(scratch, "dump")
        flags = f"--xla_jf_dump_static_llo_profile_to={profile_dir} --xla_jf_dump_to={dump_dir}"
        try:
            (result,) = _run_child([asdict(kernel)], chip, python, flags=flags, timeout=timeout)
        except ChildCrashed as crash:
            try:
                (result,) = _run_child([asdict(kernel)], chip, python, flags="", timeout=timeout)
            except ChildCrashed as again:  # the compiler itself aborts on this kernel
                return Compiled(kernel.label, chip, ok=False, error=f"the compiler crashed: {again.reason}")
            result.profile_error = f"the profiler of libtpu {result.libtpu_version} aborted: {crash.reason}"
            return result
        if result.ok:
            read_profile(result, profile_dir, dump_dir)
        return result


class ChildCrashed(RuntimeError):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _run_child(jobs: list[dict], chip: str, python: str | None, flags: str, timeout: float) -> list[Compiled]:
    python = python or sys.executable
    if not libtpu_installed(python):
        raise CompilerUnavailable(
            f"the TPU compiler (libtpu) is not installed for {python}: pip install 'tpu-codegen[tpu]'"
        )
    env = dict(os.environ) | CHILD_ENVIRONMENT | {"LIBTPU_INIT_ARGS": flags}
    # The child imports this module by name: make sure it finds this checkout's copy.
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    with tempfile.TemporaryDirectory(prefix="codegen-job-") as scratch:
        job_file, result_file = Path(scratch, "job.json"), Path(scratch, "result.json")
        job_file.write_text(json.dumps({"chip": chip, "kernels": jobs}), encoding="utf-8")
        child = subprocess.run([python, "-m", "codegen.tpu_compile", str(job_file), str(result_file)],
                               env=env, capture_output=True, text=True, timeout=timeout)
        if not result_file.exists():
            raise ChildCrashed(_crash_reason(child.stderr, child.returncode))
        results = json.loads(result_file.read_text(encoding="utf-8"))
    return [Compiled(**r) for r in results]


# glog's fatal line: F, the month and day, the time, the thread, then the message.
_FATAL = re.compile(r"^F\d{4} [\d:.]+\s+\d+ (.*)$")


def _crash_reason(stderr: str, returncode: int) -> str:
    """The line that says why libtpu stopped the process, else the last line it wrote."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        fatal = _FATAL.match(line)
        if fatal:
            return fatal.group(1)[-300:]
    for line in lines:
        if "Check failed" in line or "Check failure" in line:
            return line[-300:]
    tail = lines[-1][-300:] if lines else "no output"
    return f"exit status {returncode}: {tail}"


# --- reading the compiler's dumps ---------------------------------------------------

_CYCLES = re.compile(r"estimated_cycles:\s*(\d+)")
_KERNEL = 'custom_call_target: "tpu_custom_call"'  # a Pallas kernel's op in the profile
_COUNT = re.compile(r"-\s*(VMEM|SMEM)_(SPILL|FILL)_COUNT:\s*\((\d+)/\d+\)")
_SCOPED = re.compile(r'"used_scoped_memory_configs":\[(.*?)\]')
_SCOPED_SIZE = re.compile(r'"memory_space":"1"[^}]*"size":"(\d+)"')


def read_profile(result: Compiled, profile_dir: Path, dump_dir: Path) -> None:
    """Fill in cycles, spills and scoped VMEM from the dumps of one compiled program.

    Cycles are summed over the program's ops (one op for a kernel; several fusions for
    an XLA peer). Spill and fill counts are static: instructions in the final
    bundles, not executions. Scoped VMEM is the most any one op reserved.
    """
    cycles, unestimated = [], []
    for path in sorted(profile_dir.glob("*static_llo_profile.textproto")):
        text = path.read_text(errors="replace")
        op = [int(m) for m in _CYCLES.findall(text)]
        cycles += op
        if _KERNEL in text and not any(op):
            unestimated.append(path.name.removesuffix("_static_llo_profile.textproto").split("_TPU")[0])
    if unestimated:
        # The program's other ops (XLA's, around the kernel) would pass for its cost.
        result.profile_gap = (f"the compiler's profile costs the Pallas kernel ({', '.join(unestimated)}) at 0 cycles: "
                              "it has no estimate of it")
    elif any(cycles):  # no estimate at all (none written, or all zero) is not zero cycles
        result.estimated_cycles = sum(cycles)
    bundles = sorted(dump_dir.glob("*hlo-static-bundle-profile.txt"))
    if bundles:
        counts = {("VMEM", "SPILL"): 0, ("VMEM", "FILL"): 0, ("SMEM", "SPILL"): 0, ("SMEM", "FILL"): 0}
        scoped = 0
        for path in bundles:
            text = path.read_text(errors="replace")
            for memory, kind, n in _COUNT.findall(text):
                counts[memory, kind] += int(n)
            for configs in _SCOPED.findall(text):
                scoped = max([scoped] + [int(s) for s in _SCOPED_SIZE.findall(configs)])
        result.vmem_spills, result.vmem_fills = counts["VMEM", "SPILL"], counts["VMEM", "FILL"]
        result.smem_spills, result.smem_fills = counts["SMEM", "SPILL"], counts["SMEM", "FILL"]
        result.scoped_vmem_bytes = scoped


# --- the child --------------------------------------------------------------------


def _compile_in_this_process(job: dict, device) -> dict:
    import jax
    from jax.sharding import SingleDeviceSharding

    result = {"label": job["label"], "chip": "", "ok": False}
    started = time.perf_counter()
    try:
        namespace: dict = {"__name__": f"codegen_compiled_{job['entry']}"}
        exec(compile(job["source"], f"<generated {job['entry']}>", "exec"), namespace)
        fn = namespace[job["entry"]]
        sharding = SingleDeviceSharding(device)
        args = [jax.ShapeDtypeStruct(tuple(shape), jax.numpy.dtype(dtype), sharding=sharding) for shape, dtype in job["args"]]
        # emit_pipeline asks the default device which TPU it is tracing for.
        with jax.default_device(device):
            call = jax.jit(lambda *a: fn(*a, **job["kwargs"]), donate_argnums=tuple(job.get("donate", ())))
            traced = call.trace(*args)
            compiled = traced.lower(lowering_platforms=("tpu",)).compile()
        result["ok"] = True
        result.update(_work(traced.jaxpr, compiled))
    except Exception as err:  # the compiler's message is the result
        result["error"] = f"{type(err).__name__}: {err}"
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def _pallas_cost_estimates(jaxpr):
    """The cost_estimate of every pallas_call in `jaxpr`, nested calls included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call" and eqn.params.get("cost_estimate") is not None:
            yield eqn.params["cost_estimate"]
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _pallas_cost_estimates(inner)


def _work(closed_jaxpr, compiled) -> dict:
    estimates = list(_pallas_cost_estimates(closed_jaxpr.jaxpr))
    if estimates:
        return {
            "flops": sum(int(e.flops) for e in estimates),
            "transcendentals": sum(int(e.transcendentals) for e in estimates),
            "bytes_accessed": sum(int(e.bytes_accessed) for e in estimates),
            "cost_source": "the kernel's pl.CostEstimate",
        }
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    if not analysis or not ({"flops", "bytes accessed"} & set(analysis)):  # an op with no FLOPs (exp) has bytes
        return {}
    return {
        "flops": int(analysis.get("flops", 0)),
        "transcendentals": int(analysis.get("transcendentals", 0)),
        "bytes_accessed": int(analysis.get("bytes accessed", 0)),
        "cost_source": "XLA's cost analysis",
    }


def _child_main(job_file: str, result_file: str) -> int:
    from importlib import metadata

    import jax
    from jax.experimental import topologies

    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    chip = job["chip"]
    versions = {"jax_version": jax.__version__, "libtpu_version": metadata.version("libtpu")}
    try:
        device = topologies.get_topology_desc(topology_name=TOPOLOGY[chip], platform="tpu").devices[0]
    except Exception as err:
        results = [{"label": k["label"], "ok": False, "error": f"no {chip} topology: {type(err).__name__}: {err}"} for k in job["kernels"]]
    else:
        results = []
        for kernel in job["kernels"]:
            results.append(_compile_in_this_process(kernel, device))
            print(f"compiled {kernel['label']} for {chip}: {'ok' if results[-1]['ok'] else 'FAILED'} "
                  f"in {results[-1]['seconds']:.1f}s", file=sys.stderr, flush=True)
    for r in results:
        r.update(versions, chip=chip)
    Path(result_file).write_text(json.dumps(results), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(*sys.argv[1:3]))
