"""Kernels whose operands line up by axis name: row norms with per-column weights, and a
matmul with a per-column bias. Run in TPU interpret mode on CPU against numpy written from
the math; uninitialized memory is NaN so that a read past an edge shows."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from codegen.verify import Case, lower_for_tpu

from conftest import SPECS, assert_compiles, build_text, checked_in_module

RNG = np.random.default_rng(7)


def normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def close(got, want, tol=1e-4):
    got = np.asarray(got, dtype=np.float64)
    assert not np.isnan(got).any(), "NaN in output: a read of uninitialized memory reached it"
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# (rows, columns, block_m): a tail of one row, a tail one short of a block, aligned, one row
NORM_SHAPES = [(8 * 3 + 1, 100, 8), (64 * 3 - 1, 256, 64), (64 * 4, 384, 64), (1, 7, 64)]


@pytest.mark.parametrize("m, n, block_m", NORM_SHAPES)
def test_rmsnorm(nan_interpret, m, n, block_m):
    x, w = normal(m, n) * 3, normal(n)
    out = checked_in_module("rmsnorm").rmsnorm(x, w, block_m=block_m, interpret=nan_interpret)
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64**2).mean(axis=1, keepdims=True) + 1e-6) * w
    close(out, want)


@pytest.mark.parametrize("m, n, block_m", NORM_SHAPES)
def test_layernorm(nan_interpret, m, n, block_m):
    x, gamma, beta = normal(m, n) * 2 + 1.5, normal(n), normal(n)
    out = checked_in_module("layernorm").layernorm(x, gamma, beta, block_m=block_m, interpret=nan_interpret)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=1, keepdims=True)
    close(out, (x64 - mean) / np.sqrt(var + 1e-5) * gamma + beta)


def test_rmsnorm_weight_is_one_resident_block():
    """w has no axis on the grid: one buffer, the same block at every step."""
    module = checked_in_module("rmsnorm")
    jaxpr = jax.make_jaxpr(lambda x, w: module.rmsnorm(x, w, block_m=8))(
        jax.ShapeDtypeStruct((32, 128), jnp.float32), jax.ShapeDtypeStruct((128,), jnp.float32)
    )
    call = next(e for e in jaxpr.eqns if e.primitive.name == "pallas_call")
    w_mapping = call.params["grid_mapping"].block_mappings[1]
    assert w_mapping.array_aval.shape == (128,) and len(w_mapping.block_shape) == 1
    assert w_mapping.pipeline_mode is not None and w_mapping.pipeline_mode.buffer_count == 1


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def bf16(*shape):
    return normal(*shape).astype(ml_dtypes.bfloat16)


@pytest.mark.parametrize(
    "m, k, n, blocks",
    [
        (16 * 3 + 5, 128 * 3 + 7, 128 * 3 + 1, dict(block_m=16, block_n=128, block_k=128)),   # tails on M, N and K
        (16 * 3 - 1, 128 * 4 - 1, 128 * 3 - 1, dict(block_m=16, block_n=128, block_k=128)),  # one short of a block
        (256, 512, 512, dict(block_m=64, block_n=128, block_k=128)),                          # aligned
        (1, 5, 3, {}),                                                                         # one row, under a block
    ],
)
def test_matmul_bias_gelu(nan_interpret, m, k, n, blocks):
    a, b, bias = bf16(m, k), bf16(k, n), normal(n)
    out = checked_in_module("matmul_bias_gelu").matmul_bias_gelu(a, b, bias, **blocks, interpret=nan_interpret)
    assert out.dtype == jnp.float32
    want = gelu_tanh(a.astype(np.float64) @ b.astype(np.float64) + bias)
    close(out, want, tol=2e-4)


SIZES = {
    "rmsnorm": {"m": 1024, "n": 4096},
    "layernorm": {"m": 1024, "n": 4096},
    "matmul_bias_gelu": {"m": 512, "n": 1024, "k": 2048},
}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_lowers_for_tpu(name):
    from codegen.build import plan_spec

    plan = plan_spec(SPECS / f"{name}.yaml")[1]
    module = checked_in_module(name)
    for sizes in (SIZES[name], {a: n - 3 for a, n in SIZES[name].items()}):
        assert "tpu_custom_call" in lower_for_tpu(module, plan, Case("t", sizes))


# Attention that also writes its logsumexp, and attention under a key mask per batch:
# 'head' (or 'batch') is a major dim of q, k, v and out, and the second-to-last of lse (or
# kmask), which takes it one index at a time too, with a unit dim before its last.
LSE_ATTENTION = (SPECS / "attention.yaml").read_text().split("\ntune:")[0].replace(
    "  out: {dims: [batch, head, sq, d], dtype: float32}\n",
    "  out: {dims: [batch, head, sq, d], dtype: float32}\n  lse: {dims: [batch, head, sq], dtype: float32}\n",
).replace("  out: acc / l", "  out: acc / l\n  lse: m + log(l)") + "\n"
KEY_MASKED_ATTENTION = (SPECS / "attention.yaml").read_text().split("\ntune:")[0].replace(
    "  out: {dims: [batch, head, sq, d], dtype: float32}\n",
    "  out: {dims: [batch, head, sq, d], dtype: float32}\n  kmask: {dims: [batch, skv], dtype: int32}\n",
).replace("  s: dot(q, k, over=d) * rsqrt(extent(d))", "  s: where(kmask > 0, dot(q, k, over=d) * rsqrt(extent(d)), -1.0e30)").replace(
    "init: -.inf}", "init: -1.0e30}") + "\n"


@pytest.mark.parametrize("text, axis, tensor, block", [(LSE_ATTENTION, "head", "lse", "(None, None, 1, block_sq)"),
                                                      (KEY_MASKED_ATTENTION, "batch", "kmask", "(None, 1, block_skv)")],
                         ids=["lse", "key_mask"])
def test_a_major_axis_held_second_to_last_is_taken_an_index_at_a_time(tmp_path, text, axis, tensor, block):
    from codegen.verify import verify_built

    built = build_text(tmp_path, text)
    assert built.plan.axes[axis].mode == "squeezed" and tensor in built.plan.unit_major
    assert f"pl.BlockSpec({block}, {tensor}_index_map)" in built.source
    log = []
    assert verify_built(built, log=log.append), "\n".join(log)


@pytest.mark.parametrize("chip", ["v5e", "v6e", "v7x"])
@pytest.mark.parametrize("text", [LSE_ATTENTION, KEY_MASKED_ATTENTION], ids=["lse", "key_mask"])
def test_a_major_axis_held_second_to_last_compiles(tmp_path, text, chip):
    built = build_text(tmp_path, text)
    assert_compiles(built, chip)
