"""The sequence-level distillation corpus: prompts built from WordNet-format files, the AR model's
batched answers (transformers over the checkpoint's own weights = the reference model, logit for
logit), exact nucleus sampling, resumable output, and bad input named in one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ruvdllm.errors import RuvdllmError
from ruvdllm_export.checkpoints import load_checkpoint
from ruvdllm_export.convert.ar_answers import answer_prompts, causal_lm, read_done, sample_nucleus
from ruvdllm_export.convert.prompt_sources import build_prompts, parse_data_line, prompt_split
from ruvdllm_export.convert_command import load_model
from tests.fixtures.tiny_models import make_gguf_checkpoint

# Two noun synsets (a parent and its child), one verb, one adjective, in the wndb(5) line format.
DATA = {
    "noun": [
        "  1 licence header line",
        '00000100 05 n 01 animal 0 001 ~ 00000200 n 0000 | a living organism that moves; "animals eat"',
        "00000200 05 n 02 dog 0 domestic_dog 0 001 @ 00000100 n 0000 | a member of the genus Canis",
    ],
    "verb": ["00000300 38 v 01 run 0 000 | move fast by using one's feet"],
    "adj": ["00000400 00 a 01 quiet 0 000 | characterized by an absence of noise"],
}
INDEX = {
    "noun": ["  1 licence header line", "animal n 1 1 ~ 1 5 00000100", "dog n 1 1 @ 1 7 00000200"],
    "verb": ["run v 1 0 1 9 00000300"],
    "adj": ["quiet a 1 0 1 0 00000400"],  # never sense-tagged: no prompt
}


@pytest.fixture
def wordnet(tmp_path):
    for pos in DATA:
        (tmp_path / f"data.{pos}").write_text("\n".join(DATA[pos]) + "\n")
        (tmp_path / f"index.{pos}").write_text("\n".join(INDEX[pos]) + "\n")
    return tmp_path


def test_data_lines_parse_into_synsets():
    synset = parse_data_line(DATA["noun"][2])
    assert synset.lexname == "noun.animal" and synset.words == ("dog", "domestic dog")
    assert synset.gloss == "a member of the genus Canis" and synset.hypernyms == (100,)
    assert parse_data_line(DATA["noun"][0]) is None
    assert parse_data_line(DATA["noun"][1]).gloss == "a living organism that moves"


def test_prompts_come_from_tagged_lemmas_with_a_stable_split(wordnet):
    records = build_prompts(wordnet, None, seed=0)
    sources = {r["source"] for r in records}
    assert sources == {
        "wordnet:noun.animal:animal#1",
        "wordnet:noun.animal:dog#1",
        "wordnet:verb.motion:run#1",
    }
    assert all(r["split"] == prompt_split(r["prompt"]) for r in records)
    assert len({r["prompt"] for r in records}) == len(records)
    assert build_prompts(wordnet, None, seed=0) == records  # same seed, same file


def test_missing_wordnet_is_one_line(tmp_path):
    with pytest.raises(RuvdllmError, match="no WordNet database"):
        build_prompts(tmp_path, None)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_transformers_model_equals_the_reference_model(tmp_path, arch):
    path = make_gguf_checkpoint(tmp_path / "m.gguf", arch, "Q4_1", tied=arch == "llama", seed=3)
    checkpoint, reference = load_model(path, progress=False)
    hf = causal_lm(checkpoint, torch.float32)
    ids = torch.tensor([[5, 9, 17, 3, 11, 40, 2, 7]])
    n = ids.shape[1]
    with torch.no_grad():
        expected = reference.eval()(ids, torch.arange(n)[None], torch.arange(n)[None], output_offset=0)
        got = hf(ids).logits
    torch.testing.assert_close(got, expected["logits"].float(), atol=2e-4, rtol=1e-4)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), temperature=st.floats(0.3, 3.0), top_p=st.floats(0.05, 1.0))
def test_nucleus_samples_only_from_the_nucleus(seed, temperature, top_p):
    scores = torch.randn(4, 600, generator=torch.Generator().manual_seed(seed)) * 3
    chosen = sample_nucleus(scores, temperature, top_p, torch.Generator().manual_seed(seed))
    probs = torch.softmax(scores.double() / temperature, -1)
    for row in range(4):
        sorted_probs, order = probs[row].sort(descending=True)
        size = int((sorted_probs.cumsum(0) - sorted_probs < top_p).sum())
        assert int(chosen[row]) in set(order[:size].tolist())
    again = sample_nucleus(scores, temperature, top_p, torch.Generator().manual_seed(seed))
    assert torch.equal(chosen, again)


def test_answers_resume_after_a_torn_line(tmp_path):
    path = make_gguf_checkpoint(tmp_path / "m.gguf", "llama", "Q4_1", tied=True, seed=1)
    checkpoint = load_checkpoint(path)
    model = causal_lm(checkpoint, torch.float32)
    records = [{"prompt": f"question {i}", "source": "test", "split": "train"} for i in range(5)]
    out = tmp_path / "answers.jsonl"
    eos = tuple(checkpoint.spec.eos_token_ids)

    def answer(subset):
        return answer_prompts(
            model,
            checkpoint.tokenizer,
            lambda p: p + "\n",
            subset,
            out,
            eos,
            eos[0],
            batch_size=2,
            max_new=4,
            progress=False,
        )

    first = answer(records[:3])
    assert first["answered"] == 3 and len(out.read_text().splitlines()) == 3
    with open(out, "a") as handle:
        handle.write('{"prompt": "question 3", "resp')  # a crash mid-write
    assert read_done(out) == {"question 0", "question 1", "question 2"}
    second = answer(records)
    assert second == {**second, "answered": 2, "skipped": 3}
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["prompt"] for r in lines) == [r["prompt"] for r in records]
    assert all(r["finish"] in ("stop", "length") and r["tokens"] <= 4 for r in lines)
    late = answer_prompts(
        model,
        checkpoint.tokenizer,
        lambda p: p + "\n",
        [*records, {"prompt": "question 5"}],
        out,
        eos,
        eos[0],
        max_minutes=1e-9,  # past before the first batch: nothing starts, the rest is left for a rerun
        progress=False,
    )
    assert late["answered"] == 0 and late["left"] == 1 and late["skipped"] == 5


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "the prompt file is empty"),
        ('{"prompt": "ok"}\n{not json\n', r"prompts.jsonl:2: not valid JSON"),
        ('{"text": "x"}\n', r"prompts.jsonl:1: needs a non-empty string 'prompt'"),
        pytest.param(
            '{"prompt": "ok"}\n',
            "device 'cuda:0': this torch sees no CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here"),
            id="no-gpu",
        ),
        ('{"prompt": "ok"}\n', "device 'tpu9': not a torch device"),
    ],
)
def test_bad_prompt_files_fail_in_one_line(tmp_path, content, message):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(content)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruvdllm",
            "distill",
            "answers",
            "--prompts",
            str(prompts),
            "--out",
            str(tmp_path / "o"),
            *(["--device", re.search(r"device '([^']+)'", message)[1]] if "device" in message else []),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and "error:" in run.stderr
    assert re.search(message, run.stderr), run.stderr
