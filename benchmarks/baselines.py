"""Autoregressive baselines on the very GGUF our model is exported from, for the benchmarks.

    llama_cpp_ar(gguf, prompt_ids, new_tokens, threads)   llama.cpp (llama-cpp-python) on the GGUF itself
    genai_ar(gguf, prompt_ids, new_tokens, threads)       onnxruntime-genai on the graph its own model
                                                           builder writes from the same weights
    LlamaCppRows.open(gguf, prompt_ids, threads, rows)    llama.cpp forwards of several rows after a
                                                           cached prompt (what one more row costs)

Both decode greedily, exactly `new_tokens` tokens after the prompt (no EOS stop), and report the
median over `repeats` runs after one warm-up:

    tokens_per_s   new_tokens / wall time of the whole call, prompt processing included (what a
                   user waits for; our runtime's tokens/s are measured the same way)
    ms_per_token   decode time per generated token, prompt processing excluded (the forward's speed)

A baseline that cannot run here (package missing, build failure, a llama.cpp build for another CPU)
comes back with tokens_per_s None and the reason, so a benchmark prints the reason and goes on.
llama.cpp is first tried in a child process on a batched prompt: a build whose instructions this
CPU lacks (illegal instruction) or that trips over AMX (a protection fault on the first batch)
kills its process, and that must not be the benchmark's (benchmarks/llama_cpp_flags.py builds one
that fits).

onnxruntime-genai's graph: the GGUF's blocks dequantized into transformers (the same float numbers
our graph holds), saved as a Hugging Face checkpoint with the tokenizer, then
`python -m onnxruntime_genai.models.builder -p int4 -e cpu` (MatMulNBits block 32, accuracy level
4, the settings its CPU models ship with). The result is cached in the user cache under the GGUF's
sha256, so only the first call pays for the build (about a minute for the default model).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GENAI_BLOCK_SIZE = 32  # the same block as our MatMulNBits and GGUF Q4
GENAI_ACCURACY_LEVEL = 4  # int8 activations: what the builder's CPU int4 models use
GENAI_CONFIG = "genai_config.json"


@dataclass(frozen=True)
class BaselineResult:
    name: str
    tokens_per_s: float | None  # None: not available here, `reason` says why
    ms_per_token: float | None
    reason: str = ""


@dataclass(frozen=True)
class _Run:
    wall_s: float  # the whole call
    decode_s: float  # after the first generated token: new_tokens - 1 decode forwards
    produced: int


def _summarise(name: str, runs: list[_Run], new_tokens: int) -> BaselineResult:
    if any(run.produced != new_tokens for run in runs):
        got = sorted({run.produced for run in runs})
        return BaselineResult(name, None, None, f"produced {got} tokens, not {new_tokens}")
    wall = statistics.median(run.wall_s for run in runs)
    decode = statistics.median(run.decode_s for run in runs)
    ms_per_token = decode * 1e3 / max(new_tokens - 1, 1)
    return BaselineResult(name, new_tokens / wall, ms_per_token)


# --- llama.cpp -------------------------------------------------------------------------------------
LLAMA_CPP_PROBE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, n_threads=int(sys.argv[2]), verbose=False)
for _ in llm.generate(llm.tokenize(b"A batched prompt of several tokens."), temp=0.0):
    break
"""


