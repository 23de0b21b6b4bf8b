"""`ruvdllm distill store` and `ruvdllm export --answer-store` on a tiny GGUF: the store holds the
train split's answers only, tokenized as the runtime generates them; the export ships it in the
manifest and the runtime opens the model with it; a store of another vocabulary, or a bad answers
file, is a one-line error before any long work."""

from __future__ import annotations

import gzip
import json

import pytest

from runtime.answer_store import AnswerStore
from runtime.artifact import ANSWER_STORE_NAME, MANIFEST_NAME
from runtime.cpython_model import open_model
from ruvdllm.cli import main
from ruvdllm.errors import RuvdllmError
from ruvdllm_export.answer_store_build import build_answer_store
from ruvdllm_export.checkpoints import load_checkpoint
from ruvdllm_export.export import export_model
from tests.fixtures.tiny_models import make_gguf_checkpoint

ANSWERS = [
    {"prompt": "Describe a cat.", "response": "A cat is a small animal.", "split": "train", "finish": "stop"},
    {"prompt": "Describe a dog.", "response": "A dog is a small animal.", "split": "train", "finish": "stop"},
    {
        "prompt": "Describe a cow.",
        "response": "A cow is a large animal",
        "split": "train",
        "finish": "length",
    },
    {"prompt": "Describe a hen.", "response": "Held out: never in the store.", "split": "held-out"},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("answers")
    gguf = root / "tiny.gguf"
    make_gguf_checkpoint(gguf, "llama", "Q4_1", tied=True, seed=1)
    answers = root / "answers.jsonl.gz"
    with gzip.open(answers, "wt") as out:
        out.writelines(json.dumps(r) + "\n" for r in ANSWERS)
    return root, gguf, answers


def test_the_store_holds_the_train_answers_as_the_runtime_tokenizes_them(tiny, tmp_path):
    root, gguf, answers = tiny
    out = tmp_path / "store.ngrams"
    args = ["distill", "store", "--answers", str(answers), "--out", str(out), "--model", str(gguf)]
    assert main([*args, "--min-count", "1"]) == 0
    store = AnswerStore.read(out)
    assert store.meta["answers"] == 3 and store.meta["sources"] == [answers.name]
    checkpoint = load_checkpoint(gguf)
    tokenizer, eos = checkpoint.tokenizer, checkpoint.spec.eos_token_ids[0]
    direct = build_answer_store([answers], checkpoint, min_count=1)
    assert direct.to_bytes() == store.to_bytes()
    # what follows "is a small" in two answers is " animal", then "." and EOS (both stopped)
    ids = tokenizer.encode("A cat is a small animal.", add_special_tokens=False).ids
    start = len(tokenizer.encode("A cat is a small", add_special_tokens=False).ids)
    assert store.draft(ids[:start], len(ids) - start + 1) == [*ids[start:], eos]


def test_the_export_ships_the_store_and_the_runtime_reads_it(tiny, tmp_path):
    root, gguf, answers = tiny
    checkpoint = load_checkpoint(gguf)
    store_path = tmp_path / "store.ngrams"
    build_answer_store([answers], checkpoint, min_count=1).write(store_path)
    model_dir = export_model(gguf, tmp_path / "model", answer_store=store_path, log=None)
    assert (model_dir / ANSWER_STORE_NAME).read_bytes() == store_path.read_bytes()
    assert ANSWER_STORE_NAME in json.loads((model_dir / MANIFEST_NAME).read_text())["files"]
    model = open_model(model_dir)
    assert model.answers is not None and model.answers.entries == AnswerStore.read(store_path).entries
    done = model.generate("Describe a cat.", seed=0)  # whichever sampler runs, it runs with the store
    assert done.finish_reason in ("stop", "length")


def test_a_store_of_another_vocabulary_is_refused_before_the_export(tiny, tmp_path):
    root, gguf, _ = tiny
    foreign = tmp_path / "foreign.ngrams"
    AnswerStore.build([([], [1, 2, 3, 1, 2])], vocab_size=1 << 20, min_count=1).write(foreign)
    with pytest.raises(RuvdllmError, match="another vocabulary"):
        export_model(gguf, tmp_path / "model", answer_store=foreign, log=None)
    assert not (tmp_path / "model").exists()


def test_bad_answer_files_are_one_line_errors(tiny, tmp_path, capsys):
    root, gguf, _ = tiny
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ANSWERS[0]) + "\n{not json\n")
    out = tmp_path / "store.ngrams"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({**ANSWERS[0], "split": "held-out"}) + "\n")
    for answers, message in (
        (bad, f"{bad}:2: not an answer record"),
        (tmp_path / "none.jsonl", "no such answers file"),
        (empty, f"{empty}: no train-split answers"),
        (held, f"{held}: no train-split answers"),
    ):
        capsys.readouterr()
        assert (
            main(["distill", "store", "--answers", str(answers), "--out", str(out), "--model", str(gguf)])
            == 1
        )
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert not out.exists()


def test_the_shipped_store_is_readable_and_fits_smollm2():
    """The default model ships it: SmolLM2's 49,152 tokens, built from the committed answers."""
    from ruvdllm_export.adapters import DEFAULT_ANSWER_STORE

    store = AnswerStore.read(DEFAULT_ANSWER_STORE)
    store.check_model(49_152, str(DEFAULT_ANSWER_STORE))
    assert [t.n for t in store.tables] == [4, 3, 2] and store.entries > 100_000
    assert store.meta["sources"] == ["distill_answers_partial.jsonl.gz"] and store.meta["min_count"] == 2
    # shipped as format 1 (uncompressed); the export writes it compressed, at under half the size
    compressed = store.to_bytes()
    assert len(compressed) < 0.5 * DEFAULT_ANSWER_STORE.stat().st_size
    assert AnswerStore.from_bytes(compressed).entries == store.entries


def test_distill_flags_say_what_they_do_and_refuse_out_of_range_values(capsys):
    for action, flags in (
        ("prompts", ("--out", "--seed")),
        ("answers", ("--split", "--temperature", "--seed")),
    ):
        with pytest.raises(SystemExit):
            main(["distill", action, "--help"])
        shown = capsys.readouterr().out
        for flag in flags:
            assert f"  {flag} " in shown
        assert shown.count("(default:") >= len(flags)
    for flag, value in (("--top-p", "0"), ("--temperature", "nan"), ("--batch", "0")):
        with pytest.raises(SystemExit):
            main(["distill", "answers", "--out", "a.jsonl", flag, value])
        assert f"argument {flag}: {value} is out of range" in capsys.readouterr().err
