"""Spec-language features, each built from a small spec and run in TPU interpret mode on
CPU against numpy written from the math: broadcasting by axis name, reductions written to
lower-rank outputs, positions, comparisons and selection, runtime scalars, and per-segment
extents and reductions over jagged axes."""

import re

import numpy as np
import pytest

from codegen.cli import main
from codegen.verify import Case, load_module, lower_for_tpu

from conftest import SPECS, build_text, write_spec

RNG = np.random.default_rng(11)


def normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def close(got, want, tol=1e-4):
    got = np.asarray(got, dtype=np.float64)
    assert not np.isnan(got).any(), "NaN in output: a read of uninitialized memory reached it"
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def build(tmp_path, text):
    built = build_text(tmp_path, text)
    return built, load_module(built.source, built.plan.ir.name)


def spec_error(tmp_path, capsys, text):
    """Builds `text`, which must fail as a located spec error (exit 2); returns the message."""
    path = write_spec(tmp_path, text)
    assert main(["build", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"k\.yaml:\d+:\d+: error: ", err), err
    return err


# --- broadcast by axis name --------------------------------------------------------

BROADCAST = """\
name: k
axes:
  m: {block: 128}
  n: {block: 128}
tensors:
  x: {dims: [m, n], dtype: float32}
  row: {dims: [m], dtype: float32}
  col: {dims: [n], dtype: float32}
  out: {dims: [m, n], dtype: float32}
compute:
  out: row * x + col - row
"""


def test_lower_rank_operands_line_up_by_name(tmp_path, nan_interpret):
    built, module = build(tmp_path, BROADCAST)
    assert "row[:, None]" in built.source and "col[None, :]" in built.source
    x, row, col = normal(300, 260), normal(300), normal(260)
    out = module.k(x, row, col, block_m=128, block_n=128, interpret=nan_interpret)
    close(out, row[:, None] * x.astype(np.float64) + col[None, :] - row[:, None])


def test_two_operands_with_axes_of_their_own_merge_in_axis_order(tmp_path, nan_interpret):
    text = """\
name: k
axes:
  m: {block: 128}
  n: {block: 128}
tensors:
  row: {dims: [m], dtype: float32}
  col: {dims: [n], dtype: float32}
  out: {dims: [m, n], dtype: float32}
compute:
  out: col * row
"""
    _, module = build(tmp_path, text)
    row, col = normal(200), normal(130)
    close(module.k(row, col, interpret=nan_interpret), np.outer(row, col))


def test_shared_axes_in_another_order_is_a_spec_error(tmp_path, capsys):
    text = BROADCAST.replace("row: {dims: [m]", "row: {dims: [n, m]").replace("row * x + col - row", "row * x + col")
    err = spec_error(tmp_path, capsys, text)
    assert "cannot line up operands with dims [n, m] and [m, n]" in err
    assert "k.yaml:11:" in err


# --- reductions written to lower-rank outputs ---------------------------------------

def test_row_sum_to_a_lower_rank_output(tmp_path, nan_interpret):
    text = """\
name: k
axes:
  m: {block: 128}
  n: {max: 512}
tensors:
  x: {dims: [m, n], dtype: float32}
  total: {dims: [m], dtype: float32}
  peak: {dims: [m], dtype: float32}
compute:
  total: sum(x, over=n)
  peak: max(x, over=n)
"""
    built, module = build(tmp_path, text)
    assert "jnp.squeeze(" in built.source
    x = normal(300, 200)
    total, peak = module.k(x, interpret=nan_interpret)
    close(total, x.astype(np.float64).sum(axis=1))
    close(peak, x.max(axis=1))


def test_reduction_over_a_tiled_axis_to_a_lower_rank_output(tmp_path, nan_interpret):
    text = """\
name: k
axes:
  m: {block: 128}
  n: {block: 128}
tensors:
  x: {dims: [m, n], dtype: float32}
  total: {dims: [m], dtype: float32}
compute:
  total: sum(x, over=n)
"""
    _, module = build(tmp_path, text)
    x = normal(260, 3 * 128 + 5)  # three blocks of n and a tail
    close(module.k(x, interpret=nan_interpret), x.astype(np.float64).sum(axis=1), tol=3e-4)


def test_attention_writes_its_log_sum_exp(tmp_path, nan_interpret):
    text = (SPECS / "attention.yaml").read_text()
    text = text.replace("  out: {dims: [batch, head, sq, d], dtype: float32}",
                        "  out: {dims: [batch, head, sq, d], dtype: float32}\n  lse: {dims: [batch, head, sq], dtype: float32}")
    text = text.replace("  out: acc / l", "  out: acc / l\n  lse: m + log(l)")
    text = text.replace("  head: {}", "  head: {max: 4}")  # [head, sq] are lse's last two dims: whole heads
    built, module = build(tmp_path, text)
    q, k, v = normal(1, 2, 300, 64), normal(1, 2, 3 * 128 + 1, 64), normal(1, 2, 3 * 128 + 1, 64)
    out, lse = module.attention(q, k, v, block_sq=128, block_skv=128, interpret=nan_interpret)
    s = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), k) / 8.0
    top = s.max(axis=-1, keepdims=True)
    want_lse = (top + np.log(np.exp(s - top).sum(axis=-1, keepdims=True)))[..., 0]
    close(lse, want_lse)
    close(out, np.einsum("bhqk,bhkd->bhqd", np.exp(s - want_lse[..., None]), v))
    assert "tpu_custom_call" in lower_for_tpu(
        module, built.plan, Case("t", {"batch": 1, "head": 2, "sq": 256, "skv": 512, "d": 64})
    )


