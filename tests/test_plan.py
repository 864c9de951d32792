"""Stage 3: planning — axes, grid, operands, layouts, VMEM."""

import re

import pytest

from codegen.build import plan_spec
from codegen.chips import MiB
from codegen.report import format_plan

from conftest import SPECS, build_text


def plan_of(name, **kw):
    return plan_spec(SPECS / f"{name}.yaml", **kw)[1]


def test_attention_axes_grid_and_semantics():
    p = plan_of("attention")
    modes = {a: p.axes[a].mode for a in p.axes}
    assert modes == {"batch": "squeezed", "head": "squeezed", "sq": "tiled", "skv": "tiled", "d": "full"}
    assert p.grid == ["batch", "head", "sq", "skv"]
    assert [p.axes[a].semantics for a in p.grid] == ["parallel", "parallel", "parallel", "arbitrary"]


def test_ordered_axis_goes_last_whatever_the_declaration_order(tmp_path):
    text = (SPECS / "bmm.yaml").read_text().replace("  k: {block: 128}\n", "").replace("axes:\n", "axes:\n  k: {block: 128}\n")
    p = build_text(tmp_path, text).plan
    assert list(p.ir.axes)[0] == "k"
    assert p.grid[-1] == "k" and p.axes["k"].semantics == "arbitrary"


def test_accumulator_layouts_keep_reduced_dims_as_size_one():
    p = plan_of("attention")
    assert p.accumulator_layouts == {
        "m": (("sq", False), ("skv", True)),
        "l": (("sq", False), ("skv", True)),
        "acc": (("sq", False), ("d", False)),
    }


def test_operands_and_aliases():
    p = plan_of("axpy")
    assert [op.tensor for op in p.inputs] == ["x", "y"]
    assert [op.tensor for op in p.outputs] == ["y"]
    assert p.aliases == {1: 0}
    p = plan_of("exp")
    assert [op.tensor for op in p.inputs] == ["x"] and p.aliases == {}


def test_alignment_requirements_follow_dtype(tmp_path):
    text = (SPECS / "exp.yaml").read_text().replace("float32", "bfloat16")
    p = build_text(tmp_path, text.replace("m: {block: 256}", "m: {block: 32}")).plan
    assert p.axes["m"].alignment == 16 and p.axes["n"].alignment == 128


def test_vmem_estimate_counts_buffers_and_padding():
    p = plan_of("exp")
    items = dict(p.vmem.items)
    block = p.default_block("m") * p.default_block("n")  # v5e's tune: entry, the entry point's defaults
    assert block != 256 * 512  # not the spec's blocks
    assert items["in x block x2"] == 2 * block * 4
    assert items["out out block x2"] == 2 * block * 4
    assert p.vmem_limit is None


def test_plan_over_the_scoped_default_sets_the_vmem_limit(tmp_path):
    text = (SPECS / "exp.yaml").read_text().split("\ntune:")[0] + "\n"  # the spec's blocks are the defaults
    text = text.replace("m: {block: 256}", "m: {block: 2048}").replace("n: {block: 512}", "n: {block: 1024}")
    built = build_text(tmp_path, text)
    assert 16 * MiB < built.plan.vmem.total <= 128 * MiB
    assert built.plan.vmem_limit is not None and built.plan.vmem_limit >= built.plan.vmem.total
    assert f"vmem_limit_bytes={built.plan.vmem_limit}" in built.source
    # The same plan fits v6e's larger scoped default without a limit.
    assert build_text(tmp_path, text, chip="v6e").plan.vmem_limit is None


def test_the_vmem_budget_is_for_the_blocks_the_entry_point_defaults_to(tmp_path):
    """A chip's tune: entry sets the entry point's default blocks, so the budget counts those."""
    text = (SPECS / "segment_sum.yaml").read_text().split("\ntune:")[0] + "\n"
    untuned = build_text(tmp_path, text, chip="v5e").plan
    tuned_text = text + "tune:\n  v5e: {shapes: {b: 64, max_seq_len: 1024, d: 512}, blocks: {t: 1024}}\n"
    tuned = build_text(tmp_path, tuned_text, chip="v5e")
    items = dict(tuned.plan.vmem.items)
    assert items["in x block x2"] == 2 * 1024 * 4096 * 4  # block_t 1024 of whole rows of up to d=4096
    assert dict(untuned.vmem.items)["in x block x2"] == 2 * 256 * 4096 * 4 and untuned.vmem_limit is None
    assert tuned.plan.vmem_limit is not None and tuned.plan.vmem_limit >= tuned.plan.vmem.total
    assert "block_t=1024" in tuned.source and f"vmem_limit_bytes={tuned.plan.vmem_limit}" in tuned.source


def test_plan_report_names_every_decision():
    report = format_plan(plan_of("attention"))
    for needle in ("grid: (batch, head, cdiv(sq, block_sq), cdiv(skv, block_skv))", "arbitrary",
                   "output_only", "VMEM per grid step", "scratch acc", "fits the default scoped limit"):
        assert needle in report, needle
    assert re.search(r"invariant_load\s+on\s+q\s+fired", report)


def test_full_extent_axis_without_max_is_flagged_as_assumed(tmp_path):
    text = (SPECS / "softmax.yaml").read_text().replace("n: {max: 4096}", "n: {}")
    p = build_text(tmp_path, text).plan
    assert p.vmem.assumed == ["n"]
    assert "assumed extent n = 512" in format_plan(p)
