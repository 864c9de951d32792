"""The untiled reference that `codegen verify` compares against, checked by hand-written numpy."""

import numpy as np

from codegen.build import plan_spec
from codegen.reference import reference

from conftest import SPECS
from test_kernels import attention_reference, softmax_rows


def ir_of(name):
    return plan_spec(SPECS / f"{name}.yaml")[1].ir


def test_reference_attention():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8)))
    sizes = {"batch": 2, "head": 3, "sq": 5, "skv": 7, "d": 8}
    out = reference(ir_of("attention"), {"q": q, "k": k, "v": v}, sizes)["out"]
    np.testing.assert_allclose(out, attention_reference(q, k, v), rtol=1e-6)


def test_reference_bmm_softmax_axpy():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4, 5))
    got = reference(ir_of("bmm"), {"a": a, "b": b}, {"batch": 2, "m": 3, "k": 4, "n": 5})["out"]
    np.testing.assert_allclose(got, a @ b, rtol=1e-6)
    x = rng.standard_normal((3, 9))
    np.testing.assert_allclose(reference(ir_of("softmax"), {"x": x}, {"m": 3, "n": 9})["out"], softmax_rows(x), rtol=1e-6)
    y = rng.standard_normal((3, 9))
    np.testing.assert_allclose(reference(ir_of("axpy"), {"x": x, "y": y}, {"m": 3, "n": 9})["y"], y + 2 * x, rtol=1e-6)


def test_reference_evaluates_each_segment_on_its_own_rows():
    from test_jagged import dense_inputs, gdpa_reference, jagged_inputs

    q, k, v, o = dense_inputs([0, 3, 5])
    sizes = {"b": 3, "sq": 8, "skv": k.shape[1], "h": q.shape[1], "d": q.shape[2]}
    inputs = {"q": np.asarray(q, np.float32), "k": np.asarray(k, np.float32), "v": np.asarray(v, np.float32), "q_offsets": o}
    got = reference(ir_of("gdpa"), inputs, sizes)["out"]
    np.testing.assert_allclose(got, gdpa_reference(q, k, v, o), rtol=1e-2, atol=1e-2)
    q, k, v, qo, ko = jagged_inputs([2, 0, 4], [3, 5, 0])
    sizes = {"b": 3, "sq": 6, "skv": 8, "h": q.shape[1], "d": q.shape[2]}
    inputs = {"q": np.asarray(q, np.float32), "k": np.asarray(k, np.float32), "v": np.asarray(v, np.float32),
              "q_offsets": qo, "kv_offsets": ko}
    got = reference(ir_of("gdpa_jagged"), inputs, sizes)["out"]
    np.testing.assert_allclose(got, gdpa_reference(q, k, v, qo, ko), rtol=1e-2, atol=1e-2)
    assert (got[2:] == 0).all()  # segment 2 has no kv rows