# --- runtime scalars and shared keywords ---------------------------------------------

def offsets(lengths):
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)


SELF_ATTENTION = """\
name: k
axes:
  b: {}
  sq: {jagged: {offsets: seq_offsets, segment: b, max: max_seq_len}, block: 8}
  skv: {jagged: {offsets: seq_offsets, segment: b, max: max_seq_len}, block: 8}
  d: {max: 128}
tensors:
  q: {dims: [sq, d], dtype: float32}
  k: {dims: [skv, d], dtype: float32}
  v: {dims: [skv, d], dtype: float32}
  seq_offsets: {dims: [b+1], dtype: int32}
  out: {dims: [sq, d], dtype: float32}
compute:
  s: dot(q, k, over=d)
  out: dot(silu(s) / max_seq_len, v, over=skv)
"""


def test_a_shared_max_is_one_keyword_and_a_runtime_scalar(tmp_path, nan_interpret):
    built, module = build(tmp_path, SELF_ATTENTION)
    signature = next(line for line in built.source.splitlines() if line.startswith("def k("))
    assert signature.count("max_seq_len") == 1
    lengths, longest = [0, 1, 8, 9, 23, 24, 7], 24
    o = offsets(lengths)
    q, k, v = (normal(int(o[-1]), 16) for _ in range(3))
    out = module.k(q, k, v, o, max_seq_len=longest, interpret=nan_interpret)
    want = np.zeros((int(o[-1]), 16))
    for b in range(len(lengths)):
        rows = slice(o[b], o[b + 1])
        s = q[rows].astype(np.float64) @ k[rows].T.astype(np.float64)
        want[rows] = (s / (1 + np.exp(-s)) / longest) @ v[rows]
    close(out, want, tol=2e-4)


def test_runtime_scalar_in_the_reference(tmp_path):
    from codegen.reference import reference

    built, _ = build(tmp_path, SELF_ATTENTION)
    o = offsets([2, 3])
    q = k = v = np.ones((5, 4), np.float32)
    got = reference(built.plan.ir, {"q": q, "k": k, "v": v, "seq_offsets": o}, {"sq": 5, "skv": 5, "b": 2, "d": 4, "max_seq_len": 10})
    s = 4.0
    assert np.allclose(got["out"][0], 2 * s / (1 + np.exp(-s)) / 10)


def test_an_unknown_name_suggests_the_runtime_scalar(tmp_path, capsys):
    err = spec_error(tmp_path, capsys, SELF_ATTENTION.replace("/ max_seq_len", "/ max_seq_lem"))
    assert "undefined name 'max_seq_lem'" in err and "max_seq_len" in err


def test_a_module_that_parses_but_does_not_compile_is_a_generator_bug():
    from codegen.errors import GeneratorBug
    from codegen.source_check import check_source

    with pytest.raises(GeneratorBug, match="does not compile: duplicate argument 'n'"):
        check_source("def f(x, *, n, n):\n    return x\n", "k.py")


# --- positions, comparisons and selection --------------------------------------------

PICK = """\
name: k
axes:
  m: {block: 128}
  v: {block: 128}
tensors:
  logits: {dims: [m, v], dtype: float32}
  targets: {dims: [m], dtype: int32}
  picked: {dims: [m], dtype: float32}
compute:
  picked: sum(where(index(v) == targets, logits, 0), over=v)
"""