def llama_cpp_crash(gguf: Path, threads: int) -> str:
    """Why llama.cpp cannot run here ('' when it can): a batched prompt in a child process."""
    done = subprocess.run(
        [sys.executable, "-c", LLAMA_CPP_PROBE, str(gguf), str(threads)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode == 0:
        return ""
    if done.returncode < 0:
        cause = signal.Signals(-done.returncode).name
    else:
        cause = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return (
        f"llama.cpp failed on a batched prompt ({cause}): rebuild llama-cpp-python for this CPU, "
        'CMAKE_ARGS="$(python benchmarks/llama_cpp_flags.py)" pip install --force-reinstall '
        "--no-deps --no-cache-dir llama-cpp-python==0.3.36"
    )


def llama_cpp_ar(
    gguf: Path, prompt_ids: list[int], new_tokens: int, threads: int, repeats: int = 3
) -> BaselineResult:
    """llama.cpp's greedy decode of `new_tokens` after `prompt_ids`, median over `repeats`."""
    name = "llama.cpp"
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        return BaselineResult(name, None, None, f"llama-cpp-python is not installed ({exc})")
    crashed = llama_cpp_crash(gguf, threads)
    if crashed:
        return BaselineResult(name, None, None, crashed)
    llm = Llama(
        model_path=str(gguf),
        n_ctx=len(prompt_ids) + new_tokens + 8,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )

    def run(count: int) -> _Run:
        llm.reset()  # no prefix reuse between repeats: every run evaluates the whole prompt
        started = time.perf_counter()
        first = None
        produced = 0
        for _ in llm.generate(prompt_ids, temp=0.0, reset=True):
            produced += 1
            if first is None:
                first = time.perf_counter()
            if produced == count:
                break
        ended = time.perf_counter()
        return _Run(ended - started, ended - (first or ended), produced)

    run(min(4, new_tokens))  # warm-up: page in the weights, build the thread pool
    return _summarise(name, [run(new_tokens) for _ in range(repeats)], new_tokens)


class LlamaCppRows:
    """llama.cpp forwards of several rows after a cached prompt, with logits for every row (the work
    of a block step), for comparing what one more row costs its kernels and ours."""

    def __init__(self, llm, cached: int):
        self.llm = llm
        self.cached = cached

    @classmethod
    def open(cls, gguf: Path, prompt_ids: list[int], threads: int, most_rows: int) -> LlamaCppRows | str:
        """Ready with the prompt cached, or why llama.cpp cannot run here."""
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            return f"llama-cpp-python is not installed ({exc})"
        crashed = llama_cpp_crash(gguf, threads)
        if crashed:
            return crashed
        llm = Llama(
            model_path=str(gguf),
            n_ctx=len(prompt_ids) + most_rows + 8,
            n_batch=max(len(prompt_ids), most_rows),
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=True,
            verbose=False,
        )
        llm.eval(prompt_ids)
        return cls(llm, len(prompt_ids))

    def forward_ms(self, rows: int, repeats: int) -> list[float]:
        """ms of each of `repeats` forwards of `rows` new tokens, each after the same cached prompt."""
        times = []
        for _ in range(repeats):
            self.llm.n_tokens = self.cached  # eval drops the cache past this point: the same prompt
            started = time.perf_counter()
            self.llm.eval(list(range(300, 300 + rows)))
            times.append((time.perf_counter() - started) * 1e3)
        return times


# --- onnxruntime-genai -----------------------------------------------------------------------------
def genai_ar(
    gguf: Path,
    prompt_ids: list[int],
    new_tokens: int,
    threads: int,
    repeats: int = 3,
    work_dir: Path | None = None,
) -> BaselineResult:
    """onnxruntime-genai's greedy decode on its own builder's int4 graph of the same weights."""
    name = "onnxruntime-genai"
    try:
        import onnxruntime_genai as og
    except ImportError as exc:
        return BaselineResult(name, None, None, f"onnxruntime-genai is not installed ({exc})")
    try:
        model_dir = genai_model_dir(Path(gguf), work_dir)
    except (RuntimeError, OSError) as exc:
        return BaselineResult(name, None, None, str(exc))
    _set_threads(model_dir / GENAI_CONFIG, threads)
    model = og.Model(str(model_dir))

    def run(count: int) -> _Run:
        params = og.GeneratorParams(model)
        length = len(prompt_ids) + count
        params.set_search_options(do_sample=False, max_length=length, min_length=length)
        generator = og.Generator(model, params)
        started = time.perf_counter()
        generator.append_tokens(prompt_ids)
        first = None
        while not generator.is_done():
            generator.generate_next_token()
            if first is None:
                first = time.perf_counter()
        ended = time.perf_counter()
        produced = len(generator.get_sequence(0)) - len(prompt_ids)
        return _Run(ended - started, ended - (first or ended), produced)

    run(min(4, new_tokens))
    return _summarise(name, [run(new_tokens) for _ in range(repeats)], new_tokens)


def genai_model_dir(gguf: Path, work_dir: Path | None = None) -> Path:
    """The builder's graph of `gguf`, built once into `work_dir` (default: the user cache, by the
    GGUF's sha256). Raises RuntimeError with the builder's last line when it fails."""
    from runtime.artifact import sha256_file

    root = work_dir or _cache_dir()
    out = root / f"genai-int4-b{GENAI_BLOCK_SIZE}-a{GENAI_ACCURACY_LEVEL}-{sha256_file(gguf)[:16]}"
    if (out / GENAI_CONFIG).is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".genai-build-") as scratch:
        scratch = Path(scratch)
        hf_dir, staging = scratch / "hf", scratch / "out"
        _write_hf_checkpoint(gguf, hf_dir)
        command = [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(hf_dir),
            "-o",
            str(staging),
            "-p",
            "int4",
            "-e",
            "cpu",
            "-c",
            str(scratch / "cache"),
            "--extra_options",
            f"int4_block_size={GENAI_BLOCK_SIZE}",
            f"int4_accuracy_level={GENAI_ACCURACY_LEVEL}",
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not (staging / GENAI_CONFIG).is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"onnxruntime-genai's builder failed: {tail[0]}")
        os.replace(staging, out)
    return out


class GenaiGraph:
    """onnxruntime-genai's own graph of the same GGUF (its builder requantizes the dequantized
    weights to int4, symmetric, block 32), run by onnxruntime directly so that every position's
    logits come back (benchmarks/accuracy_bench.py: the numerics behind genai's speed) and one
    forward can be timed alone (benchmarks/exactness_cost.py)."""

    def __init__(self, session, head_dim: int):
        self.session, self.head_dim = session, head_dim
        self.outputs = [o.name for o in session.get_outputs()]

    @classmethod
    def open(cls, gguf: Path, threads: int) -> GenaiGraph:
        """The builder's graph of `gguf` (built first if need be: genai_model_dir) on `threads`."""
        import onnxruntime as ort

        directory = genai_model_dir(gguf)
        head_dim = json.loads((directory / GENAI_CONFIG).read_text())["model"]["decoder"]["head_size"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(
            str(directory / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        return cls(session, head_dim)

    def feeds(self, ids: list[int], past: dict | None, total: int) -> dict:
        """Inputs for `ids` after `past` (the previous run's outputs by name, or None: empty), with
        `total` positions in all."""
        feeds = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, total), dtype=np.int64),
        }
        for item in self.session.get_inputs():
            if item.name.startswith("past_key_values."):
                present = item.name.replace("past_key_values.", "present.")
                empty = np.zeros((1, item.shape[1], 0, self.head_dim), dtype=np.float32)
                feeds[item.name] = past[present] if past else empty
        return feeds

    def argmax(self, chunk: list[int]) -> np.ndarray:
        (logits,) = self.session.run(["logits"], self.feeds(chunk, None, len(chunk)))
        return logits[0].argmax(-1)

    def greedy(self, prompt: list[int], length: int) -> list[int]:
        past, ids, out, total = None, list(prompt), [], 0
        for _ in range(length):
            total += len(ids)
            outputs = self.session.run(self.outputs, self.feeds(ids, past, total))
            values = dict(zip(self.outputs, outputs, strict=True))
            out.append(int(values["logits"][0, -1].argmax()))
            past, ids = values, [out[-1]]
        return out

    def one_token_ms(self, cached: int, repeats: int) -> list[float]:
        """Milliseconds of one-token forwards after `cached` positions (random keys and values)."""
        rng = np.random.default_rng(0)
        past = {
            item.name.replace("past_key_values.", "present."): rng.random(
                (1, item.shape[1], cached, self.head_dim), dtype=np.float32
            )
            for item in self.session.get_inputs()
            if item.name.startswith("past_key_values.")
        }
        feeds = self.feeds([1], past, cached + 1)
        self.session.run(None, feeds)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            self.session.run(None, feeds)
            times.append((time.perf_counter() - started) * 1e3)
        return times


def _write_hf_checkpoint(gguf: Path, directory: Path) -> None:
    """The GGUF dequantized into a transformers checkpoint (float32) with its tokenizer files."""
    import torch

    from ruvdllm_export.checkpoints import load_checkpoint
    from ruvdllm_export.convert.ar_answers import causal_lm

    checkpoint = load_checkpoint(gguf)
    causal_lm(checkpoint, torch.float32).save_pretrained(directory, safe_serialization=True)
    checkpoint.tokenizer.save(str(directory / "tokenizer.json"))
    spec = checkpoint.spec
    special = {
        key: checkpoint.tokenizer.id_to_token(token)
        for key, token in (
            ("bos_token", spec.bos_token_id),
            ("eos_token", spec.eos_token_ids[0] if spec.eos_token_ids else None),
            ("pad_token", spec.pad_token_id),
        )
        if token is not None
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special}
    if spec.chat_template:
        config["chat_template"] = spec.chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))


def _set_threads(config_path: Path, threads: int) -> None:
    """genai reads its session options from genai_config.json; pin the thread count there."""
    config = json.loads(config_path.read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    if options.get("intra_op_num_threads") != threads:
        options["intra_op_num_threads"] = threads
        options["inter_op_num_threads"] = 1
        config_path.write_text(json.dumps(config, indent=4))


def _cache_dir() -> Path:
    from runtime.verify import cache_root

    return cache_root() / "baselines"
