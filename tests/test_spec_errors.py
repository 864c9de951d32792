"""Malformed specs: a clear message at file:line:col, exit code 2, nothing written."""

import re

import pytest

from codegen.cli import main

from conftest import GOOD_SPEC as GOOD
from conftest import write_spec

ATTENTION_LIKE = """\
name: k
axes:
  m: {block: 8}
  kv: {block: 128}
  d: {}
tensors:
  q: {dims: [m, d], dtype: float32}
  k: {dims: [kv, d], dtype: float32}
  out: {dims: [m], dtype: float32}
accumulators:
  total: {over: kv, dims: [m], init: 0}
compute:
  s: dot(q, k, over=d)
  total: total + sum(s, over=kv)
  out: total
"""


def edit(text, old, new):
    assert old in text, old
    return text.replace(old, new, 1)


CASES = [
    # (id, spec text, message pattern, line, column)
    ("yaml syntax", edit(GOOD, "m: {block: 8}", "m: {block: 8"), r"YAML syntax error: expected ',' or '}'", 6, 4),
    ("unknown top-level key", edit(GOOD, "tensors:", "tensor:"), r"unknown key 'tensor'.*did you mean 'tensors'", 7, 1),
    ("unknown axis key", edit(GOOD, "m: {block: 8}", "m: {blok: 8}"), r"unknown key 'blok' in axes.m.*did you mean 'block'", 5, 7),
    ("duplicate key", edit(GOOD, "  n: {block: 128}", "  n: {block: 128}\n  m: {}"), r"duplicate key 'm' \(first given at line 5\)", 7, 3),
    ("undefined axis", edit(GOOD, "x: {dims: [m, n]", "x: {dims: [m, nn]"), r"tensor 'x' uses undefined axis 'nn'.*did you mean 'n'", 8, 17),
    ("bad dtype", edit(GOOD, "x: {dims: [m, n], dtype: float32}", "x: {dims: [m, n], dtype: float33}"), r"'float33' is not a supported dtype.*did you mean 'float32'", 8, 28),
    ("missing required key", edit(GOOD, "x: {dims: [m, n], dtype: float32}", "x: {dims: [m, n]}"), r"tensors.x is missing required key 'dtype'", 8, 6),
    ("block not a positive integer", edit(GOOD, "m: {block: 8}", "m: {block: -8}"), r"axes.m.block must be a positive integer", 5, 14),
    ("invalid name", edit(GOOD, "  x: {dims", "  X: {dims").replace("x * alpha", "X * alpha"), r"tensor 'X' is not a valid name", 8, 3),
    ("reserved name", edit(GOOD, "alpha: 2.0", "lambda: 2.0"), r"param 'lambda' is reserved", 3, 3),
    ("name clash", edit(GOOD, "alpha: 2.0", "m: 2.0"), r"'m' names both a param \(line 3\) and an axis", 5, 3),
    ("undefined name", edit(GOOD, "out: x * alpha", "out: x * alpah"), r"undefined name 'alpah'.*did you mean 'alpha'", 11, 12),
    ("unknown function", edit(GOOD, "out: x * alpha", "out: exps(x)"), r"unknown function 'exps'.*did you mean 'exp'", 11, 8),
    ("unsupported syntax", edit(GOOD, "out: x * alpha", "out: x ** 2"), r"unsupported syntax in expression: operator Pow", 11, 8),
    ("attribute access", edit(GOOD, "out: x * alpha", "out: x.T"), r"unsupported syntax in expression: attribute access", 11, 8),
    ("dims mismatch", edit(edit(GOOD, "n: {block: 128}", "n: {}"), "out: x * alpha", "out: sum(x, over=n)"), r"tensor 'out' has dims \[m, n\] but its value has dims \[m\]", 11, 8),
    ("reduce over missing axis", edit(GOOD, "out: x * alpha", "out: x * sum(alpha, over=m)"), r"sum\(\) over 'm', but its operand has dims \[\]", 11, 28),
    ("breaks lane tiling", edit(GOOD, "n: {block: 128}", "n: {block: 100}"), r"block 100 of axis 'n' breaks TPU tiling.*last \(lane\) dim of 'x'.*multiple of 128", 6, 14),
    ("breaks sublane tiling", edit(GOOD, "m: {block: 8}", "m: {block: 12}"), r"block 12 of axis 'm' breaks TPU tiling.*sublane.*multiple of 8", 5, 14),
    ("over the VMEM budget", edit(edit(GOOD, "m: {block: 8}", "m: {block: 8192}"), "n: {block: 128}", "n: {block: 8192}"), r"needs [0-9.]+ MiB of VMEM, over the 128 MiB of a v5e", 5, 14),
    ("unused tensor", edit(GOOD, "  out: {dims", "  y: {dims: [m], dtype: float32}\n  out: {dims"), r"tensor 'y' is neither read nor written", 9, 3),
    ("unused value", edit(GOOD, "  out: x * alpha", "  t: x + 1.0\n  out: x * alpha"), r"'t' is computed but never used", 11, 3),
    ("used before computed", edit(GOOD, "  out: x * alpha", "  out: t\n  t: x + 1.0"), r"'t' is used before it is computed", 11, 8),
    ("unknown rule", GOOD + "rules:\n  invariant_loads: off\n", r"unknown rule 'invariant_loads'.*did you mean 'invariant_load'", 13, 3),
    ("rule switch not a bool", GOOD + "rules:\n  invariant_load: maybe\n", r"rules.invariant_load must be true or false", 13, 19),
    ("accumulator over an untiled axis", edit(ATTENTION_LIKE, "kv: {block: 128}", "kv: {}"), r"accumulator 'total' is carried across axis 'kv', which has no block", 11, 17),
    ("reduction over a tiled axis outside an accumulator", edit(edit(ATTENTION_LIKE, "accumulators:\n  total: {over: kv, dims: [m], init: 0}\n", ""), "  total: total + sum(s, over=kv)\n  out: total", "  t: sum(s, over=kv)\n  out: t + 0.0"), r"sum\(\) over 'kv', which is tiled .* must feed an accumulator", 12, 6),
    ("accumulator never updated", edit(ATTENTION_LIKE, "  out: total", "  out: total\n").replace("  total: total + sum(s, over=kv)\n", "").replace("  s: dot(q, k, over=d)\n", ""), r"accumulator 'total' is never updated", 11, 3),
    ("empty spec", "", r"the spec is empty", 1, 1),
    ("not a mapping", "- 1\n- 2\n", r"the spec must be a mapping", 1, 1),
]


