"""Per-segment outputs of jagged kernels, and booleans broadcast to a higher rank.

An empty segment still gets its value per segment: the identity of a reduction over its
(no) rows, taken through the statement, where keep_whole holds the axis in one tile per
segment, under both jagged lowerings, and beside a jagged axis walked in tiles. The
kernels run through verify (interpret mode, uninitialized memory = NaN, against the
untiled numpy reference), whose jagged cases include empty segments.

A boolean of lower rank than its consumer is brought to the consumer's rank through its
operands (`r[:, None] > 0`), never by reshaping it (`(r > 0)[:, None]`), which Mosaic
refuses: `unsupported shape cast ... vector<256xi1> -> vector<256x1xi1>`.
"""

import ast

import jax.numpy as jnp
import numpy as np
import pytest

from codegen.report import format_plan
from codegen.verify import verify_built

from conftest import GENERATED, SCALED_ROWS, assert_compiles, build_text, with_rule

# The sum of exp(x - the segment's max) over each segment: a reduction used against its own
# axis, so keep_whole holds each segment of t in one tile; an empty segment gives 0.
MIN_EMPTY_KEEPWHOLE = """name: min_empty_keepwhole
doc: Per-segment sum of exp(x - segment max); an empty segment should give 0.
axes:
  b: {}
  t: {jagged: {offsets: offsets, segment: b, max: max_seq_len}, block: 64}
  d: {max: 128}
tensors:
  x: {dims: [t, d], dtype: float32}
  offsets: {dims: [b+1], dtype: int32}
  out: {dims: [b, d], dtype: float32}
compute:
  mx: max(x, over=t)
  out: sum(exp(x - mx), over=t)
"""

KEEP_WHOLE_SPECS = {
    "sum": MIN_EMPTY_KEEPWHOLE,
    "max": MIN_EMPTY_KEEPWHOLE.replace("out: sum(exp(x - mx), over=t)", "out: max(exp(x - mx), over=t)"),
    "min": MIN_EMPTY_KEEPWHOLE.replace("out: sum(exp(x - mx), over=t)", "out: min(x - mx, over=t) * 0.5"),
    "grid": MIN_EMPTY_KEEPWHOLE + "lowering: grid\n",
    "max, grid": MIN_EMPTY_KEEPWHOLE.replace("out: sum(exp(x - mx), over=t)", "out: max(exp(x - mx), over=t)")
    + "lowering: grid\n",
}

# A jagged softmax that also writes each segment's logsumexp.
SOFTMAX_WITH_LSE = """name: softmax_lse
axes:
  b: {}
  t: {jagged: {offsets: offsets, segment: b, max: max_seq_len}, block: 512}
  h: {max: 128}
tensors:
  x: {dims: [t, h], dtype: float32}
  offsets: {dims: [b+1], dtype: int32}
  out: {dims: [t, h], dtype: float32}
  lse: {dims: [b, h], dtype: float32}
compute:
  row_max: max(x, over=t)
  e: exp(x - row_max)
  l: sum(e, over=t)
  out: e / l
  lse: row_max + log(l)
"""

# keep_whole beside an ordered axis: the per-segment output is written at the last step of k.
WHOLE_BESIDE_ORDERED = """name: whole_beside_ordered
axes:
  b: {}
  t: {jagged: {offsets: offsets, segment: b, max: max_seq_len}, block: 64}
  k: {block: 128}
  d: {max: 128}
tensors:
  x: {dims: [t, k], dtype: float32}
  w: {dims: [k, d], dtype: float32}
  offsets: {dims: [b+1], dtype: int32}
  out: {dims: [b, d], dtype: float32}
accumulators:
  acc: {over: k, dims: [t, d], init: 0}
compute:
  acc: acc + dot(x, w, over=k)
  out: sum(exp(acc - max(acc, over=t)), over=t)
"""

def verified(built):
    log = []
    ok = verify_built(built, log=log.append)
    assert ok, "\n".join(log)
    assert any("t=[0, " in line for line in log)  # an empty segment was among the cases
    return log


@pytest.mark.parametrize("variant", sorted(KEEP_WHOLE_SPECS))
def test_keep_whole_writes_the_output_of_an_empty_segment(tmp_path, variant):
    built = build_text(tmp_path, KEEP_WHOLE_SPECS[variant])
    assert built.plan.axes["t"].whole  # keep_whole fired: one tile per segment
    assert built.plan.lowering == ("grid" if "grid" in variant else "outer_pipeline")
    verified(built)
    # the one tile of a segment always does its work, an empty segment's too
    assert "tile_valid" not in built.source


