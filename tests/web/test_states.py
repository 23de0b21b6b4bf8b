"""The page's states (loading, ready, generating, stopping, error) as a person meets them: no
control is enabled where it cannot act, switching the execution provider cannot strand a
generation, an empty prompt cannot be sent, settings the model cannot use are off and say why,
the prompt is one Tab away, and a long word does not widen the page."""

from __future__ import annotations

import pytest

from tests.web.app import app_url, generate, open_app, set_settings, state
from tests.web.artifacts import variant

pytestmark = pytest.mark.browser

SETTINGS = {
    "sampler",
    "acceptance",
    "length",
    "block_size",
    "steps",
    "decoding",
    "order",
    "threshold",
    "entropy_bound",
    "temperature",
    "top_p",
    "seed",
}
SETTINGS |= {"talora", "dgr", "chat"}
FEEDBACK = {"thumb_up", "thumb_down", "correction", "save_correction"}  # on the last answer kept
# What may be enabled in each state (web/js/phases.js): a control outside its set would do nothing.
MAY_ACT = {
    "loading": {"ep"},  # switching restarts the load on the other provider
    "ready": {"generate", "ep"} | SETTINGS | FEEDBACK,
    "generating": {"stop"},
    "stopping": set(),
    "error": {"ep", "reload", "redownload"},
}


@pytest.fixture(scope="module")
def model_url(web_server, shared_tiny_model):
    return web_server.mount_model("tiny-states", shared_tiny_model)


def assert_only_controls_that_act(page_state: dict) -> None:
    assert page_state["phases"], "the page records no states"
    for entry in page_state["phases"]:
        extra = set(entry["enabled"]) - MAY_ACT[entry["phase"]]
        assert not extra, f"{sorted(extra)} enabled while {entry['phase']}"


def test_no_control_acts_out_of_its_state_and_switching_the_provider_mid_run_recovers(
    browser, web_server, model_url
):
    page = open_app(browser, app_url(web_server, model_url))
    assert state(page)["phase"] == "ready"
    page.fill("#prompt", "Count slowly.")
    set_settings(page, {"sampler": "mdlm", "length": 180})  # 180 whole-span steps: seconds of work
    page.click("#generate")
    page.wait_for_function("window.ruvdllm.steps >= 2")
    assert state(page)["phase"] == "generating"
    # The provider menu reloads the engine: while a run holds it, it cannot act.
    assert page.locator("#ep").is_disabled() and page.locator("#generate").is_disabled()
    assert all(page.locator(f"#{name}").is_disabled() for name in SETTINGS)
    assert page.locator("#stop").is_enabled()

    page.click("#stop")
    page.wait_for_function("window.ruvdllm.complete")
    assert [p["phase"] for p in state(page)["phases"]][-3:] == ["generating", "stopping", "ready"]

    # Now it can: the engine reloads, and the page generates again.
    page.select_option("#ep", "auto")
    page.wait_for_function("window.ruvdllm.phase === 'loading'")
    page.wait_for_function("['ready', 'error'].includes(window.ruvdllm.phase)", timeout=180_000)
    assert state(page)["phase"] == "ready", state(page)["error"]
    result = generate(page, "Hello", {"sampler": "bd3lm", "length": 8})
    assert result["complete"] and not result["complete"]["interrupted"], result["error"]
    assert_only_controls_that_act(state(page))
    assert not [line for line in browser.console if line.startswith("[pageerror]")]


def test_a_failed_load_leaves_only_what_can_mend_it(browser, web_server, shared_tiny_model, tmp_path):
    broken = variant(shared_tiny_model, tmp_path / "broken")
    (broken / "tokenizer.json").write_text("{}")  # same name, wrong size: a truncated download
    page = open_app(browser, app_url(web_server, web_server.mount_model("broken-states", broken)))
    page_state = state(page)
    assert page_state["phase"] == "error"
    assert page.locator("#redownload").is_enabled() and page.locator("#reload").is_enabled()
    assert page.locator("#generate").is_disabled() and page.locator("#stop").is_disabled()
    assert_only_controls_that_act(page_state)