@pytest.mark.parametrize("text, pattern, line, col", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_spec(tmp_path, capsys, text, pattern, line, col):
    spec = write_spec(tmp_path, text)
    out_dir = tmp_path / "out"
    rc = main(["build", str(spec), "-o", str(out_dir)])
    captured = capsys.readouterr()
    assert rc == 2
    assert "Traceback" not in captured.err
    message = captured.err.strip()
    assert re.search(pattern, message, re.S), message
    assert message.startswith(f"{spec}:{line}:{col}: error: "), message
    assert not out_dir.exists(), "nothing may be written on failure"


def test_there_are_at_least_fifteen_distinct_cases():
    assert len({c[2] for c in CASES}) >= 15


def test_bad_define_is_a_usage_error(tmp_path, capsys):
    spec = write_spec(tmp_path, GOOD)
    assert main(["build", str(spec), "-o", str(tmp_path / "o"), "-D", "alpah=1"]) == 2
    err = capsys.readouterr().err
    assert "<command line>:1:1: error: -D alpah: the spec has no param 'alpah'" in err
    assert "did you mean 'alpha'" in err


def test_a_failing_spec_leaves_other_outputs_untouched(tmp_path, capsys):
    good = write_spec(tmp_path, GOOD, "good.yaml")
    bad = write_spec(tmp_path, edit(GOOD, "name: k", "name: k2").replace("x * alpha", "x * nope"), "bad.yaml")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    existing = out_dir / "k.py"
    existing.write_text("# previous contents\n")
    assert main(["build", str(good), str(bad), "-o", str(out_dir)]) == 2
    assert existing.read_text() == "# previous contents\n"
    assert sorted(p.name for p in out_dir.iterdir()) == ["k.py"]


def test_missing_spec_file(tmp_path, capsys):
    assert main(["build", str(tmp_path / "nope.yaml"), "-o", str(tmp_path)]) == 2
    assert "cannot read spec" in capsys.readouterr().err


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("alpha: 2.0", "slot: 2.0", "param 'slot' is reserved in generated code"),
        ("x * alpha", "x * alpha\n  next_m: x + 1.0", "compute name 'next_m' clashes with a name generated for 'm'"),
        ("  out: {dims", "  x_t: {dims: [m, n], dtype: float32}\n  out: {dims", "tensor 'x_t' clashes with a name generated for 'x'"),
    ],
)
def test_names_the_generated_code_uses_are_rejected(tmp_path, capsys, old, new, message):
    spec = write_spec(tmp_path, edit(GOOD, old, new))
    assert main(["build", str(spec), "-o", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
