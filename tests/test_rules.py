"""Each planner rule, on and off, with the difference in the plan and the code asserted."""

import pytest

from codegen.report import format_plan
from codegen.rules import RULES

from conftest import SCALED_ROWS, SPECS, assert_compiles, build_text
from conftest import with_rule as add_rule


def with_rule(name, rule, state):
    # without the spec's tune entries, whose rule switches would take the place of this one
    return add_rule((SPECS / f"{name}.yaml").read_text().split("\ntune:")[0] + "\n", rule, state)


def test_every_rule_is_covered_here():
    assert {r.name for r in RULES} == {
        "output_only", "invariant_load", "deferred_mask", "paged_prefetch", "slot_semaphores", "mask_skip",
        "keep_whole", "snake_order", "aligned_tiles", "last_block_mask", "idle_tiles_hold", "real_tiles_only",
    }


def test_mask_skip_on_and_off(tmp_path):
    on = build_text(tmp_path, with_rule("causal_attention", "mask_skip", "true"))
    off = build_text(tmp_path, with_rule("causal_attention", "mask_skip", "false"))
    fired = lambda b: [d.applied for d in b.plan.decisions if d.rule == "mask_skip"]  # noqa: E731
    assert fired(on) == [True] and fired(off) == [False]
    assert on.plan.mask_skip is not None and off.plan.mask_skip is None
    assert "@pl.when(tile_live)" in on.source and "tile_live" not in off.source
    assert "jnp.clip(" in on.source and "jnp.clip(" not in off.source  # the clamped index map
    assert "rule off" in [d.reason for d in off.plan.decisions if d.rule == "mask_skip"][0]


def test_output_only_on_and_off(tmp_path):
    on = build_text(tmp_path, with_rule("exp", "output_only", "on"))
    off = build_text(tmp_path, with_rule("exp", "output_only", "off"))
    assert [op.tensor for op in on.plan.inputs] == ["x"] and on.plan.aliases == {}
    assert [(op.tensor, op.memory) for op in off.plan.inputs] == [("x", "blocked"), ("out", "any")]
    assert off.plan.aliases == {1: 0}
    fired = lambda b: [d.applied for d in b.plan.decisions if d.rule == "output_only"]  # noqa: E731
    assert fired(on) == [True] and fired(off) == [False]
    assert "input_output_aliases" not in on.source
    assert "pl.BlockSpec(memory_space=pl.ANY)" in off.source and "out = jnp.zeros((m, n), jnp.float32)" in off.source


def test_output_only_does_not_touch_read_and_written_tensors(tmp_path):
    off = build_text(tmp_path, with_rule("axpy", "output_only", "off"))
    on = build_text(tmp_path, with_rule("axpy", "output_only", "on"))
    assert on.source.count("input_output_aliases=") == off.source.count("input_output_aliases=") == 1
    assert on.plan.aliases == off.plan.aliases == {1: 0}


def test_invariant_load_on_and_off(tmp_path):
    on = build_text(tmp_path, with_rule("attention", "invariant_load", "on"))
    off = build_text(tmp_path, with_rule("attention", "invariant_load", "off"))
    buffers = lambda b: {op.tensor: op.buffers for op in b.plan.inputs}  # noqa: E731
    assert buffers(on) == {"q": 1, "k": 2, "v": 2}
    assert buffers(off) == {"q": 2, "k": 2, "v": 2}
    assert off.plan.vmem.total - on.plan.vmem.total == 128 * 128 * 4  # one (block_sq, d) f32 buffer
    assert on.source.count("pipeline_mode=pl.Buffered(1)") == 1
    assert "Buffered" not in off.source


def test_invariant_load_is_skipped_without_an_ordered_axis(tmp_path):
    built = build_text(tmp_path, (SPECS / "exp.yaml").read_text())
    decisions = [d for d in built.plan.decisions if d.rule == "invariant_load"]
    assert decisions and not any(d.applied for d in decisions)
    assert "no ordered axis" in decisions[0].reason


