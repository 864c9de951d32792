"""Per-TensorCore figures of the TPU chips the planner budgets for."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class Chip:
    name: str
    vmem_bytes: int
    scoped_vmem_default: int  # what Mosaic allows a kernel unless vmem_limit_bytes says more
    hbm_bytes_per_s: float
    bf16_flops_per_s: float
    mxu: str


CHIPS = {
    "v5e": Chip("v5e", 128 * MiB, 16 * MiB, 0.82e12, 197e12, "4 x 128x128"),
    "v6e": Chip("v6e", 128 * MiB, 32 * MiB, 1.64e12, 920e12, "2 x 256x256"),
    "v7x": Chip("v7x", 64 * MiB, 32 * MiB, 3.7e12, 1155e12, "2 x 256x256"),
}
DEFAULT_CHIP = "v5e"

ITEMSIZE = {"float32": 4, "int32": 4, "bfloat16": 2, "float16": 2, "int16": 2, "int8": 1}


def sublane_tile(dtype: str) -> int:
    """Rows per (sublane, lane) tile: 8 for 32-bit types, 16 for 16-bit, 32 for 8-bit."""
    return {4: 8, 2: 16, 1: 32}[ITEMSIZE[dtype]]


LANES = 128
