"""The real TPU compiler: every spec compiles for v5e, v6e and v7x; estimates are read.

The compiles need libtpu (`pip install -e '.[tpu]'`, which CI does) and run in child
processes; the tests of the parsing and of the shapes run everywhere.
"""

import re
from pathlib import Path

import pytest

from codegen.build import build_source
from codegen.cli import main
from codegen.errors import SpecError
from codegen.estimate import case_from_shapes
from codegen.tpu_compile import TOPOLOGY, Compiled, libtpu_installed, read_profile

from conftest import SPECS

# a new spec is covered without a change here, and so are the test-only specs beside this file
SPEC_FILES = sorted(SPECS.glob("*.yaml")) + sorted((Path(__file__).parent / "specs").glob("*.yaml"))
CHIPS = sorted(TOPOLOGY)

needs_libtpu = pytest.mark.skipif(not libtpu_installed(), reason="libtpu is not installed: pip install -e '.[tpu]'")


@pytest.fixture(scope="module")
def compiled_at_verify_shapes():
    """{(spec name, chip): [Compiled, ...]}, one child process per chip for all specs."""
    from codegen.tpu_compile import compile_kernels
    from codegen.verify import compile_cases, kernel_to_compile

    built = {path.stem: build_source(path) for path in SPEC_FILES}
    results = {}
    for chip in CHIPS:
        kernels = [(name, kernel_to_compile(b, case)) for name, b in built.items() for case in compile_cases(b)]
        for (name, _), result in zip(kernels, compile_kernels([k for _, k in kernels], chip)):
            results.setdefault((name, chip), []).append(result)
    return results


@needs_libtpu
@pytest.mark.parametrize("chip", CHIPS)
@pytest.mark.parametrize("spec", [p.stem for p in SPEC_FILES])
def test_every_spec_compiles_for_every_chip(compiled_at_verify_shapes, spec, chip):
    results = compiled_at_verify_shapes[spec, chip]
    assert results, "no shapes compiled"
    for result in results:
        assert result.ok, f"{result.label} on {chip}:\n{result.error}"
        assert result.chip == chip


@needs_libtpu
def test_a_compile_failure_carries_the_compilers_message():
    from codegen.tpu_compile import compile_kernels
    from codegen.verify import Case, kernel_to_compile

    built = build_source(SPECS / "exp.yaml")
    # Four 64 MiB windows (input and output, double-buffered) cannot fit 128 MiB of VMEM.
    too_big = kernel_to_compile(built, Case("4096 x 4096 blocks", {"m": 4096, "n": 4096}), {"block_m": 4096, "block_n": 4096})
    (result,) = compile_kernels([too_big], "v5e")
    assert not result.ok
    assert "vmem" in result.error.lower() and "RESOURCE_EXHAUSTED" in result.error


def test_verify_exits_1_and_prints_the_compilers_message(monkeypatch, capsys):
    import codegen.tpu_compile as tpu_compile

    def failing(kernels, chip, python=None, timeout=0):
        return [Compiled(k.label, chip, ok=False, error="JaxRuntimeError: the compiler's own words\nsecond line",
                         jax_version="x", libtpu_version="y") for k in kernels]

    monkeypatch.setattr(tpu_compile, "compile_kernels", failing)
    monkeypatch.setattr(tpu_compile, "libtpu_installed", lambda python=None: True)
    assert main(["verify", str(SPECS / "axpy.yaml"), "--chip", "v6e"]) == 1
    out = capsys.readouterr().out
    assert "verify axpy: passed" in out, "interpret mode and lowering still ran, and passed"
    assert "the compiler's own words" in out and "second line" in out
    assert "compile axpy for v6e: FAILED" in out


def test_verify_reports_a_compiler_crash_without_a_traceback(monkeypatch, capsys):
    import codegen.tpu_compile as tpu_compile

    def crashing(kernels, chip, python=None, timeout=0):
        raise tpu_compile.ChildCrashed("lower_pass_base.cc:60] Check failed: the compiler's own words")

    monkeypatch.setattr(tpu_compile, "compile_kernels", crashing)
    monkeypatch.setattr(tpu_compile, "libtpu_installed", lambda python=None: True)
    assert main(["verify", str(SPECS / "axpy.yaml"), "--chip", "v6e"]) == 1
    captured = capsys.readouterr()
    assert "the compiler crashed: lower_pass_base.cc:60] Check failed: the compiler's own words" in captured.out
    assert "compile axpy for v6e: FAILED" in captured.out and "Traceback" not in captured.out + captured.err


