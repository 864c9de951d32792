"""Stage 2: lowering to the IR."""

from pathlib import Path

from codegen import ir
from codegen.ir import lower
from codegen.spec import load_spec

from conftest import SPECS


def lowered(name):
    return lower(load_spec(SPECS / f"{name}.yaml", f"specs/{name}.yaml"))


def test_roles_come_from_reads_and_writes():
    assert lowered("exp").tensors["out"].role == "output"
    assert lowered("exp").tensors["x"].role == "input"
    assert lowered("axpy").tensors["y"].role == "inout"


def test_contraction_over_a_tiled_axis_becomes_an_accumulator():
    k = lowered("bmm")
    assert k.ordered_axis == "k"
    acc = k.accumulators["out_acc"]
    assert acc.synthesized_from == "out" and acc.over == "k" and acc.dtype == "float32" and acc.init == 0.0
    update, write = k.statements
    assert (update.target, update.phase) == ("accumulator", "step")
    assert isinstance(update.value, ir.Elementwise) and update.value.fn == "+"
    assert isinstance(update.value.args[1], ir.Dot)
    assert (write.target, write.phase) == ("tensor", "final")
    assert isinstance(write.value, ir.AccRead) and write.value.updated


def test_attention_phases_and_dims():
    k = lowered("attention")
    phases = {st.name: st.phase for st in k.statements}
    assert phases == {
        "s": "step", "m_next": "step", "rescale": "step", "p": "step",
        "l": "step", "acc": "step", "m": "step", "out": "final",
    }
    s = next(st for st in k.statements if st.name == "s")
    assert set(s.value.dims) == {"batch", "head", "sq", "skv"}
    assert s.value.dtype == "float32"


def test_cost_counts_flops_and_transcendentals():
    k = lowered("bmm")
    assert k.flops == {tuple(sorted(("batch", "m", "n", "k"))): 2}
    k = lowered("exp")
    assert k.transcendentals == {("m", "n"): 1} and not k.flops