def test_keep_whole_off_still_writes_the_output_of_an_empty_segment(tmp_path):
    built = build_text(tmp_path, with_rule(MIN_EMPTY_KEEPWHOLE, "keep_whole", "off"))
    assert not built.plan.axes["t"].whole and built.plan.ir.passes == 2
    verified(built)


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log")  # the reference's lse of nothing
def test_jagged_softmax_writes_the_logsumexp_of_an_empty_segment(tmp_path):
    built = build_text(tmp_path, SOFTMAX_WITH_LSE)
    assert built.plan.axes["t"].whole
    verified(built)
    grid = build_text(tmp_path, SOFTMAX_WITH_LSE + "lowering: grid\n")
    verified(grid)


def test_keep_whole_beside_an_ordered_axis_writes_every_segment(tmp_path):
    built = build_text(tmp_path, WHOLE_BESIDE_ORDERED)
    assert built.plan.axes["t"].whole and built.plan.ir.ordered_axis == "k"
    # no tile of t is ever idle: it holds no block of k back
    verified(built)
    assert "idle_tiles_hold  on      -        skipped  no tile is launched past its segment's end" in format_plan(built.plan)


@pytest.mark.parametrize("state", ["on", "off"])
def test_a_per_segment_output_beside_tiles_of_a_jagged_axis(tmp_path, state):
    built = build_text(tmp_path, with_rule(SCALED_ROWS, "aligned_tiles", state))
    assert built.plan.aligned_tiles == ({"t"} if state == "on" else set())
    verified(built)
    assert "an empty segment's first still writes z" in built.source
    assert "| (t_index == 0)" in built.source


# --- booleans of lower rank --------------------------------------------------------

MIN_CMP_M = """name: min_cmp_m
doc: Zero the rows whose float row flag is not positive.
axes:
  m: {block: 256}
  n: {max: 128}
tensors:
  x: {dims: [m, n], dtype: float32}
  r: {dims: [m], dtype: float32}
  out: {dims: [m, n], dtype: float32}
compute:
  out: where(r > 0, x, 0)
"""

# Combined booleans, a named one read at its own rank and at a higher one, and negations.
NAMED_BOOLEANS = """name: named_booleans
axes:
  m: {block: 256}
  n: {max: 128}
tensors:
  x: {dims: [m, n], dtype: float32}
  r: {dims: [m], dtype: float32}
  s: {dims: [n], dtype: float32}
  rr: {dims: [m], dtype: float32}
  out: {dims: [m, n], dtype: float32}
  out2: {dims: [m, n], dtype: float32}
compute:
  keep: (r * 2 > 0) & ~(r < -1)
  rr: where(keep, r, 0)
  out: where(keep | (x > 3), x, 0)
  out2: where(~keep & (s > 0), -x, where(keep, x, 1))
"""

BOOLEAN_OPS = (ast.BitAnd, ast.BitOr)


def is_boolean(node: ast.AST, booleans: set[str]) -> bool:
    """Whether a generated expression is a boolean: a comparison, a combination of them, or
    a name bound to one."""
    if isinstance(node, ast.Compare):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, BOOLEAN_OPS):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
        return True
    return isinstance(node, ast.Name) and node.id in booleans


def expanded_booleans(source: str) -> list[str]:
    """Every `b[..., None, ...]` in `source` whose `b` is a boolean."""
    tree = ast.parse(source)
    booleans = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and is_boolean(node.value, set())
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Subscript):
            continue
        index = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if any(isinstance(i, ast.Constant) and i.value is None for i in index) and is_boolean(node.value, booleans):
            found.append(ast.unparse(node))
    return found


def test_the_check_sees_a_boolean_expanded():
    assert expanded_booleans("y = jnp.where((r > 0)[:, None], x, 0)") == ["(r > 0)[:, None]"]
    assert expanded_booleans("keep = r > 0\ny = jnp.where(keep[:, None], x, 0)") == ["keep[:, None]"]
    assert expanded_booleans("y = jnp.where(r[:, None] > 0, x, 0)") == []


