from contextlib import nullcontext
from dataclasses import fields, replace

import pytest

from runtime.dgr import DgrConfig
from runtime.drafting import LENIENT, Drafting
from runtime.settings import (
    AUTO,
    DIFFUSION_ONLY,
    INPUTS,
    SAMPLERS,
    USER_ACCEPTANCE,
    GenerationSettings,
    acceptance_that_runs,
    check_acceptance,
    concrete,
    diffusion_only,
    inputs_of,
    resolve,
    sampler_for,
    settings_from,
)
from ruvdllm.errors import RuvdllmError
from tests.runtime.toy_backend import TOY_CONFIG


def test_defaults_resolve_to_one_token_per_step():
    plan = resolve(GenerationSettings(length=10), TOY_CONFIG, 3)
    assert (plan.span, plan.steps) == (TOY_CONFIG.block_size, TOY_CONFIG.block_size)
    plan = resolve(GenerationSettings(sampler="mdlm", length=10, steps=5), TOY_CONFIG, 3)
    assert (plan.span, plan.steps) == (10, 5)
    plan = resolve(GenerationSettings(length=3, block_size=64), TOY_CONFIG, 3)
    assert plan.span == 3  # a block longer than the generation is just the generation


@pytest.mark.parametrize(
    "settings, prompt, message",
    [
        (GenerationSettings(), 0, "prompt: empty"),
        (GenerationSettings(length=500), 20, "exceed the model's context of 512"),
        (GenerationSettings(sampler="gibbs"), 3, "sampler 'gibbs': unknown"),
        (GenerationSettings(decoding="greedy"), 3, "decoding 'greedy'"),
        (GenerationSettings(schedule="sigmoid"), 3, "schedule 'sigmoid'"),
        (GenerationSettings(block_size=0), 3, "block size 0: out of range"),
        (GenerationSettings(block_size=600), 3, r"block size 600: out of range 1\.\.512"),
        (GenerationSettings(block_size=4, steps=5), 3, r"steps 5: out of range 1\.\.4"),
        (GenerationSettings(sampler="mdlm", length=8, steps=0), 3, "steps 0"),
        (GenerationSettings(length=0), 3, "length 0"),
        (GenerationSettings(threshold=1.5), 3, "threshold"),
        (GenerationSettings(entropy_bound=-0.1), 3, "entropy bound -0.1"),
        (GenerationSettings(entropy_bound=float("nan")), 3, "entropy bound nan"),
        (GenerationSettings(order="random"), 3, "order 'random': unknown"),
        (GenerationSettings(temperature=-1), 3, "temperature"),
        (GenerationSettings(temperature=float("nan")), 3, "temperature nan: must be a finite number"),
        (GenerationSettings(length="6"), 3, "length '6': must be a whole number"),
        (GenerationSettings(block_size=2.5), 3, "block size 2.5: must be a whole number"),
        (GenerationSettings(top_p="0.9"), 3, "top p '0.9': must be a number"),
        (GenerationSettings(temperature=float("inf")), 3, "temperature inf: must be a finite number"),
        (GenerationSettings(top_k=-1), 3, "top-k"),
        (GenerationSettings(top_p=0.0), 3, "top-p"),
        (GenerationSettings(drafting=Drafting(lookup="ngram")), 3, "drafting lookup 'ngram': unknown"),
        (GenerationSettings(drafting=Drafting(lookup_shortest=0)), 3, r"n-grams 0\.\.3"),
        (GenerationSettings(drafting=Drafting(lookup_shortest=4)), 3, r"n-grams 4\.\.3"),
        (GenerationSettings(drafting=Drafting(lookup_drafts=0)), 3, "lookup_drafts 0"),
    ],
)
def test_bad_settings_name_the_problem(settings, prompt, message):
    with pytest.raises(RuvdllmError, match=message):
        resolve(settings, TOY_CONFIG, prompt)


def test_user_input_maps_onto_the_fields_by_name():
    assert set(INPUTS) == {f.name for f in fields(GenerationSettings)} - {"dgr_config", "drafting"} | {
        "dgr_strategy",
        "acceptance",
    }
    settings = settings_from({"length": 12, "steps": None, "talora": False, "dgr_strategy": "entropy"})
    assert settings == GenerationSettings(length=12, talora=False, dgr_config=DgrConfig(strategy="entropy"))
    base = GenerationSettings(length=5, dgr_config=DgrConfig(strategy="adaptive", budget=2))
    over = settings_from({"temperature": 0.5, "dgr_strategy": "entropy"}, base)
    assert over.length == 5 and over.temperature == 0.5  # None or absent keeps the base's value
    assert over.dgr_config == DgrConfig(strategy="entropy", budget=2)  # only the strategy is a user's
    assert inputs_of({"seed": 1, "chat": True, "top_k": 3}) == {"top_k": 3}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"colour": "blue", "length": 3}, "settings: unknown colour"),
        ({"dgr_config": DgrConfig()}, "settings: unknown dgr_config"),
        ({"dgr_strategy": "always"}, "DGR strategy 'always': unknown"),
        ({"acceptance": "loose"}, r"acceptance 'loose': unknown \(choose from auto, exact, lenient\)"),
    ],
)
def test_bad_input_is_named(values, message):
    with pytest.raises(RuvdllmError, match=message):
        settings_from(values)


