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