@pytest.mark.parametrize("v_axis", ["{block: 128}", "{max: 512}"])
def test_index_compared_with_an_int32_tensor(tmp_path, nan_interpret, v_axis):
    built, module = build(tmp_path, PICK.replace("v: {block: 128}", f"v: {v_axis}"))
    assert "lax.broadcasted_iota(jnp.int32" in built.source
    m, v = 3 * 128 + 1, 3 * 128 + 7  # three blocks and a tail on both axes
    logits = normal(m, v)
    targets = RNG.integers(-2, v + 2, size=m).astype(np.int32)  # some out of range: nothing picked
    got = module.k(logits, targets, interpret=nan_interpret)
    inside = (targets >= 0) & (targets < v)
    want = np.where(inside, logits[np.arange(m), np.clip(targets, 0, v - 1)], 0.0)
    close(got, want)
    assert "tpu_custom_call" in lower_for_tpu(module, built.plan, Case("t", {"m": 256, "v": 512}))


def test_comparisons_and_logic_in_the_reference_and_the_kernel(tmp_path, nan_interpret):
    text = """\
name: k
axes:
  m: {block: 8}
  n: {block: 128}
tensors:
  x: {dims: [m, n], dtype: float32}
  counts: {dims: [m, n], dtype: int32}
  out: {dims: [m, n], dtype: float32}
compute:
  band: (x > -0.5) & (x <= 0.5) | ~(counts != 3)
  out: where(band, x * counts + 1, -inf) + where(index(m) >= index(n), 0, 2 * x)
"""
    built, module = build(tmp_path, text)
    assert "(x > -0.5) & (x <= 0.5) | ~(counts != 3)" in built.source
    x, counts = normal(3 * 8 + 3, 3 * 128 + 1), RNG.integers(0, 6, size=(3 * 8 + 3, 3 * 128 + 1)).astype(np.int32)
    got = np.asarray(module.k(x, counts, interpret=nan_interpret), np.float64)
    band = ((x > -0.5) & (x <= 0.5)) | (counts == 3)
    rows, cols = np.indices(x.shape)
    want = np.where(band, x.astype(np.float64) * counts + 1, -np.inf) + np.where(rows >= cols, 0, 2.0 * x)
    assert np.array_equal(np.isinf(got), np.isinf(want)) and (got[np.isinf(got)] < 0).all()
    close(np.where(np.isinf(got), 0, got), np.where(np.isinf(want), 0, want))

    from codegen.reference import reference

    ref = reference(built.plan.ir, {"x": x, "counts": counts}, {"m": x.shape[0], "n": x.shape[1]})["out"]
    assert np.array_equal(np.isinf(ref), np.isinf(want))
    close(np.where(np.isinf(ref), 0, ref), np.where(np.isinf(want), 0, want))


def test_causal_attention_by_position(tmp_path, nan_interpret):
    text = (SPECS / "attention.yaml").read_text().replace(
        "  s: dot(q, k, over=d) * rsqrt(extent(d))",
        "  s: where(index(skv) <= index(sq), dot(q, k, over=d) * rsqrt(extent(d)), -inf)",
    )
    built, module = build(tmp_path, text)
    q, k, v = (normal(1, 2, 3 * 64 + 5, 32) for _ in range(3))
    out = module.attention(q, k, v, block_sq=64, block_skv=128, interpret=nan_interpret)
    s = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), k) / np.sqrt(32)
    s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    close(out, np.einsum("bhqk,bhkd->bhqd", p / p.sum(axis=-1, keepdims=True), v))


def test_index_of_a_jagged_axis_counts_from_each_segments_start(tmp_path, nan_interpret):
    text = SELF_ATTENTION.replace("dot(silu(s) / max_seq_len, v, over=skv)",
                                  "dot(where(index(skv) <= index(sq), silu(s), 0) / max_seq_len, v, over=skv)")
    built, module = build(tmp_path, text)
    lengths, longest = [0, 1, 8, 9, 23, 24, 7], 24
    o = offsets(lengths)
    q, k, v = (normal(int(o[-1]), 16) for _ in range(3))
    out = module.k(q, k, v, o, max_seq_len=longest, interpret=nan_interpret)
    want = np.zeros((int(o[-1]), 16))
    for b in range(len(lengths)):
        rows = slice(o[b], o[b + 1])
        s = q[rows].astype(np.float64) @ k[rows].T.astype(np.float64)
        p = np.tril(s / (1 + np.exp(-s))) / longest
        want[rows] = p @ v[rows]
    close(out, want, tol=2e-4)
    sizes = {"b": 4, "sq": 1000, "skv": 1000, "d": 128}
    case = Case("t", sizes, {"sq": [0, 1, 512, 487], "skv": [0, 1, 512, 487]}, {"max_seq_len": 512})
    assert "tpu_custom_call" in lower_for_tpu(module, built.plan, case)


