"""Grouped GEMM: a jagged row axis with dense tiled axes (N parallel, K contracted) inside it.

Both of the shapes that used to go wrong are here: N spanning three blocks, so an
over-launched row tile sits between real tiles of other N blocks; and K and N with tails,
which an emit_pipeline block would read past the array's end.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from codegen.verify import Case, load_module, lower_for_tpu

from conftest import SPECS, build_text, checked_in_module

SPEC = (SPECS / "grouped_gemm.yaml").read_text()
BLOCK_T = 16  # bf16 rows: a multiple of 16 sublanes
K = N = 300  # three blocks of 128 and a tail, on both
GROUPS = {
    "edges": [0, 1, BLOCK_T, BLOCK_T + 1, 3 * BLOCK_T - 1, 0, 3 * BLOCK_T, 5],
    "all empty but one": [0, 0, 3 * BLOCK_T, 0],
    "all empty": [0, 0, 0],
}
# The same kernel with its axes declared in another order, or lowered per segment.
DECLARED_N_FIRST = SPEC.replace(
    "  t: {jagged", "  n: {block: 128}\n  t: {jagged", 1
).replace("  n: {block: 128}\n  k:", "  k:", 1)
VARIANTS = {"checked in": None, "grid lowering": SPEC + "lowering: grid\n", "axes g, n, t, k": DECLARED_N_FIRST}


def reference(lhs, rhs, offsets):
    lhs, rhs = np.asarray(lhs, np.float64), np.asarray(rhs, np.float64)
    out = np.zeros((lhs.shape[0], rhs.shape[2]))
    for g in range(len(offsets) - 1):
        rows = slice(offsets[g], offsets[g + 1])
        out[rows] = lhs[rows] @ rhs[g]
    return out


def inputs(sizes, seed=0):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    lhs = jnp.asarray(rng.standard_normal((int(offsets[-1]), K)), jnp.bfloat16)
    rhs = jnp.asarray(rng.standard_normal((len(sizes), K, N)), jnp.bfloat16)
    return lhs, rhs, offsets


def module(tmp_path, variant):
    if VARIANTS[variant] is None:
        return checked_in_module("grouped_gemm")
    return load_module(build_text(tmp_path, VARIANTS[variant]).source, "grouped_gemm")


def test_variant_declares_n_before_t():
    assert DECLARED_N_FIRST.index("  n: {block") < DECLARED_N_FIRST.index("  t: {jagged")
    assert DECLARED_N_FIRST.count("n: {block") == 1


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("groups", GROUPS)
def test_grouped_gemm_matches_numpy(tmp_path, nan_interpret, variant, groups):
    lhs, rhs, offsets = inputs(GROUPS[groups])
    mod = module(tmp_path, variant)
    got = np.asarray(
        mod.grouped_gemm(lhs, rhs, jnp.asarray(offsets), max_group_size=3 * BLOCK_T, block_t=BLOCK_T,
                         interpret=nan_interpret)
    )
    want = reference(lhs, rhs, offsets)
    assert got.shape == (int(offsets[-1]), N) and got.dtype == np.float32
    assert not np.isnan(got).any()
    scale = max(np.abs(want).max(), 1e-30) if want.size else 1.0
    for g in range(len(offsets) - 1):  # each group on its own, so a wrong one is named
        rows = slice(offsets[g], offsets[g + 1])
        np.testing.assert_allclose(got[rows], want[rows], atol=1e-5 * scale, err_msg=f"group {g}")


def test_plan_puts_the_jagged_axis_inside_the_other_parallel_axes():
    from codegen.build import plan_spec

    _, plan = plan_spec(SPECS / "grouped_gemm.yaml")
    assert plan.pipeline_grid == ["g", "n", "t", "k"]
    # t: groups that share an aligned row block write it in turn (aligned_tiles)
    assert [plan.axes[a].semantics for a in plan.pipeline_grid] == ["parallel", "parallel", "arbitrary", "arbitrary"]
    assert "dimension_semantics=(pltpu.PARALLEL, pltpu.ARBITRARY, pltpu.ARBITRARY)" in checked_in_module_source()


def checked_in_module_source():
    return (SPECS.parent / "generated" / "grouped_gemm.py").read_text()


def test_dense_tails_are_bounded_in_the_pipeline():
    source = (SPECS.parent / "generated" / "grouped_gemm.py").read_text()
    assert "pl.BoundedSlice(block_k)" in source and "_bounded_tile(k_index_held(g_index, n_index, t_index, k_index), block_k, k)" in source
    assert "_bounded_tile(n_index, block_n, n)" in source


@pytest.mark.parametrize("variant", ["checked in", "grid lowering"])
def test_grouped_gemm_lowers_for_tpu(tmp_path, variant):
    mod = module(tmp_path, variant)
    from codegen.build import plan_spec

    _, plan = plan_spec(SPECS / "grouped_gemm.yaml")
    case = Case("lowering", {"t": 1000, "g": 4, "k": K, "n": N}, maxima={"max_group_size": 512})
    assert "tpu_custom_call" in lower_for_tpu(mod, plan, case)


def test_a_max_below_the_block_keeps_the_block_aligned(nan_interpret):
    """max_group_size 5 would make a 5-row block, which a pipeline cannot tile; it rounds to 16."""
    lhs, rhs, offsets = inputs([3, 0, 5, 1])
    got = checked_in_module("grouped_gemm").grouped_gemm(
        lhs, rhs, jnp.asarray(offsets), max_group_size=5, interpret=nan_interpret
    )
    np.testing.assert_allclose(np.asarray(got), reference(lhs, rhs, offsets), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("variant", ["checked in", "grid lowering"])
def test_tiles_past_a_groups_end_fetch_nothing(tmp_path, variant):
    """idle_tiles_hold: raising max_group_size launches more tiles past each group's end,
    and with the rule they move no byte; off, each walks K again and fetches rhs and lhs."""
    import sys

    from conftest import ROOT, with_rule

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from dma_traffic import counting_traffic, interpret_params

    lhs, rhs, offsets = inputs([3 * BLOCK_T, 1, 0, BLOCK_T + 1])
    text = VARIANTS[variant] or SPEC
    on = load_module(build_text(tmp_path, text).source, "grouped_gemm")
    off = load_module(build_text(tmp_path, with_rule(text, "idle_tiles_hold", "off")).source, "grouped_gemm")
    moved = {}
    for name, mod, max_size in (("on", on, 3 * BLOCK_T), ("on", on, 6 * BLOCK_T), ("off", off, 3 * BLOCK_T)):
        with counting_traffic() as traffic:
            got = mod.grouped_gemm(lhs, rhs, jnp.asarray(offsets), max_group_size=max_size, block_t=BLOCK_T,
                                   interpret=interpret_params(traffic))
        np.testing.assert_allclose(np.asarray(got), reference(lhs, rhs, offsets), rtol=1e-5, atol=1e-3)
        moved[name, max_size] = traffic.hbm_to_vmem
    assert moved["on", 3 * BLOCK_T] == moved["on", 6 * BLOCK_T]
    assert moved["off", 3 * BLOCK_T] > moved["on", 3 * BLOCK_T]


def real_tiles(sizes, block):
    """Each group's row blocks, aligned to the array (aligned_tiles): those its rows overlap."""
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return [(g, i) for g, (start, end) in enumerate(zip(offsets[:-1], offsets[1:]))
            for i in range((end - 1) // block - start // block + 1 if end > start else 0)]


def visit_count(sizes, block):
    """The visits the entry point launches: at most one shared block per group boundary."""
    g, total = len(sizes), sum(sizes)
    return min(g * -(-(max(sizes) + block - 1) // block), -(-total // block) + g - 1)


@pytest.mark.parametrize("sizes", [[3 * BLOCK_T, 1, 0, BLOCK_T + 1], [0, 0, 5], [0, BLOCK_T, 0], [BLOCK_T] * 4, [7],
                                   [5, 5, 5, 40, 1]])
def test_visits_are_each_groups_real_tiles_in_order(sizes):
    """real_tiles_only's maps: every real tile once, group by group, empty groups skipped;
    the visits after them stay in the last real tile's group, past its end (they do nothing)."""
    mod = checked_in_module("grouped_gemm")
    real = real_tiles(sizes, BLOCK_T)
    tiles = np.bincount([g for g, _ in real], minlength=len(sizes)).astype(np.int32)
    visits = visit_count(sizes, BLOCK_T)
    segment, tile = (np.asarray(a) for a in mod._visited_tiles(jnp.asarray(tiles), visits))
    assert len(real) <= visits == len(segment) == len(tile)
    assert list(zip(segment.tolist(), tile.tolist()))[: len(real)] == real
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    for s, i in zip(segment[len(real):], tile[len(real):]):
        assert s == real[-1][0] and (offsets[s] // BLOCK_T + i) * BLOCK_T >= offsets[s + 1]


def test_the_pipeline_steps_over_real_tiles_only(tmp_path):
    """real_tiles_only: a group's tiles past its end and an empty group launch no pipeline
    step, however large max_group_size; off, every group launches cdiv(max, block) tiles.
    Both with blocks that start at each group's first row, which off has anyway (n is walked
    between one group and the next, so aligned_tiles stands down)."""
    import sys

    from conftest import ROOT, with_rule

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from dma_traffic import counting_traffic, interpret_params

    sizes = [3 * BLOCK_T, 1, 0, BLOCK_T + 1]
    lhs, rhs, offsets = inputs(sizes)
    segment_aligned = with_rule(SPEC, "aligned_tiles", "off")
    on = build_text(tmp_path, segment_aligned)
    off = build_text(tmp_path, with_rule(segment_aligned, "real_tiles_only", "off"))
    assert on.plan.visited_tiles and not off.plan.visited_tiles
    assert not on.plan.aligned_tiles and not off.plan.aligned_tiles
    traffic = {}
    for name, built in (("on", on), ("off", off)):
        with counting_traffic() as traffic[name]:
            got = load_module(built.source, "grouped_gemm").grouped_gemm(
                lhs, rhs, jnp.asarray(offsets), max_group_size=6 * BLOCK_T, block_t=BLOCK_T,
                interpret=interpret_params(traffic[name]))
        np.testing.assert_allclose(np.asarray(got), reference(lhs, rhs, offsets), rtol=1e-5, atol=1e-3)
    n_tiles, k_tiles = -(-N // 128), -(-K // 128)
    # 6 real row tiles, and one visit over (each group adds at most one partial tile)
    assert traffic["on"].pipeline_grid == (n_tiles, 7, k_tiles)
    assert traffic["off"].pipeline_grid == (len(sizes), n_tiles, 6, k_tiles)
    # idle_tiles_hold keeps a launched idle tile from walking K, but the empty group's tile
    # still moves onto that group's rhs block: never visited, it fetches nothing
    assert traffic["on"].hbm_to_vmem < traffic["off"].hbm_to_vmem


def test_groups_share_aligned_row_blocks(tmp_path):
    """aligned_tiles: the visits walk the row blocks of the array, a block two groups share
    once for each (block 3 here, groups 1 and 3 around the empty group 2), and every row of
    out is written by its own group's visit and kept by the other's."""
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from dma_traffic import counting_traffic, interpret_params

    sizes = [3 * BLOCK_T, 1, 0, BLOCK_T + 1]
    traffic = {}
    for name, groups in (("shared", sizes), ("one group", [sum(sizes)])):
        lhs, rhs, offsets = inputs(groups, seed=3)
        with counting_traffic() as traffic[name]:
            got = checked_in_module("grouped_gemm").grouped_gemm(
                lhs, rhs, jnp.asarray(offsets), max_group_size=6 * BLOCK_T, block_t=BLOCK_T,
                interpret=interpret_params(traffic[name]))
        np.testing.assert_allclose(np.asarray(got), reference(lhs, rhs, offsets), rtol=1e-5, atol=1e-3)
    assert real_tiles(sizes, BLOCK_T) == [(0, 0), (0, 1), (0, 2), (1, 0), (3, 0), (3, 1)]
    assert len(real_tiles(sizes, BLOCK_T)) == 6 and visit_count(sizes, BLOCK_T) == 8
    assert traffic["shared"].pipeline_grid == (-(-N // 128), 8, -(-K // 128))
    # out's 5 row blocks are each written back once per n block, the shared one too: as
    # many bytes as one group over the same rows, which shares no block
    assert traffic["shared"].vmem_to_hbm == traffic["one group"].vmem_to_hbm