def test_snake_order_on_and_off(tmp_path):
    on = build_text(tmp_path, with_rule("causal_attention", "snake_order", "on"))
    off = build_text(tmp_path, with_rule("causal_attention", "snake_order", "off"))
    assert on.plan.snake_outer == "sq" and off.plan.snake_outer is None
    assert "skv_step = pl.program_id(3)" in on.source and "skv_step" not in off.source
    flat = " ".join(on.source.split())
    assert "skv_index = _snake_block( skv_step, pl.num_programs(3), pl.program_id(2), last=" in flat
    assert "_snake_block( skv_step, pl.cdiv(skv, block_skv), sq_index, last=" in flat
    assert "def _snake_block(" in on.source and "_snake_block" not in off.source
    assert "@pl.when(skv_step == pl.num_programs(3) - 1)" in on.source


def test_snake_order_waits_for_the_spec_where_accumulators_are_declared(tmp_path):
    """Declared accumulators may depend on the order of their axis; sums and dots do not."""
    text = (SPECS / "attention.yaml").read_text().replace("rules: {snake_order: on}\n", "")
    unsaid = build_text(tmp_path, text)
    (decision,) = [d for d in unsaid.plan.decisions if d.rule == "snake_order"]
    assert not decision.applied and "may depend on the order of 'skv'" in decision.reason
    bmm = build_text(tmp_path, (SPECS / "bmm.yaml").read_text())
    assert bmm.plan.snake_outer == "n", "bmm's accumulator is a synthesized dot: on by default"


def test_keep_whole_on_and_off(tmp_path):
    on = build_text(tmp_path, with_rule("softmax", "keep_whole", "on"))
    off = build_text(tmp_path, (SPECS / "softmax.yaml").read_text().replace("n: {max: 4096}", "n: {block: 512}") + "rules: {keep_whole: off}\n")
    assert on.plan.ir.passes == 1 and on.plan.axes["n"].mode == "full"
    assert off.plan.ir.passes == 3 and off.plan.axes["n"].mode == "tiled"
    assert "_pass_3" in off.source and "_pass_" not in on.source


TRIANGULAR = """name: trimm
axes:
  m: {block: 128}
  n: {block: 128}
  k: {block: 128}
tensors:
  a: {dims: [m, k], dtype: float32}
  b: {dims: [k, n], dtype: float32}
  out: {dims: [m, n], dtype: float32}
compute:
  out: dot(where(index(k) <= index(m), a, 0), b, over=k)
"""


def test_snake_order_starts_below_the_diagonal_only_where_it_moves_with_the_outer_axis(tmp_path, nan_interpret):
    """A triangular matmul walks k inside n: consecutive n tiles share one diagonal, so a
    backward walk starts on it (where the forward one ended), not below it."""
    import jax.numpy as jnp
    import numpy as np

    from codegen.verify import load_module

    built = build_text(tmp_path, TRIANGULAR)
    assert built.plan.snake_outer == "n" and built.plan.mask_skip is not None
    assert "_snake_block(" in built.source and "last=(" not in built.source  # no diagonal argument
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((300, 300)).astype(np.float32), rng.standard_normal((300, 270)).astype(np.float32)
    got = load_module(built.source, "trimm").trimm(jnp.asarray(a), jnp.asarray(b), interpret=nan_interpret)
    np.testing.assert_allclose(np.asarray(got), np.tril(a) @ b, rtol=1e-5, atol=1e-4)


def test_last_block_mask_is_off_unless_a_spec_turns_it_on(tmp_path):
    off = build_text(tmp_path, (SPECS / "bmm.yaml").read_text())
    assert "_mask_last_block" not in off.source and "_mask_tail(a, axis=1" in off.source
    assert not off.plan.last_block_masks
    assert "rule off: every 'k' block computes its tail mask" in format_plan(off.plan)
    on = build_text(tmp_path, with_rule("bmm", "last_block_mask", "on"))
    assert on.plan.last_block_masks == {"k"}
    assert "a_masked = _mask_last_block(a, axis=1, start=k_start, size=k, fill=0.0)" in on.source
    assert "blocks masked under lax.cond x2" in format_plan(on.plan)  # counted in VMEM