def test_a_comparison_of_lower_rank_broadcasts_its_operands(tmp_path):
    built = build_text(tmp_path, MIN_CMP_M)
    assert "jnp.where(r[:, None] > 0, x, 0)" in built.source
    assert expanded_booleans(built.source) == []
    log = []
    assert verify_built(built, log=log.append), "\n".join(log)


def test_named_and_combined_booleans_broadcast_their_operands(tmp_path):
    built = build_text(tmp_path, NAMED_BOOLEANS)
    assert expanded_booleans(built.source) == []
    assert "keep = (r * 2 > 0) & ~(r < -1)" in built.source  # read at its own rank by rr
    assert "~(r[:, None] < -1)" in built.source
    log = []
    assert verify_built(built, log=log.append), "\n".join(log)


def test_a_named_boolean_read_only_at_a_higher_rank_is_not_bound(tmp_path):
    """Its consumers compute it again from its operands: a binding nobody reads would fail ruff."""
    text = MIN_CMP_M.replace("  out: where(r > 0, x, 0)\n", "  keep: r > 0\n  out: where(keep, x, 0)\n")
    built = build_text(tmp_path, text)
    assert "keep" not in built.source
    assert "jnp.where(r[:, None] > 0, x, 0)" in built.source


@pytest.mark.parametrize("name", sorted(p.stem for p in GENERATED.glob("*.py")))
def test_no_checked_in_module_expands_a_boolean(name):
    assert expanded_booleans((GENERATED / f"{name}.py").read_text()) == []


def test_min_cmp_m_compiles_for_v6e(tmp_path):
    """Mosaic refused the boolean reshape: `infer-vector-layout: unsupported shape cast`."""
    built = build_text(tmp_path, MIN_CMP_M)
    assert_compiles(built, "v6e")


def test_a_max_of_zero_runs_one_tile_per_segment():
    """Every segment empty, so the caller's max is 0: a block of 0 divided the grid by zero."""
    from conftest import checked_in_module

    module = checked_in_module("segment_sum")
    got = module.segment_sum(jnp.zeros((0, 128), jnp.float32), jnp.zeros((4,), jnp.int32), max_seq_len=0, interpret=True)
    np.testing.assert_array_equal(np.asarray(got), np.zeros((3, 128), np.float32))
    assert "max(max_seq_len, 1)" in (GENERATED / "segment_sum.py").read_text()


# --- rank-1 tensors along a jagged axis ----------------------------------------------

ROW_WEIGHTED_SUMS = """name: row_weighted_sums
doc: Each segment's rows, weighted per row, summed.
axes:
  b: {}
  t: {jagged: {offsets: offsets, segment: b, max: max_seq_len}, block: 128}
  d: {max: 128}
tensors:
  x: {dims: [t, d], dtype: float32}
  wt: {dims: [t], dtype: float32}
  offsets: {dims: [b+1], dtype: int32}
  out: {dims: [b, d], dtype: float32}
compute:
  out: sum(x * wt, over=t)
"""


def test_a_rank_1_jagged_tensor_needs_blocks_aligned_to_the_array(tmp_path):
    """Blocks that start at a segment's first row compiled on no chip ("dynamic offset ...
    multiple of the word size"); aligned ones do."""
    from codegen.errors import SpecError
    from codegen.tune import rule_candidates

    built = build_text(tmp_path, ROW_WEIGHTED_SUMS)
    assert built.plan.aligned_tiles == {"t"}
    verified(built)
    with pytest.raises(SpecError, match=r"'wt' \[t\] would be read in blocks that start at each segment's first row") as err:
        build_text(tmp_path, with_rule(ROW_WEIGHTED_SUMS, "aligned_tiles", "off"))
    assert err.value.location.line == 9
    # tuning tries the rule off, and says why it cannot
    def rebuild(switched):
        return build_text(tmp_path, ROW_WEIGHTED_SUMS + "rules: {%s}\n" % ", ".join(
            f"{name}: {'on' if on else 'off'}" for name, on in switched.items()))

    tried, skipped = rule_candidates(built, rebuild)
    assert "aligned_tiles" not in tried and any(s.startswith("aligned_tiles: the spec does not build") for s in skipped)


def test_a_rank_1_jagged_tensor_compiles_with_aligned_blocks(tmp_path):
    built = build_text(tmp_path, ROW_WEIGHTED_SUMS)
    assert_compiles(built, "v6e")
