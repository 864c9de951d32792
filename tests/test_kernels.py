"""The generated kernels, run in TPU interpret mode on CPU against hand-written numpy.

The references here are written independently of the spec and of
codegen.reference; inputs include ragged tails and aligned sizes, and
uninitialized memory is NaN so that a missing mask fails.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codegen.verify import Case, load_module, lower_for_tpu

from conftest import DENSE_KERNELS, ROOT, SPECS, build_text, checked_in_module, with_rule

RNG = np.random.default_rng(1234)


def normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def close(got, want, tol=1e-4):
    got = np.asarray(got, dtype=np.float64)
    assert not np.isnan(got).any(), "NaN in output: a read of uninitialized memory reached it"
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def softmax_rows(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attention_reference(q, k, v):
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    s = np.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1])
    return np.einsum("bhqk,bhkd->bhqd", softmax_rows(s), v)


# --- exp -----------------------------------------------------------------------

@pytest.mark.parametrize("shape, blocks", [((100, 300), (64, 128)), ((128, 256), (64, 128)), ((7, 5), (256, 512)), ((512, 1024), (256, 512))])
def test_exp(nan_interpret, shape, blocks):
    x = normal(*shape)
    out = checked_in_module("exp").exp(x, block_m=blocks[0], block_n=blocks[1], interpret=nan_interpret)
    close(out, np.exp(x.astype(np.float64)))


def test_exp_output_is_not_an_input():
    fn = checked_in_module("exp").exp
    jaxpr = jax.make_jaxpr(fn)(jax.ShapeDtypeStruct((16, 128), jnp.float32))
    call = next(e for e in jaxpr.eqns if e.primitive.name == "pallas_call")
    assert len(call.invars) == 1 and call.params["input_output_aliases"] == ()


# --- axpy ----------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(100, 300), (256, 512), (1, 1)])
def test_axpy(nan_interpret, shape):
    x, y = normal(*shape), normal(*shape)
    out = checked_in_module("axpy").axpy(x, y, block_m=64, block_n=128, interpret=nan_interpret)
    close(out, y.astype(np.float64) + 2.0 * x)


def test_axpy_aliases_y_to_its_output():
    fn = checked_in_module("axpy").axpy
    arg = jax.ShapeDtypeStruct((16, 128), jnp.float32)
    jaxpr = jax.make_jaxpr(fn)(arg, arg)
    call = next(e for e in jaxpr.eqns if e.primitive.name == "pallas_call")
    assert call.params["input_output_aliases"] == ((1, 0),)


def test_axpy_alpha_from_a_define(tmp_path, nan_interpret):
    built = build_text(tmp_path, (SPECS / "axpy.yaml").read_text(), overrides={"alpha": -0.5})
    x, y = normal(40, 130), normal(40, 130)
    out = load_module(built.source, "axpy").axpy(x, y, block_m=8, block_n=128, interpret=nan_interpret)
    close(out, y.astype(np.float64) - 0.5 * x)


# --- softmax -------------------------------------------------------------------

@pytest.mark.parametrize("shape, block_m", [((100, 300), 32), ((128, 256), 64), ((3, 1000), 64)])
def test_softmax(nan_interpret, shape, block_m):
    x = normal(*shape) * 4
    out = checked_in_module("softmax").softmax(x, block_m=block_m, interpret=nan_interpret)
    close(out, softmax_rows(x.astype(np.float64)))


# --- bmm -----------------------------------------------------------------------

@pytest.mark.parametrize(
    "b, m, k, n, blocks",
    [
        (2, 100, 200, 300, dict(block_m=64, block_n=128, block_k=128)),   # tails on every axis, K tail masked
        (2, 128, 256, 256, dict(block_m=64, block_n=128, block_k=128)),   # aligned
        (1, 9, 129, 130, dict(block_m=8, block_n=128, block_k=128)),      # one past a block
        (3, 16, 1000, 128, {}),                                           # default blocks, many K steps
    ],
)
def test_bmm(nan_interpret, b, m, k, n, blocks):
    a, bb = normal(b, m, k), normal(b, k, n)
    out = checked_in_module("bmm").bmm(a, bb, **blocks, interpret=nan_interpret)
    close(out, np.matmul(a.astype(np.float64), bb.astype(np.float64)), tol=2e-4)


def test_bmm_without_its_k_mask_reads_nan(nan_interpret):
    """The NaN fill makes a missing tail mask visible: this is what the mask prevents."""
    module = checked_in_module("bmm")
    module._mask_tail = lambda x, axis, start, size, fill: x
    out = np.asarray(module.bmm(normal(1, 16, 200), normal(1, 200, 128), block_k=128, interpret=nan_interpret))
    assert np.isnan(out).any()


# --- attention -----------------------------------------------------------------

@pytest.mark.parametrize(
    "b, h, sq, skv, d, blocks",
    [
        (2, 2, 100, 300, 64, dict(block_sq=64, block_skv=128)),   # Skv tail masked, Sq tail dropped
        (1, 2, 256, 256, 128, {}),                                # aligned, default blocks
        (1, 1, 1, 1, 8, {}),                                      # single query, single key
        (2, 1, 129, 129, 32, dict(block_sq=128, block_skv=128)),  # one past a block
    ],
)
def test_attention(nan_interpret, b, h, sq, skv, d, blocks):
    q, k, v = normal(b, h, sq, d), normal(b, h, skv, d), normal(b, h, skv, d)
    out = checked_in_module("attention").attention(q, k, v, **blocks, interpret=nan_interpret)
    close(out, attention_reference(q, k, v))


def test_attention_with_invariant_load_off_still_matches(tmp_path, nan_interpret):
    built = build_text(tmp_path, with_rule((SPECS / "attention.yaml").read_text(), "invariant_load", "off"))
    q, k, v = normal(1, 2, 100, 64), normal(1, 2, 300, 64), normal(1, 2, 300, 64)
    out = load_module(built.source, "attention").attention(q, k, v, block_sq=64, interpret=nan_interpret)
    close(out, attention_reference(q, k, v))


def test_exp_with_output_only_off_still_matches(tmp_path, nan_interpret):
    built = build_text(tmp_path, (SPECS / "exp.yaml").read_text() + "rules:\n  output_only: off\n")
    x = normal(100, 300)
    module = load_module(built.source, "exp")
    close(module.exp(x, block_m=64, block_n=128, interpret=nan_interpret), np.exp(x.astype(np.float64)))
    jaxpr = jax.make_jaxpr(module.exp)(jax.ShapeDtypeStruct((16, 128), jnp.float32))
    call = next(e for e in jaxpr.eqns if e.primitive.name == "pallas_call")
    assert len(call.invars) == 2 and call.params["input_output_aliases"] == ((1, 0),)


# --- every kernel ----------------------------------------------------------------

def test_interpret_true_needs_no_setup():
    x = normal(20, 130)
    close(checked_in_module("exp").exp(x, interpret=True), np.exp(x.astype(np.float64)))


SIZES = {
    "exp": {"m": 512, "n": 1024},
    "axpy": {"m": 512, "n": 1024},
    "softmax": {"m": 128, "n": 1024},
    "bmm": {"batch": 2, "m": 256, "n": 256, "k": 512},
    "attention": {"batch": 2, "head": 4, "sq": 512, "skv": 1024, "d": 128},
}


@pytest.mark.parametrize("name", DENSE_KERNELS)
def test_lowers_for_tpu(name):
    from codegen.build import plan_spec

    plan = plan_spec(SPECS / f"{name}.yaml")[1]
    module = checked_in_module(name)
    for sizes in (SIZES[name], {a: n - 3 if n > 8 else n for a, n in SIZES[name].items()}):
        text = lower_for_tpu(module, plan, Case("t", sizes))
        assert "tpu_custom_call" in text


def test_lowering_rejects_a_block_that_breaks_tpu_tiling():
    """The lowering check is real: a (8, 128)-breaking block fails it."""
    from jax.experimental import pallas as pl

    def kernel(x_ref, o_ref):
        o_ref[...] = x_ref[...]

    bad = pl.pallas_call(
        kernel,
        grid=(2,),
        in_specs=[pl.BlockSpec((8, 100), lambda i: (i, 0))],
        out_specs=pl.BlockSpec((8, 100), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((16, 200), jnp.float32),
    )
    with pytest.raises(Exception, match="divisible by 128|last two dimensions"):
        jax.export.export(jax.jit(bad), platforms=["tpu"])(jax.ShapeDtypeStruct((16, 200), jnp.float32))


def test_entry_point_rejects_bad_inputs_and_blocks():
    module = checked_in_module("bmm")
    with pytest.raises(ValueError, match=r"b: expected float32\[2, 64, 128\], got float32\[2, 32, 128\]"):
        module.bmm(normal(2, 16, 64), normal(2, 32, 128))
    with pytest.raises(ValueError, match="block_n=100 must be a positive multiple of 128"):
        module.bmm(normal(1, 16, 64), normal(1, 64, 256), block_n=100)


def test_an_axis_held_whole_beyond_its_max_is_refused_at_the_call(tmp_path):
    """softmax holds rows of up to n's max (4096) whole, and its VMEM is budgeted for that."""
    module = checked_in_module("softmax")
    with pytest.raises(ValueError, match=r"n=4224 is more than its max, 4096: the kernel's VMEM"):
        module.softmax(normal(8, 4224), interpret=True)
    at_max = normal(8, 4096)
    np.testing.assert_allclose(module.softmax(at_max, interpret=True), jax.nn.softmax(at_max, axis=-1), rtol=1e-5, atol=1e-6)
    # Walked in passes instead, the axis is tiled: any length goes.
    in_passes = (ROOT / "tests/specs/softmax_in_passes.yaml").read_text().replace("n: {block: 128}", "n: {block: 128, max: 256}")
    passes = build_text(tmp_path, in_passes)
    assert passes.plan.axes["n"].mode == "tiled" and "_check_max" not in passes.source