def test_last_block_mask_needs_an_ordered_axis(tmp_path):
    built = build_text(tmp_path, with_rule("exp", "last_block_mask", "on"))
    assert not built.plan.last_block_masks and "_mask_last_block" not in built.source
    assert "no ordered axis walked in blocks" in format_plan(built.plan)


def test_idle_tiles_hold_on_and_off(tmp_path):
    on = build_text(tmp_path, with_rule("grouped_gemm", "idle_tiles_hold", "on"))
    off = build_text(tmp_path, with_rule("grouped_gemm", "idle_tiles_hold", "off"))
    assert on.plan.holds_idle_tiles and not off.plan.holds_idle_tiles
    assert "def k_index_held(g_index, n_index, t_index, k_index):" in on.source
    assert "_bounded_tile(k_index_held(g_index, n_index, t_index, k_index), block_k, k)" in on.source
    assert "k_index_held" not in off.source
    assert "rule off: a tile past its segment's end walks 'k' and fetches lhs, rhs again" in format_plan(off.plan)
    # nothing to hold where no tile is launched past a segment's end
    dense = build_text(tmp_path, with_rule("bmm", "idle_tiles_hold", "on"))
    assert "no tile is launched past its segment's end" in format_plan(dense.plan)


def test_real_tiles_only_on_and_off(tmp_path):
    on = build_text(tmp_path, with_rule("grouped_gemm", "real_tiles_only", "on"))
    off = build_text(tmp_path, with_rule("grouped_gemm", "real_tiles_only", "off"))
    assert on.plan.visited_tiles == ("g", "t") and off.plan.visited_tiles is None
    assert "grid=(num_n_tiles, num_t_visits, num_k_tiles)," in on.source
    assert "g_index, t_index = t_visit_segment_ref[t_visit], t_visit_tile_ref[t_visit]" in on.source
    assert "num_scalar_prefetch=3," in on.source
    assert "grid=(g, num_n_tiles, num_t_tiles, num_k_tiles)," in off.source
    assert "_visited_tiles" not in off.source and "num_scalar_prefetch=1," in off.source
    assert "rule off: every segment launches cdiv(max, block_t) tiles of 't'" in format_plan(off.plan)
    # Where it cannot apply, it says why.
    per_segment = build_text(tmp_path, with_rule("segment_sum", "real_tiles_only", "on"))
    assert "no jagged parallel axis in a pipeline grid" in format_plan(per_segment.plan)
    grid = build_text(tmp_path, with_rule("grouped_gemm", "real_tiles_only", "on") + "lowering: grid\n")
    assert "puts the segments of 't' on the pallas_call grid" in format_plan(grid.plan)
    assert grid.plan.visited_tiles is None


