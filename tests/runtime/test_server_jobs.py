"""runtime/server/jobs.py: requests become the runtime's GenerationSettings knob for knob, the
default length fits the context, and what the runtime would reject is a 400 before queueing.
Checking a job never waits for a generation, and a job checked on the first model runs on any."""

from __future__ import annotations

import threading

import pytest

from runtime.chat_template import chat_prompt
from runtime.cpython_model import open_model
from runtime.drafting import LENIENT
from runtime.ort_backend import OrtOptions
from runtime.server.engine import Engine
from runtime.server.errors import ApiError
from runtime.server.jobs import (
    DEFAULTS,
    chat_job,
    check_model_name,
    completion_job,
    knobs_not_read,
    settings_for,
)
from runtime.server.schemas import ChatCompletionRequest, CompletionRequest
from runtime.settings import GenerationSettings

ONE_THREAD = OrtOptions(intra_op_threads=1)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return open_model(tiny_model_dir, options=OrtOptions(intra_op_threads=1), verify="sizes")


def test_every_knob_reaches_the_settings():
    request = CompletionRequest(
        prompt="x",
        temperature=0.7,
        top_p=0.8,
        top_k=3,
        steps=2,
        block_size=8,
        sampler="mdlm",
        decoding="threshold",
        threshold=0.5,
        entropy_bound=1.5,
        order="left-to-right",
        schedule="cosine",
        talora=False,
        dgr=False,
        dgr_strategy="adaptive",
        ignore_eos=True,
    )
    settings = settings_for(request, 12, prompt_tokens=3, context=256)
    assert (settings.temperature, settings.top_p, settings.top_k) == (0.7, 0.8, 3)
    assert (settings.steps, settings.block_size, settings.sampler) == (2, 8, "mdlm")
    assert (settings.decoding, settings.threshold, settings.schedule) == ("threshold", 0.5, "cosine")
    assert (settings.talora, settings.dgr, settings.stop_at_eos, settings.length) == (False, False, False, 12)
    assert settings.dgr_config.strategy == "adaptive"
    assert (settings.entropy_bound, settings.order) == (1.5, "left-to-right")


def test_unset_knobs_keep_the_runtime_defaults_and_the_length_fits_the_context():
    settings = settings_for(CompletionRequest(prompt="x"), None, prompt_tokens=3, context=256)
    # the runtime's defaults, with the acceptance `ruvdllm generate` takes: auto (lenient when greedy)
    assert settings == DEFAULTS.__class__(length=DEFAULTS.length, drafting=LENIENT)
    sampled = settings_for(CompletionRequest(prompt="x", temperature=0.7), None, prompt_tokens=3, context=256)
    assert sampled.drafting == DEFAULTS.drafting
    exact = settings_for(
        CompletionRequest(prompt="x", acceptance="exact"), None, prompt_tokens=3, context=256
    )
    assert exact.drafting == DEFAULTS.drafting
    assert settings_for(CompletionRequest(prompt="x"), None, prompt_tokens=250, context=256).length == 6


def test_completion_job_encodes_and_checks(model):
    job, text = completion_job(
        model, CompletionRequest(prompt="Hello there", max_tokens=5, seed=3, stop="\n")
    )
    assert job.prompt == model.encode("Hello there") and text == "Hello there"
    assert (job.seed, job.stops, job.settings.length) == (3, ("\n",), 5)
    with pytest.raises(ApiError, match="steps 9: out of range") as error:
        completion_job(model, CompletionRequest(prompt="Hello", max_tokens=8, steps=9))
    assert error.value.param == "steps"


def test_a_seed_is_chosen_when_none_is_given(model):
    seeds = {completion_job(model, CompletionRequest(prompt="Hi"))[0].seed for _ in range(4)}
    assert len(seeds) == 4


def test_chat_job_renders_the_template(model):
    request = ChatCompletionRequest(messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=7)
    job = chat_job(model, request)
    assert job.prompt == model.encode(chat_prompt(model, [{"role": "user", "content": "Hi"}]))
    assert job.settings.length == 7


def test_the_model_name_must_match_when_given():
    check_model_name(None, "tiny")
    check_model_name("tiny", "tiny")
    with pytest.raises(ApiError) as error:
        check_model_name("gpt-4", "tiny")
    assert (error.value.status, error.value.code) == (404, "model_not_found")


