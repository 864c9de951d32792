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