def test_aligned_tiles_on_and_off(tmp_path):
    on = build_text(tmp_path, with_rule("segment_sum", "aligned_tiles", "on"))
    off = build_text(tmp_path, with_rule("segment_sum", "aligned_tiles", "off"))
    assert on.plan.aligned_tiles == {"t"} and off.plan.aligned_tiles == set()
    # Off, x's rows are a major dim ([t, 1, d]), blocks starting at each segment's first row.
    assert on.plan.unit_major == [] and off.plan.unit_major == ["x"]
    assert "pl.BlockSpec((pl.BoundedSlice(block_t), d), x_index_map)" in on.source
    assert "_aligned_tile(offsets_ref, b_index, t_index, block_t)" in on.source and "_jagged_tile" not in on.source
    assert "pl.BlockSpec((pl.BoundedSlice(block_t), 1, d), x_index_map)" in off.source
    assert "_aligned_tile" not in off.source and "x = x.reshape(t, 1, d)" in off.source
    # A segment of max rows may start mid-block: one block more than cdiv(max, block).
    # (A max of 0 still gets one block: `max(M, 1)`.)
    assert "num_t_tiles = pl.cdiv(max(max_seq_len, 1) + block_t - 1, block_t)" in on.source
    assert "num_t_tiles = pl.cdiv(max(max_seq_len, 1), block_t)" in off.source
    # Masks on both sides of the segment's rows, and no work for an empty segment.
    assert "_mask_outside(x, axis=0, start=t_start, size=t_size" in on.source and "_mask_tail" not in on.source
    assert "lax.cond((jnp.maximum(t_start, 0) < t_size), step" in on.source
    assert "rule off: 't' blocks start at each segment's first row" in format_plan(off.plan)
    # Where it cannot apply, it says why.
    in_passes = add_rule(with_rule("jagged_softmax", "keep_whole", "off"), "aligned_tiles", "on")
    softmax = build_text(tmp_path, in_passes)  # t ordered, walked in passes, and written by the last
    assert "out is written along 't'" in format_plan(softmax.plan) and softmax.plan.aligned_tiles == set()
    grid = build_text(tmp_path, with_rule("segment_sum", "aligned_tiles", "on") + "lowering: grid\n")
    assert "runs a pipeline per segment" in format_plan(grid.plan) and grid.plan.aligned_tiles == set()
    heads = build_text(tmp_path, with_rule("gdpa_jagged", "aligned_tiles", "on"))
    assert "no tensor holds 'skv' in its last two dims" in format_plan(heads.plan)
    softmax = build_text(tmp_path, with_rule("jagged_softmax", "aligned_tiles", "on"))  # t parallel, held whole
    assert "max, sum over 't' needs each segment's rows in blocks of their own" in format_plan(softmax.plan)
    gemm = build_text(tmp_path, add_rule(with_rule("grouped_gemm", "aligned_tiles", "on"), "real_tiles_only", "off"))
    assert "outputs vary over n, walked between one 'g' and the next" in format_plan(gemm.plan)
    assert gemm.plan.aligned_tiles == softmax.plan.aligned_tiles == set()


# Per segment, the sum of exp(x) over its rows, kept stable by a running max (an online
# logsumexp): an empty segment must skip its one block, where exp(m - m_next) would be
# exp(-inf + inf), and give 0.
SEGMENT_EXP_SUMS = """name: segment_exp_sums
axes:
  b: {}
  t: {jagged: {offsets: offsets, segment: b, max: max_len}, block: 16}
  d: {max: 256}
tensors:
  x: {dims: [t, d], dtype: float32}
  offsets: {dims: [b+1], dtype: int32}
  out: {dims: [b, d], dtype: float32}
accumulators:
  m: {over: t, dims: [b, d], init: -.inf}
  l: {over: t, dims: [b, d], init: 0}
compute:
  m_next: maximum(m, max(x, over=t))
  l: exp(m - m_next) * l + sum(exp(x - m_next), over=t)
  m: m_next
  out: l * exp(m)
"""


@pytest.mark.parametrize("state", ["on", "off"])
def test_aligned_tiles_run_on_verifys_edge_cases(tmp_path, state):
    from codegen.verify import verify_built

    built = build_text(tmp_path, add_rule(SEGMENT_EXP_SUMS, "aligned_tiles", state))
    assert built.plan.aligned_tiles == ({"t"} if state == "on" else set())
    log = []
    assert verify_built(built, log=log.append), "\n".join(log)
    assert any("t=[0, " in line for line in log)  # an empty segment was among the cases


# Jagged attention with one head, so Q, K, V and out hold their rows in their last two dims:
# aligned 'skv' blocks beside real_tiles_only's visits over aligned 'sq' blocks (out's writes
# merged), idle_tiles_hold, and a mask on positions within the segment (mask_skip off, which
# would keep the blocks per segment).
ONE_HEAD = """name: one_head
axes:
  b: {}
  sq: {jagged: {offsets: q_offsets, segment: b, max: max_q}, block: 16}
  skv: {jagged: {offsets: kv_offsets, segment: b, max: max_kv}, block: 16}
  d: {max: 128}
tensors:
  q: {dims: [sq, d], dtype: float32}
  k: {dims: [skv, d], dtype: float32}
  v: {dims: [skv, d], dtype: float32}
  q_offsets: {dims: [b+1], dtype: int32}
  kv_offsets: {dims: [b+1], dtype: int32}
  out: {dims: [sq, d], dtype: float32}
compute:
  s: dot(q, k, over=d)
  p: where(index(skv) <= index(sq) + 3, tanh(s), 0.0)
  out: dot(p, v, over=skv)
rules:
  mask_skip: off
"""


