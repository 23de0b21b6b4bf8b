"""Feedback in the page (learning loop A in the browser): after an answer, a thumb up or down or a
corrected answer is kept with the answer's trajectory in IndexedDB, survives a reload, and reads
back as the Python learning code's own records. Feedback controls act only on an answer the page
kept, and only while nothing runs (web/js/phases.js)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from runtime.learning.trajectory import CORRECTION_VALUE, Feedback, Trajectory
from tests.web.app import app_url, generate, open_app, set_settings, state

pytestmark = pytest.mark.browser

FEEDBACK = ("thumb_up", "thumb_down", "correction", "save_correction")
STEP_FIELDS = {
    "span",
    "step",
    "t",
    "committed",
    "retrieved",
    "drafted",
    "entropy",
    "confidence",
    "talora",
    "patterns",
    "forward_ms",
}  # fmt: skip  (runtime/learning/trajectory.py step_summary)
KEPT = """async (id) => {
  const store = await window.ruvdllm.trajectories();
  return {trajectory: await store.trajectory(id), feedback: await store.feedbackFor(id), count: await store.count()};
}"""


@pytest.fixture(scope="module")
def model_url(web_server, shared_tiny_model):
    return web_server.mount_model("tiny-feedback", shared_tiny_model)


def enabled(page) -> set[str]:
    return {name for name in FEEDBACK if page.locator(f"#{name}").is_enabled()}


def answer(page, prompt: str) -> tuple[dict, str]:
    """Generate, and wait until the page has kept the answer (feedback can then go to it)."""
    result = generate(page, prompt, {"sampler": "bd3lm", "length": 8})
    assert result["complete"] and not result["complete"]["interrupted"], result["error"]
    page.wait_for_function("window.ruvdllm.answerId")
    return result, state(page)["answerId"]


def test_a_thumb_is_kept_with_the_answers_trajectory_across_a_reload(browser, web_server, model_url):
    page = open_app(browser, app_url(web_server, model_url))
    result, completion_id = answer(page, "Hello")
    assert completion_id.startswith("cmpl-") and len(completion_id) == 37
    page.click("#thumb_up")
    page.wait_for_function("window.ruvdllm.feedback.length === 1")
    assert page.get_attribute("#thumb_up", "aria-pressed") == "true"
    assert "good" in page.inner_text("#feedback-status")

    page.reload()
    page.wait_for_function("window.ruvdllm && window.ruvdllm.ready && window.ruvdllm.learned")
    kept = page.evaluate(KEPT, completion_id)
    trajectory = Trajectory(**kept["trajectory"])  # the Python record, field for field
    assert set(kept["trajectory"]) == {f.name for f in fields(Trajectory)}
    assert trajectory.answer == result["complete"]["text"]
    assert trajectory.answer_tokens == result["complete"]["tokens"]
    assert trajectory.prompt_tokens == result["complete"]["promptIds"]
    assert len(trajectory.steps) == result["complete"]["stats"]["steps"] == trajectory.timings["steps"]
    assert all(set(step) == STEP_FIELDS for step in trajectory.steps)
    assert trajectory.finish_reason == result["complete"]["stats"]["finishReason"]
    assert trajectory.settings["sampler"] == "bd3lm" and trajectory.settings["length"] == 8
    (thumb,) = kept["feedback"]
    feedback = Feedback(thumb["completion_id"], thumb["kind"], thumb["rating"], thumb["correction"])
    assert feedback == Feedback(completion_id, "up") and feedback.value == 1.0
    assert kept["count"] == state(page)["learned"] == {"trajectories": 1, "feedback": 1}
    assert not [line for line in browser.console if line.startswith("[pageerror]")]


def test_a_corrected_answer_is_kept_beside_a_thumb(browser, web_server, model_url):
    page = open_app(browser, app_url(web_server, model_url))
    _, completion_id = answer(page, "Name a colour.")
    assert enabled(page) == {"thumb_up", "thumb_down", "correction"}  # nothing to save yet
    page.fill("#correction", "  ")
    assert page.locator("#save_correction").is_disabled()
    page.fill("#correction", "Blue.")
    page.click("#save_correction")
    page.wait_for_function("window.ruvdllm.feedback.length === 1")
    assert page.input_value("#correction") == "" and page.locator("#save_correction").is_disabled()
    page.click("#thumb_down")
    page.wait_for_function("window.ruvdllm.feedback.length === 2")
    assert page.get_attribute("#thumb_down", "aria-pressed") == "true"
    assert page.get_attribute("#thumb_up", "aria-pressed") == "false"

    kept = page.evaluate(KEPT, completion_id)
    given = [Feedback(f["completion_id"], f["kind"], f["rating"], f["correction"]) for f in kept["feedback"]]
    assert given == [Feedback(completion_id, "correction", None, "Blue."), Feedback(completion_id, "down")]
    assert [f.value for f in given] == [CORRECTION_VALUE, -1.0]


def test_feedback_acts_only_on_a_kept_answer_while_nothing_runs(browser, web_server, model_url):
    page = open_app(browser, app_url(web_server, model_url))
    assert enabled(page) == set()  # no answer yet
    _, first = answer(page, "Hi")
    assert enabled(page) == {"thumb_up", "thumb_down", "correction"}

    page.fill("#prompt", "Count slowly.")
    set_settings(page, {"sampler": "mdlm", "length": 180})  # long enough to act during it
    page.click("#generate")
    page.wait_for_function("window.ruvdllm.steps >= 2")
    assert enabled(page) == set() and state(page)["answerId"] is None  # the answer on screen is going
    page.click("#stop")
    page.wait_for_function("window.ruvdllm.complete")
    page.wait_for_timeout(300)
    assert state(page)["complete"]["interrupted"] and state(page)["answerId"] is None
    assert enabled(page) == set()  # a stopped answer is not kept: nothing to rate
    kept = page.evaluate("(async () => (await (await window.ruvdllm.trajectories()).count()))()")
    assert kept["trajectories"] == 1 and first