def test_acceptance_sets_the_verified_samplers_drafting_rule():
    """`acceptance` is Drafting flattened to one choice: auto is lenient when greedy and exact when
    sampling, whichever order the temperature arrives in; absent, the library's exact rule stays."""
    assert settings_from({}).drafting == Drafting() and Drafting().acceptance == "exact"
    assert settings_from({"acceptance": "auto"}).drafting == LENIENT
    assert settings_from({"acceptance": "auto", "temperature": 0.7}).drafting == Drafting()
    assert settings_from({"acceptance": "auto"}, GenerationSettings(temperature=0.7)).drafting == Drafting()
    assert settings_from({"acceptance": "lenient", "temperature": 0.7}).drafting == LENIENT
    assert settings_from({"acceptance": "exact"}).drafting == Drafting()
    assert settings_from({"acceptance": None}).drafting == Drafting()
    assert USER_ACCEPTANCE == "auto"


def test_an_acceptance_rule_named_for_a_sampler_without_drafts_is_an_error():
    for sampler in ("bd3lm", "mdlm", "ar"):
        check_acceptance(None, sampler)
        check_acceptance("auto", sampler)
        with pytest.raises(
            RuvdllmError,
            match=f"acceptance lenient: only the verified sampler checks drafts \\(this runs {sampler}\\)",
        ):
            check_acceptance("lenient", sampler)
    check_acceptance("exact", "verified")
    assert acceptance_that_runs(GenerationSettings(sampler="verified", drafting=LENIENT)) == "lenient"
    assert acceptance_that_runs(GenerationSettings(sampler="bd3lm", drafting=LENIENT)) is None


# --- sampler auto ---------------------------------------------------------------------------------

SWITCHED = replace(
    TOY_CONFIG, adapter_gate=True, samplers=("bd3lm",), source={"static_adapter": {"linears": 7}}
)
SWITCHLESS = replace(SWITCHED, adapter_gate=False)  # exported with --no-adapter-switch


def test_auto_is_the_default_and_verifies_where_the_model_has_the_adapter_switch():
    assert GenerationSettings().sampler == AUTO
    plan = resolve(GenerationSettings(length=10), SWITCHED, 3)
    assert (plan.sampler, plan.span, plan.steps) == ("verified", SWITCHED.block_size, 1)
    assert concrete(GenerationSettings(length=10), SWITCHED).sampler == "verified"
    # block size is the verified sampler's draft block too: still verified
    assert resolve(GenerationSettings(length=10, block_size=3), SWITCHED, 3).sampler == "verified"


@pytest.mark.parametrize(
    "config, expected",
    [
        (SWITCHLESS, "bd3lm"),  # no per-row switch: the AR model cannot check drafts
        (replace(SWITCHLESS, samplers=("mdlm",)), "mdlm"),  # the model's own objective
        (replace(SWITCHLESS, samplers=()), "bd3lm"),  # unknown objective
        (TOY_CONFIG, "bd3lm"),  # no conversion adapter at all
    ],
)
def test_auto_falls_back_to_the_models_diffusion_sampler(config, expected):
    plan = resolve(GenerationSettings(length=10), config, 3)
    assert plan.sampler == expected and plan.steps == (10 if expected == "mdlm" else config.block_size)


@pytest.mark.parametrize(
    "given",
    [
        {"steps": 2},
        {"steps": 1},
        {"decoding": "threshold"},
        {"decoding": "entropy-bounded", "entropy_bound": 1.0},
        {"threshold": 0.7},
        {"order": "confidence"},
        {"schedule": "cosine"},
    ],
)
def test_a_diffusion_only_setting_under_auto_chooses_diffusion_instead_of_an_error(given):
    settings = GenerationSettings(length=8, **given)
    assert diffusion_only(settings) == sorted(given, key=DIFFUSION_ONLY.index)
    plan = resolve(settings, SWITCHED, 3)
    assert plan.sampler == "bd3lm" and plan.steps == given.get("steps", SWITCHED.block_size)
    with (
        pytest.raises(RuvdllmError, match="the verified sampler takes no steps")
        if given.get("steps", 1) != 1
        else nullcontext()
    ):
        resolve(replace(settings, sampler="verified"), SWITCHED, 3)  # explicit: still refused


def test_an_explicit_sampler_is_never_replaced():
    for sampler in ("bd3lm", "mdlm", "verified", "ar"):
        assert sampler_for(GenerationSettings(sampler=sampler), SWITCHED) == sampler
    with pytest.raises(RuvdllmError, match="no per-row switch"):
        resolve(GenerationSettings(sampler="verified", length=8), SWITCHLESS, 3)
    assert "auto" in SAMPLERS and settings_from({"sampler": "auto"}).sampler == AUTO
