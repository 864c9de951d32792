from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

# The suite runs kernels in TPU interpret mode on the CPU. Where libtpu is installed
# (for the compile tests, which run it in child processes), JAX would otherwise try
# the TPU backend first, and libtpu would ask a metadata server that is not there.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
GENERATED = ROOT / "generated"
DENSE_KERNELS = ("exp", "axpy", "softmax", "bmm", "attention")
KERNELS = DENSE_KERNELS + ("gdpa", "gdpa_jagged", "paged_attention")
# Kernels that use broadcasting by axis name, lower-rank outputs and per-segment reductions.
BROADCAST_KERNELS = ("rmsnorm", "layernorm", "matmul_bias_gelu", "segment_sum", "segment_mean")
KERNELS += BROADCAST_KERNELS


def write_spec(folder: Path, text: str, name: str = "k.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def with_rule(text: str, rule: str, state) -> str:
    """A spec's text with one more rule switch, in its `rules:` mapping if it has one."""
    import re

    if re.search(rf"\nrules: {{.*\b{rule}: ", text):  # already switched: switch it again
        return re.sub(rf"(\nrules: {{.*\b{rule}: )[a-z]+", rf"\g<1>{state}", text, count=1)
    if "\nrules: {" in text:
        return text.replace("\nrules: {", f"\nrules: {{{rule}: {state}, ", 1)
    if re.search(rf"\nrules:\n(  .*\n)*  {rule}: ", text):  # switched in a block mapping
        return re.sub(rf"(\nrules:\n(?:  .*\n)*  {rule}: )[a-z]+", rf"\g<1>{state}", text, count=1)
    if "\nrules:\n" in text:
        return text.replace("\nrules:\n", f"\nrules:\n  {rule}: {state}\n", 1)
    return text + f"rules:\n  {rule}: {state}\n"


def build_text(folder: Path, text: str, overrides=None, chip="v5e"):
    from codegen.build import build_source

    return build_source(write_spec(folder, text), overrides, chip)


def assert_compiles(built, chip: str) -> None:
    """`built` compiles for `chip` at verify's shapes, with the real TPU compiler (skipped
    where libtpu is not installed: `pip install -e '.[tpu]'`)."""
    from codegen.tpu_compile import compile_kernels, libtpu_installed
    from codegen.verify import compile_cases, kernel_to_compile

    if not libtpu_installed():
        pytest.skip("libtpu is not installed: pip install -e '.[tpu]'")
    results = compile_kernels([kernel_to_compile(built, case) for case in compile_cases(built)], chip)
    assert all(r.ok for r in results), [r.error[:300] for r in results]


# A per-segment output beside a jagged axis walked in tiles (not kept whole): z is written
# by every tile of its segment, and must be by an empty segment's too.
SCALED_ROWS = """name: scaled_rows
axes:
  b: {}
  t: {jagged: {offsets: offsets, segment: b, max: max_len}, block: 16}
  d: {max: 128}
tensors:
  x: {dims: [t, d], dtype: float32}
  w: {dims: [b, d], dtype: float32}
  offsets: {dims: [b+1], dtype: int32}
  y: {dims: [t, d], dtype: float32}
  z: {dims: [b, d], dtype: float32}
compute:
  y: x * w
  z: w * 2.0
"""

# A small valid spec that tests of bad input start from.
GOOD_SPEC = """\
name: k
params:
  alpha: 2.0
axes:
  m: {block: 8}
  n: {block: 128}
tensors:
  x: {dims: [m, n], dtype: float32}
  out: {dims: [m, n], dtype: float32}
compute:
  out: x * alpha
"""


def checked_in_module(name: str):
    """The generated module exactly as committed under generated/."""
    spec = importlib.util.spec_from_file_location(f"generated_{name}", GENERATED / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def nan_interpret():
    """TPU interpret mode with uninitialized memory set to NaN, so a missing mask shows."""
    from jax.experimental.pallas import tpu as pltpu

    yield pltpu.InterpretParams(uninitialized_memory="nan")
    if sys.exc_info()[0] is not None:  # pragma: no cover
        pltpu.reset_tpu_interpret_mode_state()
