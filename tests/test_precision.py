"""`train.precision: auto`: which policy each kind of hardware gets, and where it is recorded."""

from pathlib import Path

import keras
import pytest

from tfsemiseg.training.precision import cpu_flags, precision_policy, resolve_precision

AVX2 = {"fpu", "sse2", "avx", "avx2", "fma"}
SAPPHIRE_RAPIDS = AVX2 | {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}


@pytest.mark.parametrize("flags, gpus, expected", [
    (AVX2, [], "float32"),                                       # AMD EPYC / older Xeon: no native bf16
    (AVX2 | {"avx512f"}, [], "float32"),                         # AVX-512 without BF16
    (AVX2 | {"avx512f", "avx512_bf16"}, [], "mixed_bfloat16"),   # Cooper Lake, Zen 4
    (SAPPHIRE_RAPIDS, [], "mixed_bfloat16"),                     # AMX
    (AVX2, [(8, 0)], "mixed_bfloat16"),                          # A100: the GPU decides
    (SAPPHIRE_RAPIDS, [(7, 5)], "float32"),                      # T4: no bf16 tensor cores
    (AVX2, [(8, 6), (7, 0)], "float32"),                         # mixed GPUs: every one must have it
])
def test_auto_resolves_by_hardware(flags, gpus, expected):
    assert resolve_precision("auto", flags=flags, gpus=gpus) == expected


def test_explicit_precisions_are_kept_and_unknown_ones_refused():
    for name in ("float32", "mixed_bfloat16", "mixed_float16"):
        assert resolve_precision(name, flags=set(), gpus=[]) == name
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("bfloat16", flags=set(), gpus=[])


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "avx2", "amx_bf16"}
    assert cpu_flags(tmp_path / "absent") == set()


def test_precision_policy_is_restored():
    before = keras.config.dtype_policy().name
    with precision_policy("mixed_bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        layer = keras.layers.Dense(2)
        assert layer.compute_dtype == "bfloat16" and layer.variable_dtype == "float32"
    assert keras.config.dtype_policy().name == before