def test_aligned_tiles_beside_visits_over_real_tiles_and_a_position_mask(tmp_path):
    from codegen.verify import verify_built

    built = build_text(tmp_path, ONE_HEAD)
    fired = {d.rule for d in built.plan.decisions if d.applied}
    assert {"aligned_tiles", "real_tiles_only", "idle_tiles_hold"} <= fired
    assert built.plan.aligned_tiles == {"sq", "skv"} and built.plan.unit_major == []
    assert "k, v keep their dense tiles" in built.source and "q, out keep their dense tiles" in built.source
    assert "fill=out_ref[...]" in built.source
    log = []
    assert verify_built(built, log=log.append), "\n".join(log)


def test_real_tiles_only_keeps_every_segment_of_a_per_segment_output(tmp_path):
    text = SCALED_ROWS
    built = build_text(tmp_path, text)
    assert built.plan.visited_tiles is None
    assert "z has a value per segment, which an empty segment, never visited, would not write" in format_plan(built.plan)
    assert built.plan.visited_tiles is None
    without_z = text.replace("  z: {dims: [b, d], dtype: float32}\n", "").replace("  z: w * 2.0\n", "")
    assert build_text(tmp_path, without_z).plan.visited_tiles == ("b", "t")


# Jagged rows times a shared weight, scaled by a per-segment gain: no shipped spec has it.
# Its gain is read a row at a time, at the segment's index: passed as [b, n], libtpu 0.0.42
# (jax 0.10.2) aborts on that 1-D block of bounded length; the pipeline passes it as [b, 1, n].
GAINED_ROWS = """name: gained_rows
doc: >
  Jagged rows times one shared weight, scaled per segment by a gain row: a kernel no
  shipped spec has, with a per-segment input beside the jagged one.
axes:
  b: {}
  t: {jagged: {offsets: offsets, segment: b, max: max_len}, block: 16}
  n: {block: 128}
  k: {block: 128}
tensors:
  x: {dims: [t, k], dtype: bfloat16}
  w: {dims: [k, n], dtype: bfloat16}
  gain: {dims: [b, n], dtype: float32}
  offsets: {dims: [b+1], dtype: int32}
  out: {dims: [t, n], dtype: float32}
compute:
  out: dot(x, w, over=k) * gain
"""


@pytest.mark.parametrize("state", ["on", "off"])
def test_real_tiles_only_runs_a_kernel_no_shipped_spec_has(tmp_path, state):
    """A per-segment gain beside the jagged rows: the gain's block follows the segment each
    visit reads from the map. verify's cases: tails, empty and length-1 segments, 3+ tiles."""
    from codegen.verify import verify_built

    built = build_text(tmp_path, add_rule(GAINED_ROWS, "real_tiles_only", state))
    assert (built.plan.visited_tiles == ("b", "t")) == (state == "on")
    if state == "on":
        assert "b_index = t_visit_segment_ref[t_visit]" in built.source  # the gain's index map
    log = []
    assert verify_built(built, log=log.append), "\n".join(log)
    assert "(None, 1, pl.BoundedSlice(block_n)), gain_index_map" in built.source  # a gain row as [1, n]


# Each segment's rows summed, plus a bias row per segment: an input and an output read and
# written a segment's row at a time, the output after a reduction over the jagged rows.
BIASED_SUMS = """name: biased_sums
axes:
  b: {}
  t: {jagged: {offsets: offsets, segment: b, max: max_len}, block: 16}
  n: {block: 128}
tensors:
  x: {dims: [t, n], dtype: float32}
  bias: {dims: [b, n], dtype: float32}
  offsets: {dims: [b+1], dtype: int32}
  out: {dims: [b, n], dtype: float32}
accumulators:
  total: {over: t, dims: [b, n], init: 0}
compute:
  total: total + sum(x, over=t)
  out: total + bias
"""


