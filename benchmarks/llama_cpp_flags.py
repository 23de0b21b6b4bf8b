"""CMAKE_ARGS for building llama-cpp-python (the `bench` extra's llama.cpp baseline) on this CPU.

    CMAKE_ARGS="$(python benchmarks/llama_cpp_flags.py)" pip install -e ".[bench]"

Why not pip's default build: llama-cpp-python builds ggml with `-march=native`, and on x86 CPUs
with AMX (Intel Sapphire Rapids and newer) ggml's AMX path then faults (a general protection
fault in libggml-cpu) on the first batched prompt. A fixed list of AVX-512 flags is no answer
either: the same build on a CPU without AVX-512 dies with an illegal instruction. So this reads
the CPU's own feature flags and turns on exactly the ggml options it supports, AMX always off.

Linux x86 only reads flags (from /proc/cpuinfo: the standard library has no CPU-feature query,
and this runs before any package of the bench set-up is installed); elsewhere it prints the
native build, which has no AMX to trip over.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

# ggml's CMake option for each x86 feature, in the names /proc/cpuinfo uses.
GGML_OPTIONS = {
    "avx": "GGML_AVX",
    "avx2": "GGML_AVX2",
    "fma": "GGML_FMA",
    "f16c": "GGML_F16C",
    "bmi2": "GGML_BMI2",
    "avx_vnni": "GGML_AVX_VNNI",
    "avx512f": "GGML_AVX512",
    "avx512vbmi": "GGML_AVX512_VBMI",
    "avx512_vnni": "GGML_AVX512_VNNI",
    "avx512_bf16": "GGML_AVX512_BF16",
}
AMX_OFF = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor listed in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def cmake_args(flags: set[str]) -> str:
    """ggml options for a CPU with `flags`: each supported feature on, the others and AMX off."""
    options = ["-DGGML_NATIVE=OFF"]
    options += [f"-D{option}={'ON' if flag in flags else 'OFF'}" for flag, option in GGML_OPTIONS.items()]
    options += [f"-D{option}=OFF" for option in AMX_OFF]
    return " ".join(options)


def main() -> int:
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine().lower() not in {"x86_64", "amd64"} or not cpuinfo.is_file():
        print("-DGGML_NATIVE=ON")
        return 0
    flags = cpu_flags(cpuinfo.read_text(errors="replace"))
    if not flags:
        print(f"{cpuinfo}: no 'flags' line; building natively", file=sys.stderr)
        print("-DGGML_NATIVE=ON")
        return 0
    print(cmake_args(flags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