def test_index_of_a_squeezed_axis_is_its_grid_index(tmp_path, nan_interpret):
    text = """\
name: k
axes:
  b: {}
  m: {block: 8}
  n: {max: 128}
tensors:
  x: {dims: [b, m, n], dtype: float32}
  out: {dims: [b, m, n], dtype: float32}
compute:
  out: x * index(b) + index(m)
"""
    built, module = build(tmp_path, text)
    assert "b_index = pl.program_id(0)" in built.source
    x = normal(3, 8 * 3 + 1, 100)
    got = module.k(x, interpret=nan_interpret)
    close(got, x * np.arange(3)[:, None, None] + np.arange(x.shape[1])[None, :, None])


def test_index_of_a_paged_axis_is_the_position_in_the_sequence(tmp_path, nan_interpret):
    import jax.numpy as jnp

    text = (SPECS / "paged_attention.yaml").read_text().replace(
        "  s: dot(q, k_pages, over=d)", "  s: where(index(t) < 20, dot(q, k_pages, over=d), -inf)"
    )
    built, module = build(tmp_path, text)
    sizes = {"b": 8, "kvh": 8, "g": 4, "d": 128, "pages": 64, "num_pages": 1024, "page_size": 16, "t": 1024}
    assert "tpu_custom_call" in lower_for_tpu(module, built.plan, Case("t", sizes))
    rng = np.random.default_rng(3)
    lengths, page, pages, kvh, groups, d = [0, 1, 16, 17, 65, 128], 16, 8, 1, 2, 128
    total = len(lengths) * pages + 2
    table = rng.permutation(total)[: len(lengths) * pages].reshape(len(lengths), pages).astype(np.int32)
    q = jnp.asarray(rng.standard_normal((len(lengths), kvh * groups, d)), jnp.bfloat16)
    kp = jnp.asarray(rng.standard_normal((kvh, total, page, d)), jnp.bfloat16)
    vp = jnp.asarray(rng.standard_normal((kvh, total, page, d)), jnp.bfloat16)
    out = module.paged_attention(q, kp, vp, np.asarray(lengths, np.int32), table, pages_per_compute_block=2,
                                 interpret=nan_interpret)
    q64, k64, v64 = (np.asarray(a, np.float32).astype(np.float64) for a in (q, kp, vp))
    want = np.zeros(q64.shape)
    for i, n in enumerate(lengths):
        pos = np.arange(min(n, 20))  # positions past 19 are masked out
        if not len(pos):
            continue
        keys, values = k64[0, table[i, pos // page], pos % page], v64[0, table[i, pos // page], pos % page]
        for h in range(groups):
            s = keys @ q64[i, h]
            p = np.exp(s - s.max())
            want[i, h] = p / p.sum() @ values
    got = np.asarray(out, np.float32).astype(np.float64)
    assert not np.isnan(got).any()
    assert np.abs(got - want).max() < 3e-2


SYNTAX_ERRORS = [
    ("chained comparison", "out: where(0 < x < 1, x, 0)", "chained comparisons are not supported", 14),
    ("arithmetic on a boolean", "out: (x > 0) * x", "'*' needs a number, but this operand is a boolean", 9),
    ("& on numbers", "out: where(x & (x > 0), x, 0)", "'&' combines booleans, but this operand is a number", 14),
    ("where on a number", "out: where(x, x, 0)", "where() needs a boolean condition", 14),
    ("index of a non-axis", "out: x * index(x)", "index() takes an axis name", 18),
    ("bit shift", "out: x << 2", "unsupported syntax in expression: operator LShift", 8),
]


@pytest.mark.parametrize("what, line, message, col", SYNTAX_ERRORS, ids=[c[0] for c in SYNTAX_ERRORS])
def test_boolean_syntax_errors_are_located(tmp_path, capsys, what, line, message, col):
    text = BROADCAST.replace("  out: row * x + col - row", "  " + line)
    text = text.replace("  row: {dims: [m], dtype: float32}\n  col: {dims: [n], dtype: float32}\n", "")
    err = spec_error(tmp_path, capsys, text)
    assert message in err and f"k.yaml:9:{col}:" in err, err


# --- unsupported combinations ---------------------------------------------------------

JAGGED_ROWS = """\
name: k
axes:
  b: {}
  t: {jagged: {offsets: offsets, segment: b, max: max_seq_len}, block: 8}
  d: {max: 128}
tensors:
  x: {dims: [t, d], dtype: float32}
  offsets: {dims: [b+1], dtype: int32}
  out: {dims: [b], dtype: float32}
compute:
  out: sum(sum(x, over=d), over=t)
"""


def test_an_output_of_one_element_per_segment_is_a_spec_error(tmp_path, capsys):
    err = spec_error(tmp_path, capsys, JAGGED_ROWS)
    assert "k.yaml:9:3: error: every dim of 'out' [b] is a grid axis" in err


def test_a_segments_extent_in_a_float_function(tmp_path, nan_interpret):
    text = JAGGED_ROWS.replace("out: {dims: [b]", "out: {dims: [t, d]").replace(
        "out: sum(sum(x, over=d), over=t)", "out: x * rsqrt(extent(t))")
    _, module = build(tmp_path, text)
    lengths = [0, 1, 8, 9, 23, 24]
    o = offsets(lengths)
    x = normal(int(o[-1]), 128)
    got = module.k(x, o, max_seq_len=24, interpret=nan_interpret)
    close(got, x / np.sqrt(np.repeat(lengths, lengths))[:, None])


@pytest.mark.parametrize("clash", ["params:\n  max_seq_len: 2.0\n", "compute-name"])
def test_a_max_keyword_that_also_names_something_else_is_a_spec_error(tmp_path, capsys, clash):
    if clash == "compute-name":
        text = SELF_ATTENTION.replace("  s: dot(q, k, over=d)", "  max_seq_len: dot(q, k, over=d) * 0").replace(
            "silu(s)", "silu(max_seq_len)")
    else:
        text = SELF_ATTENTION.replace("axes:\n", clash + "axes:\n")
    err = spec_error(tmp_path, capsys, text)
    assert "jagged max 'max_seq_len' clashes with the" in err


def test_attention_with_a_bias_over_the_key_axis(tmp_path, nan_interpret):
    text = (SPECS / "attention.yaml").read_text()
    text = text.replace("  out: {dims: [batch, head, sq, d], dtype: float32}",
                        "  bias: {dims: [skv], dtype: float32}\n  out: {dims: [batch, head, sq, d], dtype: float32}")
    text = text.replace("  s: dot(q, k, over=d) * rsqrt(extent(d))", "  s: dot(q, k, over=d) * rsqrt(extent(d)) + bias")
    built, module = build(tmp_path, text)
    assert "bias[None, :]" in built.source
    q, k, v = normal(2, 1, 3 * 64 + 1, 32), normal(2, 1, 3 * 128 + 9, 32), normal(2, 1, 3 * 128 + 9, 32)
    bias = normal(3 * 128 + 9) * 2
    out = module.attention(q, k, v, bias, block_sq=64, block_skv=128, interpret=nan_interpret)
    s = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), k) / np.sqrt(32) + bias
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    close(out, np.einsum("bhqk,bhkd->bhqd", p / p.sum(axis=-1, keepdims=True), v))


def test_a_rank_one_block_follows_the_tpu_rule_for_rank_one_blocks(tmp_path, capsys):
    text = BROADCAST.replace("n: {block: 128}", "n: {block: 384}")
    err = spec_error(tmp_path, capsys, text)
    assert "block 384 of axis 'n' breaks TPU tiling for 'col', a rank-1 float32 block" in err
    assert "k.yaml:4:" in err
    build(tmp_path, BROADCAST.replace("n: {block: 128}", "n: {block: 2048}"))  # a multiple of 1024: fine


def test_verify_takes_a_max_over_an_empty_segment_as_exact(tmp_path):
    """max over an empty segment is -inf in the kernel and the reference alike."""
    from codegen.verify import max_error, verify_built

    text = JAGGED_ROWS.replace("out: {dims: [b]", "out: {dims: [b, d]").replace(
        "out: sum(sum(x, over=d), over=t)", "out: max(x, over=t)")
    built, _ = build(tmp_path, text)
    assert verify_built(built, log=lambda *_: None)
    assert max_error(np.array([-np.inf, 1.0]), np.array([-np.inf, 2.0])) == 0.5
    assert max_error(np.array([0.0, 1.0]), np.array([-np.inf, 1.0])) == np.inf
