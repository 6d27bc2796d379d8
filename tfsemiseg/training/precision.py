"""Which floating-point policy a stage trains in: `train.precision`, with `auto` resolved.

`auto` picks `mixed_bfloat16` where the hardware computes bfloat16 natively (CPUs with
AMX-BF16 or AVX512-BF16; GPUs of compute capability 8.0 and above) and `float32`
everywhere else, where bfloat16 would be emulated and slower. Under a mixed policy the
layers compute in bfloat16 with float32 weights; the heads' last layers, every loss
(similarities, exponentials, log-sum-exps, softmax, cross-entropy, Dice) and batch-norm
statistics stay float32, and evaluation and exported models run in float32.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Optional

import keras
import tensorflow as tf

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where /proc/cpuinfo is absent)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name ('unknown' where it cannot be read)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown"


def cpu_summary() -> str:
    """One line: model name and which of AVX2, AVX-512, AVX512-BF16 and AMX-BF16 it has."""
    flags = cpu_flags()
    have = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in CPU_FEATURES)
    return f"{cpu_model()} ({have})"


def gpu_compute_capabilities() -> list[tuple[int, int]]:
    """Compute capability of each visible GPU ((0, 0) where TensorFlow does not report one)."""
    caps = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            cc = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        except (RuntimeError, ValueError):
            cc = None
        caps.append(tuple(cc) if cc else (0, 0))
    return caps


def resolve_precision(
    requested: str, flags: Optional[set[str]] = None, gpus: Optional[list[tuple[int, int]]] = None
) -> str:
    """The Keras policy name for `requested` ("auto" resolved on this machine's hardware).

    flags / gpus: the CPU flags and GPU compute capabilities to decide on (read from the
    machine when None).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    gpus = gpu_compute_capabilities() if gpus is None else gpus
    if gpus:
        return "mixed_bfloat16" if all(cc >= (8, 0) for cc in gpus) else "float32"
    flags = cpu_flags() if flags is None else flags
    return "mixed_bfloat16" if any(f in flags for f in BF16_CPU_FLAGS) else "float32"


@contextlib.contextmanager
def precision_policy(name: str) -> Iterator[None]:
    """Keras' global dtype policy set to `name` (a resolved policy) inside the block."""
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