def test_segment_rows_of_an_input_and_an_output_run_as_unit_major(tmp_path):
    from codegen.verify import verify_built

    built = build_text(tmp_path, BIASED_SUMS)
    assert built.plan.unit_major == ["bias", "out"]  # x's jagged rows are walked in aligned blocks
    assert built.plan.aligned_tiles == {"t"}
    log = []
    assert verify_built(built, log=log.append), "\n".join(log)


@pytest.mark.parametrize("chip", ["v5e", "v6e", "v7x"])
@pytest.mark.parametrize("text", [GAINED_ROWS, BIASED_SUMS], ids=["gained_rows", "biased_sums"])
def test_kernels_no_shipped_spec_has_compile_for_every_chip(tmp_path, text, chip):
    """A segment's row of bounded length (the gain; the bias and the sums) is passed as
    [b, 1, n]: as [b, n], libtpu 0.0.42 (the jax 0.10.2 session) aborts on it
    (lower_pass_base.cc, `dynamic_dim_it`), so there this fails without that layout;
    0.0.50.1 takes either."""
    built = build_text(tmp_path, text)
    assert_compiles(built, chip)


def test_every_rule_is_measured_by_rule_effects_or_says_why_not():
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from rule_effects import NOT_MEASURED, PAIRS

    measured = {pair.rule for pair in PAIRS}
    assert {r.name for r in RULES} - measured - set(NOT_MEASURED) == set()
    assert measured & set(NOT_MEASURED) == set()


# Jagged rows scaled per segment, with a position mask and no ordered axis: the rows are
# written in blocks aligned to the array, each segment's visit merging its rows into a
# block it may share with its neighbours; and a major-dim output along the same axis.
SEGMENT_ROWS_SCALED = """name: segment_rows_scaled
axes:
  b: {}
  t: {jagged: {offsets: offsets, segment: b, max: max_len}, block: 16}
  h: {max: 4}
  d: {max: 256}
tensors:
  x: {dims: [t, d], dtype: float32}
  w: {dims: [b, d], dtype: float32}
  offsets: {dims: [b+1], dtype: int32}
  out: {dims: [t, d], dtype: float32}
  heads: {dims: [t, h, d], dtype: float32}
compute:
  out: where(index(t) < 3, x * w, -x)
  heads: x * w + index(h)
"""


@pytest.mark.parametrize("state", ["on", "off"])
def test_aligned_tiles_merge_the_writes_of_segments_that_share_a_block(tmp_path, state):
    from codegen.verify import verify_built

    built = build_text(tmp_path, add_rule(SEGMENT_ROWS_SCALED, "aligned_tiles", state))
    assert built.plan.aligned_tiles == ({"t"} if state == "on" else set())
    if state == "on":
        assert built.plan.unit_major == [] and built.plan.visited_tiles == ("b", "t")
        for name in ("out", "heads"):
            assert f"{name}_ref[...] = _mask_outside(" in built.source and f"fill={name}_ref[...]" in built.source
    else:
        assert built.plan.unit_major == ["x", "out"]
    log = []
    assert verify_built(built, log=log.append), "\n".join(log)
    assert any("t=[0, " in line for line in log)  # an empty segment was among the cases


def test_positions_broadcast_over_other_dims_are_computed_at_their_rank(tmp_path):
    """index(t) < 3, used against [t, d] values: the iota is [block_t, 1], not a 1-D vector
    of rows reshaped into a column, which Mosaic refuses (`unsupported shape cast`)."""
    built = build_text(tmp_path, SEGMENT_ROWS_SCALED)
    assert "t_start + lax.broadcasted_iota(jnp.int32, (block_t, 1), 0) < 3," in built.source
    assert "(block_t,), 0)" not in built.source


@pytest.mark.parametrize("chip", ["v5e", "v6e", "v7x"])
@pytest.mark.parametrize("text", [SEGMENT_ROWS_SCALED, ONE_HEAD], ids=["segment_rows_scaled", "one_head"])
def test_aligned_tiles_kernels_compile_for_every_chip(tmp_path, text, chip):
    """Merged writes of aligned blocks of jagged rows, and the position masks beside them,
    through the real compiler."""
    built = build_text(tmp_path, text)
    assert built.plan.aligned_tiles
    assert_compiles(built, chip)