def test_estimate_reports_a_compiler_crash_without_a_traceback(monkeypatch, capsys):
    import codegen.tpu_compile as tpu_compile

    def crashing(jobs, chip, python, flags, timeout):  # with the profiler on and off alike
        raise tpu_compile.ChildCrashed("lower_pass_base.cc:60] Check failed: the compiler's own words")

    monkeypatch.setattr(tpu_compile, "_run_child", crashing)
    assert main(["estimate", str(SPECS / "axpy.yaml"), "--chip", "v6e", "--shape", "m=256", "--shape", "n=256"]) == 1
    captured = capsys.readouterr()
    assert "compile FAILED:\n    the compiler crashed: lower_pass_base.cc:60] Check failed: the compiler's own words" in captured.out
    assert "Traceback" not in captured.out + captured.err


def test_verify_with_a_chip_but_no_compiler_says_how_to_get_it(monkeypatch, capsys):
    import codegen.tpu_compile as tpu_compile

    monkeypatch.setattr(tpu_compile, "libtpu_installed", lambda python=None: False)
    assert main(["verify", str(SPECS / "axpy.yaml"), "--chip", "v6e"]) == 1
    assert "tpu-codegen[tpu]" in capsys.readouterr().err


@needs_libtpu
def test_verify_compiles_at_the_given_shapes_too(capsys):
    assert main(["verify", str(SPECS / "exp.yaml"), "--chip", "v6e", "--shape", "m=512", "--shape", "n=1024"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"compiled for v6e: exp \(--shape\): ok", out)
    assert "compile exp for v6e: passed" in out


def _estimated_cycles(out: str) -> int:
    match = re.search(r"estimated cycles: ([\d,]+)", out)
    assert match, out
    return int(match.group(1).replace(",", ""))


@needs_libtpu
def test_estimate_grows_with_the_work_and_reports_spills_and_vmem(capsys):
    spec = str(SPECS / "exp.yaml")
    assert main(["estimate", spec, "--chip", "v6e", "--shape", "m=256", "--shape", "n=512"]) == 0
    small = capsys.readouterr().out
    assert main(["estimate", spec, "--chip", "v6e", "--shape", "m=2048", "--shape", "n=2048"]) == 0
    large = capsys.readouterr().out
    assert _estimated_cycles(large) > 4 * _estimated_cycles(small)  # 32 times the elements
    assert re.search(r"spills: VMEM \d+ spills / \d+ fills", large)
    assert re.search(r"VMEM: [\d.]+ MiB scoped", large)
    assert "GHz" in large and "% of the 1.64 TB/s HBM bandwidth" in large


@needs_libtpu
def test_estimate_on_v7x_gives_cycles_or_says_why_not(capsys):
    code = main(["estimate", str(SPECS / "axpy.yaml"), "--chip", "v7x", "--shape", "m=256", "--shape", "n=256"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"estimated cycles: [\d,]+ ", out) or "estimated cycles: unavailable: the profiler of libtpu" in out


def test_a_tensor_updated_in_place_is_donated_and_nothing_else():
    from codegen.verify import compile_cases, kernel_to_compile

    axpy = build_source(SPECS / "axpy.yaml")  # y = y + alpha * x, y aliased to the output
    assert kernel_to_compile(axpy, case_from_shapes(axpy.plan, {"m": 256, "n": 256})).donate == [1]
    # attention aliases an output it allocates itself: no argument of the caller's is given up
    attention = build_source(SPECS / "attention.yaml")
    assert kernel_to_compile(attention, compile_cases(attention)[0]).donate == []


@needs_libtpu
def test_a_donated_argument_is_not_copied_before_the_kernel():
    from dataclasses import replace

    from codegen.tpu_compile import profile_kernel
    from codegen.verify import kernel_to_compile

    built = build_source(SPECS / "axpy.yaml")
    kernel = kernel_to_compile(built, case_from_shapes(built.plan, {"m": 1024, "n": 1024}))
    donated, kept = profile_kernel(kernel, "v6e"), profile_kernel(replace(kernel, donate=[]), "v6e")
    assert donated.ok and kept.ok, (donated.error, kept.error)
    # kept, y must survive the call, so XLA copies it first and the copy costs cycles of its own
    assert donated.estimated_cycles < kept.estimated_cycles


def test_profile_dumps_are_read(tmp_path):
    profile, dump = tmp_path / "profile", tmp_path / "dump"
    profile.mkdir()
    dump.mkdir()
    (profile / "k.1_static_llo_profile.textproto").write_text(
        'hlo_op_estimate {\n  hlo_op_name: "k.1"\n  estimated_cycles: 9074\n}\n')
    (profile / "fusion_static_llo_profile.textproto").write_text("hlo_op_estimate {\n  estimated_cycles: 26\n}\n")
    (dump / "1-TLP-74-hlo-static-bundle-profile.txt").write_text(
        "HLO: <no-hlo-instruction>\n - VMEM_SPILL_COUNT: (3/200) - 0.015\n - VMEM_FILL_COUNT: (4/200) - 0.02\n"
        " - SMEM_SPILL_COUNT: (1/200) - 0.005\n - SMEM_FILL_COUNT: (0/200) - 0\n"
        'HLO: %k.1 = custom-call(), backend_config={"used_scoped_memory_configs":[{"memory_space":"1",'
        '"offset":"0","size":"458752"}],"bundle_analysis_data":{}}\n - VMEM_SPILL_COUNT: (2/6) - 0.3\n')
    result = Compiled("k", "v6e", ok=True)
    read_profile(result, profile, dump)
    assert result.estimated_cycles == 9100
    assert (result.vmem_spills, result.vmem_fills, result.smem_spills, result.smem_fills) == (5, 4, 1, 0)
    assert result.scoped_vmem_bytes == 458752


def test_a_kernel_the_profile_costs_at_zero_has_no_estimate(tmp_path):
    """libtpu 0.0.50.1 costs grouped_gemm's kernel at 0 cycles: the XLA ops around it must
    not pass for its cost."""
    profile, dump = tmp_path / "profile", tmp_path / "dump"
    profile.mkdir()
    dump.mkdir()
    kernel = ('hlo_op_estimate {\n  hlo_op_name: "_lambda_.1"\n  estimated_cycles: %d\n  hlo_instruction {\n'
              '    opcode: "custom-call"\n    custom_call_target: "tpu_custom_call"\n  }\n}\n')
    (profile / "fusion.3_TPU v6 lite_static_llo_profile.textproto").write_text(
        "hlo_op_estimate {\n  estimated_cycles: 723\n}\n")
    for cycles, want in ((0, None), (5000, 5723)):
        (profile / "_lambda_.1_TPU v6 lite_static_llo_profile.textproto").write_text(kernel % cycles)
        result = Compiled("k", "v6e", ok=True)
        read_profile(result, profile, dump)
        assert result.estimated_cycles == want
        assert ("(_lambda_.1) at 0 cycles" in result.profile_gap) == (want is None)


def test_shapes_for_a_jagged_spec_default_to_full_segments():
    plan = build_source(SPECS / "gdpa.yaml").plan
    case = case_from_shapes(plan, {"b": 4, "max_seq_len": 1024, "skv": 256, "h": 8, "d": 128})
    assert case.sizes["sq"] == 4 * 1024 and case.maxima == {"max_seq_len": 1024}
    with pytest.raises(SpecError, match="needs a size for skv"):
        case_from_shapes(plan, {"b": 4, "max_seq_len": 1024, "h": 8, "d": 128})
    with pytest.raises(SpecError, match="nope is not an axis"):
        case_from_shapes(plan, {"nope": 1})
    # d is held whole up to its max, 128: the entry point would refuse 256
    with pytest.raises(SpecError, match=r"--shape: d=256 is more than its max, 128") as err:
        case_from_shapes(plan, {"b": 4, "max_seq_len": 1024, "skv": 256, "h": 8, "d": 256})
    assert "raise axes.d.max in the spec (" in err.value.hint and "gdpa.yaml:14:" in err.value.hint


def test_shapes_for_a_paged_spec_size_the_page_pool():
    plan = build_source(SPECS / "paged_attention.yaml").plan
    case = case_from_shapes(plan, {"b": 8, "kvh": 2, "g": 4, "d": 128, "pages": 64})
    k_pages = plan.ir.tensors["k_pages"]
    assert plan.ir.caller_shape(k_pages, case.sizes) == (2, 8 * 64, 16, 128)


# --- codegen tune and the spec's tune: section -----------------------------------------

def _bmm_untuned() -> str:
    """specs/bmm.yaml without its own tune: section (the last one in the file)."""
    return (SPECS / "bmm.yaml").read_text().split("\ntune:")[0] + "\n"


BMM_TUNED = """
tune:  # blocks per chip
  v6e: {shapes: {batch: 4, m: 2048, n: 2048, k: 2048}, blocks: {m: 256, n: 512, k: 1024}, estimated_cycles: 5}
"""


def test_a_tune_entry_sets_the_default_blocks_of_the_build_for_its_chip(tmp_path):
    from conftest import build_text

    text = _bmm_untuned() + BMM_TUNED
    tuned = build_text(tmp_path, text, chip="v6e")
    assert "def bmm(a, b, *, block_m=256, block_n=512, block_k=1024, interpret=False):" in tuned.source
    other_chip = build_text(tmp_path, text, chip="v5e")
    assert "def bmm(a, b, *, block_m=128, block_n=128, block_k=128, interpret=False):" in other_chip.source
    assert tuned.spec.tune["v6e"].shapes == {"batch": 4, "m": 2048, "n": 2048, "k": 2048}


@pytest.mark.parametrize("section, message", [
    ("tune:\n  v9z: {shapes: {m: 1}, blocks: {m: 8}}\n", "tune.v9z: not a chip"),
    ("tune:\n  v6e: {shapes: {m: 1}, blocks: {batch: 8}}\n", "'batch' is not an axis with a block"),
    ("tune:\n  v6e: {shapes: {m: 1}, blocks: {m: 0}}\n", "must be a positive integer"),
    ("tune:\n  v6e: {blocks: {m: 8}}\n", "missing required key 'shapes'"),
])
def test_a_wrong_tune_entry_is_a_spec_error(tmp_path, section, message):
    from conftest import build_text

    with pytest.raises(SpecError, match=re.escape(message)):
        build_text(tmp_path, _bmm_untuned() + section)


def test_writing_a_tune_entry_keeps_the_spec_and_the_other_chips(tmp_path):
    from codegen.tune import Tuned, write_tune_entry
    from codegen.verify import Case

    path = tmp_path / "bmm.yaml"
    original = _bmm_untuned()
    path.write_text(original + BMM_TUNED)
    built = build_source(path)
    shapes = {"batch": 2, "m": 512, "n": 512, "k": 512}
    write_tune_entry(path, built, Tuned("v5e", shapes, Case("tune", shapes), {"m": 512, "n": 256, "k": 512}, 77,
                                        "libtpu 0.0.42.1", [], 1.0))
    text = path.read_text()
    assert text.startswith(original), "the rest of the spec, comments included, is left as written"
    reread = build_source(path).spec.tune
    assert reread["v5e"].blocks == {"m": 512, "n": 256, "k": 512} and reread["v5e"].estimated_cycles == 77
    assert reread["v6e"].blocks == {"m": 256, "n": 512, "k": 1024}, "the other chip's entry stays"
    assert text.count("tune:") == 1


@needs_libtpu
def test_tune_compiles_candidates_and_records_the_best(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text((SPECS / "exp.yaml").read_text())
    assert main(["tune", str(path), "--chip", "v6e", "--shape", "m=256", "--shape", "n=512", "--passes", "1"]) == 0
    out = capsys.readouterr().out
    trials = {tuple(re.findall(r"\w+=\w+", line)): int(cycles.replace(",", ""))
              for line, cycles in re.findall(r"(\[\d+\] .*?) \.\.\. ([\d,]+) cycles", out)}
    assert len(trials) >= 4, out
    # the rule that changes exp's kernel is tried switched, at the best blocks
    assert "rules output_only" in out and any("output_only=off" in key for key in trials), out
    entry = build_source(path).spec.tune["v6e"]
    assert entry.shapes == {"m": 256, "n": 512}
    assert entry.estimated_cycles == min(trials.values())
    winner = min(trials, key=trials.get)
    assert {name: switch.enabled for name, switch in entry.rules.items()} == (
        {"output_only": False} if "output_only=off" in winner else {})
    assert "tune.v6e written" in out


def test_a_tune_entry_switches_rules_for_its_chip_alone(tmp_path):
    from codegen.report import format_plan

    from conftest import build_text

    entry = "  v6e: {shapes: {batch: 4, m: 2048, n: 2048, k: 2048}, blocks: {m: 256, n: 512, k: 1024}, " \
            "rules: {last_block_mask: on, snake_order: off}}\n"
    text = _bmm_untuned() + "tune:\n" + entry
    tuned = build_text(tmp_path, text, chip="v6e")
    assert "_mask_last_block(a" in tuned.source and "_snake_block" not in tuned.source
    assert "last_block_mask  on (tune.v6e)" in format_plan(tuned.plan)
    assert ("# tune.v6e (by codegen tune at batch=4, m=2048, n=2048, k=2048): default blocks m=256, n=512, k=1024; "
            "rules last_block_mask on, snake_order off\n") in tuned.source  # the header says why
    other = build_text(tmp_path, text, chip="v5e")
    assert "_mask_last_block" not in other.source and "_snake_block" in other.source
    # over the spec's own switch too: the entry is what tuning found for the chip
    switched = build_text(tmp_path, text.replace("compute:", "rules: {snake_order: on}\ncompute:"), chip="v6e")
    assert "_snake_block" not in switched.source
    with pytest.raises(SpecError, match="unknown rule 'last_blok_mask'") as err:
        build_text(tmp_path, text.replace("last_block_mask: on", "last_blok_mask: on"), chip="v6e")
    assert err.value.location.line == text.count("\n")  # the entry's line
    with pytest.raises(SpecError, match=re.escape("tune.v6e.rules.last_block_mask must be true or false (or on/off), got 3")):
        build_text(tmp_path, text.replace("last_block_mask: on", "last_block_mask: 3"), chip="v6e")


def test_tune_tries_the_rules_that_change_the_kernel_and_respects_the_authors_switches(tmp_path):
    from codegen.tune import rule_candidates

    from conftest import build_text

    def tried(text):
        built = build_text(tmp_path, text)
        variants, skipped = rule_candidates(built, lambda rules: build_source(tmp_path / "k.yaml", rules=rules))
        return sorted(variants), skipped

    bmm = _bmm_untuned()
    assert tried(bmm) == (["last_block_mask", "output_only", "snake_order"], [])
    # a rule the author turned off is not turned on by tuning
    assert tried(bmm.replace("compute:", "rules: {snake_order: off}\ncompute:"))[0] == ["last_block_mask", "output_only"]
    # snake_order over declared accumulators goes only where the spec allows it
    attention = (SPECS / "attention.yaml").read_text()
    assert "snake_order" not in tried(attention.replace("rules: {snake_order: on}\n", ""))[0]
    # off is a race for slot_semaphores: never tried
    variants, skipped = tried((SPECS / "paged_attention.yaml").read_text())
    assert "slot_semaphores" not in variants
    assert any(line.startswith("slot_semaphores: never switched off") for line in skipped)
    # nor rules whose worth lies where the estimate guesses: in loops that run to lengths and
    # offsets read at run time; the rest are still tried
    assert "paged_prefetch" not in variants and "output_only" in variants
    assert any(line.startswith("paged_prefetch: never switched off by tuning: it overlaps") for line in skipped)
    variants, skipped = tried((SPECS / "ragged_paged_attention.yaml").read_text())
    assert "mask_skip" not in variants and "paged_prefetch" not in variants
    assert any(line.startswith("mask_skip: never switched off by tuning: the paged lowering walks 't'") for line in skipped)
    variants, skipped = tried((SPECS / "hstu.yaml").read_text())  # inside emit_pipeline
    assert "mask_skip" not in variants and "invariant_load" in variants
    assert any(line.startswith("mask_skip: never switched off by tuning: the outer_pipeline lowering walks 'skv'") for line in skipped)
    variants, skipped = tried((SPECS / "grouped_gemm.yaml").read_text())
    assert "real_tiles_only" not in variants and "idle_tiles_hold" not in variants and "output_only" in variants
    assert any(line.startswith("real_tiles_only: never switched off by tuning: the compiler's estimate") for line in skipped)
    # mask_skip over a grid axis is what the estimate sees: tried
    assert "mask_skip" in tried((SPECS / "causal_attention.yaml").read_text())[0]
    # keep_whole off walks n in passes, a new blocked axis: not one of the search's coordinates
    in_tiles = (Path(__file__).parent / "specs" / "softmax_in_passes.yaml").read_text()
    variants, skipped = tried(in_tiles.replace("rules: {keep_whole: off}\n", ""))
    assert "keep_whole" not in variants and "keep_whole: switching it changes which axes have blocks" in skipped


def test_writing_a_tune_entry_with_rules_reads_back(tmp_path):
    from codegen.tune import Tuned, write_tune_entry
    from codegen.verify import Case

    path = tmp_path / "bmm.yaml"
    path.write_text(_bmm_untuned())
    shapes = {"batch": 2, "m": 512, "n": 512, "k": 500}
    write_tune_entry(path, build_source(path), Tuned("v7x", shapes, Case("tune", shapes), {"m": 512, "n": 512, "k": 512},
                                                     9, "libtpu 0.0.50.1", [], 1.0, {"last_block_mask": True}))
    assert "rules: {last_block_mask: on}" in path.read_text()
    assert build_source(path).spec.tune["v7x"].rules["last_block_mask"].enabled
    assert "_mask_last_block" in build_source(path, chip="v7x").source


def test_tune_candidates_are_aligned_and_stop_at_the_extent():
    from codegen.tune import candidates, tunable_axes

    bmm = build_source(SPECS / "bmm.yaml").plan
    case = case_from_shapes(bmm, {"batch": 2, "m": 300, "n": 1024, "k": 4096})
    assert tunable_axes(bmm) == ["m", "n", "k"]
    assert candidates(bmm, case, "m") == [128, 256, 300]  # 300: one block over all of m
    assert candidates(bmm, case, "n") == [128, 256, 512, 1024]
    assert candidates(bmm, case, "k") == [128, 256, 512, 1024, 2048]
    paged = build_source(SPECS / "paged_attention.yaml").plan
    case = case_from_shapes(paged, {"b": 2, "kvh": 1, "g": 4, "d": 128, "pages": 12})
    assert candidates(paged, case, "t") == [1, 2, 4]  # pages per block must divide the table's width


@pytest.mark.parametrize("month", ["0322", "1122"])
def test_a_crash_is_reported_by_libtpus_fatal_line_in_any_month(month):
    from codegen.tpu_compile import _crash_reason

    stderr = (
        f"I{month} 19:51:30.000001   1234 compiler.cc:10] compiling\n"
        f"F{month} 19:51:37.123456   1234 llo_dumper.cc:88] Unsupported DMA direction 10\n"
        "*** Check failure stack trace: ***\n"
    )
    assert _crash_reason(stderr, -6) == "llo_dumper.cc:88] Unsupported DMA direction 10"
    assert _crash_reason("no fatal line\nthe last one\n", 1) == "exit status 1: the last one"


def test_a_virtual_environments_python_is_asked_not_assumed(tmp_path, monkeypatch):
    """A venv's python links to the binary it was made from, with packages of its own: whether
    libtpu is installed there is asked of it, not answered from this interpreter's packages."""
    import importlib.util
    import sys

    import codegen.tpu_compile as tpu_compile

    (tmp_path / "bin").mkdir()
    (tmp_path / "pyvenv.cfg").write_text(f"home = {Path(sys.executable).parent}\ninclude-system-site-packages = false\n")
    linked = tmp_path / "bin" / "python"
    linked.symlink_to(sys.executable)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "libtpu" else None)
    assert tpu_compile.libtpu_installed(sys.executable)  # this interpreter: answered here, by the stub
    assert not tpu_compile.libtpu_installed(str(linked))  # the bare venv, asked: it has no libtpu


def test_work_of_a_program_with_bytes_but_no_flops_is_kept():
    from codegen.tpu_compile import _work

    class Jaxpr:
        eqns = []

    class Closed:
        jaxpr = Jaxpr()

    class Exp:  # XLA's cost analysis of jnp.exp: transcendentals and bytes, no "flops" key
        def cost_analysis(self):
            return {"transcendentals": 16.0, "bytes accessed": 128.0}

    work = _work(Closed(), Exp())
    assert work["bytes_accessed"] == 128 and work["flops"] == 0 and work["cost_source"] == "XLA's cost analysis"


def test_tune_names_the_compiler_of_a_candidate_that_compiled(monkeypatch):
    """A candidate that crashed the compiler reports no version: the entry names the one that did."""
    import codegen.tpu_compile as tpu_compile
    from codegen.tune import tune

    def profile(kernel, chip, python=None, timeout=0):
        if kernel.kwargs.get("block_m") == 256:  # the spec's own blocks, tried first
            return Compiled(kernel.label, chip, ok=False, error="the compiler crashed: Check failed")
        return Compiled(kernel.label, chip, ok=True, estimated_cycles=1000 + kernel.kwargs["block_m"],
                        libtpu_version="0.0.50.1", jax_version="0.12.0")

    monkeypatch.setattr(tpu_compile, "profile_kernel", profile)
    tuned = tune(build_source(SPECS / "axpy.yaml"), {"m": 1024, "n": 1024}, "v6e", passes=1, log=lambda *a, **k: None)
    assert tuned.compiler == "libtpu 0.0.50.1"
    assert tuned.blocks["m"] != 256 and tuned.cycles == 1000 + tuned.blocks["m"]


@pytest.mark.parametrize("search, found", [("auto", {"m": 512, "n": 512, "k": 2048}), ("descent", {"m": 256, "n": 256, "k": 512})])
def test_the_grid_finds_what_one_axis_at_a_time_cannot(monkeypatch, search, found):
    """A best that needs every axis to move at once: each single move from the spec's blocks
    (256, 256, 512) is worse, so descent stays; the grid (5 x 5 x 5 sizes) reaches it."""
    import codegen.tpu_compile as tpu_compile
    from codegen.tune import tune

    def profile(kernel, chip, python=None, timeout=0):
        blocks = (kernel.kwargs["block_m"], kernel.kwargs["block_n"], kernel.kwargs["block_k"])
        cycles = {(256, 256, 512): 1000, (512, 512, 2048): 600}.get(blocks, 2000)
        return Compiled(kernel.label, chip, ok=True, estimated_cycles=cycles, libtpu_version="0.0.50.1")

    monkeypatch.setattr(tpu_compile, "profile_kernel", profile)
    shapes = {"m": 2048, "n": 2048, "k": 2048}
    tuned = tune(build_source(SPECS / "matmul_bias_gelu.yaml"), shapes, "v6e", passes=2, log=lambda *a, **k: None, search=search)
    assert tuned.blocks == found
    assert len(tuned.trials) == (125 if search == "auto" else 13)  # the grid; or 3 sweeps of 5, less the start's repeats


@needs_libtpu
def test_aligned_blocks_of_jagged_rows_cost_less_than_segment_aligned_ones(tmp_path):
    """segment_sum's x [t, d] in blocks aligned to the array keeps its dense tiles; with
    blocks at each segment's first row it is passed as [t, 1, d], whose DMAs the compiler
    charges row by row."""
    from codegen.tpu_compile import profile_kernel
    from codegen.verify import kernel_to_compile

    from conftest import build_text, with_rule

    text = (SPECS / "segment_sum.yaml").read_text().split("\ntune:")[0] + "\n"
    # compiler_estimates' shapes: at fewer segments libtpu 0.0.50.1's profiler aborts on the [t, 1, d] layout
    shapes = {"b": 64, "max_seq_len": 1024, "d": 512}
    cycles = {}
    for state in ("on", "off"):
        built = build_text(tmp_path, with_rule(text, "aligned_tiles", state), chip="v6e")
        result = profile_kernel(kernel_to_compile(built, case_from_shapes(built.plan, shapes)), "v6e")
        assert result.ok and result.estimated_cycles, (result.error, result.profile_error)
        cycles[state] = result.estimated_cycles
    assert cycles["on"] < cycles["off"] / 2, cycles


@needs_libtpu
def test_a_raised_vmem_limit_leaves_xla_its_share_on_v7x():
    """layernorm's v7x blocks need more than the 32 MiB scoped default by the plan's upper
    bound; at a limit of 51 MiB its program ran out of v7x's 64 MiB beside XLA's own VMEM."""
    from codegen.chips import MiB
    from codegen.tpu_compile import compile_kernels
    from codegen.verify import kernel_to_compile

    built = build_source(SPECS / "layernorm.yaml", chip="v7x")
    assert built.plan.vmem_limit == 40 * MiB and "5/8 of the TensorCore's" in built.plan.vmem_reason
    (result,) = compile_kernels([kernel_to_compile(built, case_from_shapes(built.plan, {"m": 4096, "n": 4096}))], "v7x")
    assert result.ok, result.error[:300]