def test_an_empty_prompt_cannot_be_sent(browser, web_server, model_url):
    page = open_app(browser, app_url(web_server, model_url))
    page.fill("#prompt", "  \n ")
    assert page.locator("#generate").is_disabled()
    page.press("#prompt", "Control+Enter")
    page.wait_for_timeout(300)
    assert state(page)["phase"] == "ready" and state(page)["steps"] == 0
    assert "empty" in page.evaluate("window.ruvdllm.run('   ', {}).then(() => 'ran', (e) => e.message)")
    page.fill("#prompt", "Hi")
    assert page.locator("#generate").is_enabled()


def test_settings_the_model_cannot_use_are_off_and_say_why(browser, web_server, shared_tiny_model, tmp_path):
    """A model converted for BD3LM only, its adapter folded in without the per-row switch, and
    without an adapter bank: MDLM, the verified and AR samplers, TALoRA and DGR greyed out; settings
    that do nothing with the others' values (threshold, top-p, seed) too, until they act."""
    switchless = {"source": {"static_adapter": {"linears": 7}}, "adapter_gate": False}
    model = variant(shared_tiny_model, tmp_path / "bd3lm-only", bank=False, samplers=("bd3lm",), **switchless)
    page = open_app(browser, app_url(web_server, web_server.mount_model("bd3lm-only", model)))
    assert state(page)["info"]["model"]["samplers"] == ["bd3lm"]
    assert state(page)["info"]["model"]["baseModel"] is False
    mdlm = page.locator("#sampler option[value=mdlm]")
    assert mdlm.is_disabled() and "not trained for" in mdlm.inner_text()
    assert "converted for bd3lm only" in mdlm.get_attribute("title")
    for base in ("verified", "ar"):  # they run the base model's rows: the switch, not the objective
        option = page.locator(f"#sampler option[value={base}]")
        assert option.is_disabled() and "no adapter switch" in option.inner_text()
        assert "per-row switch" in option.get_attribute("title")
    for name in ("talora", "dgr"):
        assert page.locator(f"#{name}").is_disabled() and not page.locator(f"#{name}").is_checked()
        assert "no adapter bank" in page.locator(f"label:has(#{name})").get_attribute("title")
    assert page.locator("#threshold").is_disabled()
    set_settings(page, {"decoding": "threshold"})
    assert page.locator("#threshold").is_enabled()
    assert page.locator("#top_p").is_disabled() and page.locator("#seed").is_disabled()
    set_settings(page, {"temperature": 0.5})
    assert page.locator("#top_p").is_enabled() and page.locator("#seed").is_enabled()
    result = generate(page, "Hello", {"length": 8, "seed": 3})
    assert result["complete"], result["error"]


def test_the_prompt_is_one_tab_away_and_the_shortcut_is_shown(browser, web_server, model_url):
    page = open_app(browser, app_url(web_server, model_url))
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to the prompt"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "prompt"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "generate"

    hint, button = page.locator("#submit-hint"), page.locator("#generate")
    assert hint.is_visible() and "Ctrl+Enter" in hint.inner_text()
    assert abs(hint.bounding_box()["y"] - button.bounding_box()["y"]) < button.bounding_box()["height"]
    page.fill("#prompt", "Hi")
    set_settings(page, {"length": 4})
    page.press("#prompt", "Control+Enter")
    page.wait_for_function("window.ruvdllm.complete || window.ruvdllm.error")
    assert state(page)["complete"], state(page)["error"]


def test_a_long_unbroken_word_wraps_instead_of_widening_the_page(browser, web_server, model_url):
    page = open_app(browser, app_url(web_server, model_url))
    result = generate(page, "Hi", {"length": 4})
    assert result["complete"], result["error"]
    word = "x" * 3000
    page.evaluate(
        """(word) => {
            document.getElementById('output').textContent = word;
            document.querySelector('#cells .cell').textContent = word;
            document.getElementById('chip-model').textContent = word;
        }""",
        word,
    )
    width = page.evaluate("window.innerWidth")
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    for button in ("#generate", "#stop"):
        box = page.locator(button).bounding_box()
        assert box["x"] + box["width"] <= width