def test_a_sampler_the_model_was_not_trained_for_is_answered_with_a_warning(tiny_model_copy):
    """Served (a comparison may want it), with one line in the answer's `diffusion.warnings`."""
    from dataclasses import replace

    from runtime import artifact
    from runtime.server.engine import Outcome
    from runtime.server.responses import info_of

    config = artifact.load_config(tiny_model_copy)
    (tiny_model_copy / artifact.CONFIG_NAME).write_text(replace(config, samplers=("bd3lm",)).to_json())
    artifact.write_manifest(tiny_model_copy)
    model = open_model(tiny_model_copy, options=OrtOptions(intra_op_threads=1), verify="sizes")
    mdlm, _ = completion_job(model, CompletionRequest(prompt="Hello", max_tokens=4, sampler="mdlm"))
    bd3lm, _ = completion_job(model, CompletionRequest(prompt="Hello", max_tokens=4))
    outcome = Outcome("", "length", 2, 0, 1, 1.0, 1.0)
    (warning,) = info_of(mdlm, outcome, 0.0).warnings
    assert "converted for bd3lm only" in warning
    assert info_of(bd3lm, outcome, 0.0).warnings == []


@pytest.mark.parametrize(
    "knobs, param",
    [
        ({"sampler": "ar", "decoding": "threshold"}, "decoding"),
        ({"sampler": "ar", "schedule": "cosine"}, "schedule"),
        ({"sampler": "ar", "block_size": 8}, "block_size"),
        ({"sampler": "ar", "order": "confidence"}, "order"),
        ({"sampler": "verified", "threshold": 0.5}, "threshold"),
        ({"sampler": "verified", "entropy_bound": 1.0}, "entropy_bound"),
    ],
)
def test_knobs_the_named_sampler_does_not_use_are_refused_as_steps_is(model, knobs, param):
    with pytest.raises(ApiError, match=f"the {knobs['sampler']} sampler does not use it") as error:
        completion_job(model, CompletionRequest(prompt="Hello", max_tokens=4, **knobs))
    assert (error.value.status, error.value.param) == (400, param)


def test_knobs_the_sampler_uses_are_taken():
    """verified drafts blocks of block_size; under auto, a diffusion-only knob picks diffusion."""
    settings = settings_for(CompletionRequest(prompt="x", sampler="verified", block_size=4), 4, 1, 256)
    assert settings.block_size == 4
    assert knobs_not_read(CompletionRequest(prompt="x", sampler="verified", block_size=4)) == []
    assert knobs_not_read(CompletionRequest(prompt="x", decoding="threshold")) == []
    assert knobs_not_read(CompletionRequest(prompt="x", sampler="mdlm", schedule="cosine")) == []


@pytest.fixture
def ar_models(tiny_switch_model_dir):
    """Two models opened on the AR graph, as `ruvdllm serve --max-concurrency 2` opens them where
    its defaults run `ar`."""
    ar = GenerationSettings(sampler="ar")
    return [open_model(tiny_switch_model_dir, options=ONE_THREAD, settings=ar) for _ in range(2)]


def test_checking_a_job_never_waits_for_a_generation(ar_models):
    """The first request for another sampler used to switch the model it was checked on to the
    full graph, under the model's lock: on the event loop, until the running generation ended."""
    model = ar_models[0]
    done: list = []
    request = CompletionRequest(prompt="Hello", max_tokens=4, sampler="bd3lm")
    with model.lock:  # a generation is running on this model
        checker = threading.Thread(target=lambda: done.append(completion_job(model, request)[0]))
        checker.start()
        checker.join(timeout=30)
        assert done, "checking the job waited for the model's lock"
    assert done[0].settings.sampler == "bd3lm"
    assert model.backend.ar_only  # the model that runs it moves to the full graph, when it runs it


def test_a_job_checked_on_the_first_model_runs_on_every_worker(ar_models, tiny_switch_model_dir):
    engine = Engine(ar_models)
    request = CompletionRequest(prompt="Hello", max_tokens=8, sampler="bd3lm", seed=3, ignore_eos=True)
    job, _ = completion_job(engine.model, request)
    first, second = engine.run(job), engine.run(job)  # the pool hands out the models in turn
    assert not any(m.backend.ar_only for m in ar_models)  # each moved to its full graph to run it
    full = open_model(tiny_switch_model_dir, options=ONE_THREAD)
    expected = full.generate(job.prompt, job.settings, seed=3).tokens
    assert first.tokens == second.tokens == expected
    engine.close()
