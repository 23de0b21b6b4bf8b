"""The benchmarks' llama.cpp set-up: build flags that fit the CPU, and a baseline whose crash on a
CPU it was not built for is reported instead of killing the benchmark."""

from __future__ import annotations

import importlib
import signal
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

AVX2_ONLY = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse sse2 avx avx2 fma f16c bmi2 ht
"""
SAPPHIRE_RAPIDS = """processor\t: 0
flags\t\t: fpu avx avx2 fma f16c bmi2 avx512f avx512vbmi avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16
"""


def _load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def _options(args: str) -> dict[str, str]:
    return dict(option.removeprefix("-D").split("=") for option in args.split())


def test_flags_follow_the_cpu_and_amx_is_always_off():
    flags = _load("llama_cpp_flags")
    avx2 = _options(flags.cmake_args(flags.cpu_flags(AVX2_ONLY)))
    assert avx2["GGML_NATIVE"] == "OFF"
    assert avx2["GGML_AVX2"] == avx2["GGML_FMA"] == avx2["GGML_F16C"] == "ON"
    assert avx2["GGML_AVX512"] == avx2["GGML_AVX512_VNNI"] == "OFF"  # would be SIGILL on this CPU
    spr = _options(flags.cmake_args(flags.cpu_flags(SAPPHIRE_RAPIDS)))
    assert spr["GGML_AVX512"] == spr["GGML_AVX512_VNNI"] == spr["GGML_AVX512_BF16"] == "ON"
    for options in (avx2, spr):
        assert options["GGML_AMX_TILE"] == options["GGML_AMX_INT8"] == options["GGML_AMX_BF16"] == "OFF"
    assert flags.cpu_flags("processor\t: 0\n") == set()


@pytest.mark.parametrize("death", [signal.SIGILL, signal.SIGSEGV])
def test_a_llama_cpp_that_dies_by_a_signal_is_a_reason_not_a_crash(monkeypatch, tmp_path, death):
    baselines = _load("baselines")
    monkeypatch.setattr(baselines, "LLAMA_CPP_PROBE", f"import os; os.kill(os.getpid(), {int(death)})")
    reason = baselines.llama_cpp_crash(tmp_path / "model.gguf", 1)
    assert death.name in reason and "llama_cpp_flags.py" in reason


def test_a_llama_cpp_that_runs_is_no_reason(monkeypatch, tmp_path):
    baselines = _load("baselines")
    monkeypatch.setattr(baselines, "LLAMA_CPP_PROBE", "import sys; assert len(sys.argv) == 3")
    assert baselines.llama_cpp_crash(tmp_path / "model.gguf", 1) == ""
