"""Driving the client page (web/index.html) as a person would: open it, wait for the model, fill the
settings, press Generate, read what the page shows. `window.ruvdllm` is the page's own record of
what happened (web/js/app.js)."""

from __future__ import annotations

from pathlib import Path

from runtime.chat_template import chat_prompt
from runtime.cpython_model import open_model
from runtime.settings import USER_ACCEPTANCE, GenerationSettings, inputs_of, settings_from

LOAD_TIMEOUT_MS = 180_000  # Pyodide + onnxruntime-web start-up on two busy cores
RUN_TIMEOUT_MS = 300_000  # WebGPU on SwiftShader is slow


def open_app(browser, url: str, timeout_ms: int = LOAD_TIMEOUT_MS):
    """Open the page at `url` and wait until the model is ready or an error shows."""
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function(
        "window.ruvdllm && (window.ruvdllm.ready || window.ruvdllm.error)", timeout=timeout_ms
    )
    return page


def app_url(served, model_url: str, ep: str = "wasm", **extra) -> str:
    query = "&".join([f"model={model_url}", f"ep={ep}", *(f"{k}={v}" for k, v in extra.items())])
    return f"{served.url}?{query}"


def state(page) -> dict:
    return page.evaluate("JSON.parse(JSON.stringify(window.ruvdllm))")


def set_settings(page, settings: dict) -> None:
    """Fill the settings form: keys are element ids (sampler, acceptance, length, block_size, steps, decoding,
    order, threshold, entropy_bound, temperature, top_p, seed, talora, dgr, chat), in the order
    given (a setting can enable another: the threshold needs threshold decoding, top-p and the
    seed a temperature). A disabled setting can only be "set" to the value it has: it does
    nothing in this state."""
    for name, value in settings.items():
        selector = f"#{name}"
        if page.is_disabled(selector):
            current = page.eval_on_selector(selector, "el => el.type === 'checkbox' ? el.checked : el.value")
            if current != value and str(current) != str(value) and float_or(current) != float_or(value):
                raise AssertionError(
                    f"{name} is disabled (the page says it does nothing now): cannot set {value!r}"
                )
            continue
        if isinstance(value, bool):
            page.set_checked(selector, value, force=True)  # the switch styles hide the checkbox
        elif page.eval_on_selector(selector, "el => el.tagName") == "SELECT":
            page.select_option(selector, str(value))
        elif page.eval_on_selector(selector, "el => el.type") == "range":
            page.eval_on_selector(
                selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", str(value)
            )
        else:
            page.fill(selector, "" if value is None else str(value))


def float_or(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def generate(page, prompt: str, settings: dict | None = None, timeout_ms: int = RUN_TIMEOUT_MS) -> dict:
    """Type the prompt, press Generate, wait for the answer (or an error); the page's state."""
    set_settings(page, settings or {})
    page.fill("#prompt", prompt)
    page.click("#generate")
    page.wait_for_function("window.ruvdllm.complete || window.ruvdllm.error", timeout=timeout_ms)
    return state(page)


def cpython_reference(model_dir: Path, prompt: str, settings: dict, seed: int, chat: bool = True):
    """The CPython runtime on the same model directory: (prompt ids, completion, trace)."""
    model = open_model(model_dir)
    text = chat_prompt(model, [{"role": "user", "content": prompt}]) if chat else prompt
    trace = []
    done = model.generate(text, generation_settings(settings), seed=seed, on_step=trace.append)
    return model.encode(text), done, trace


def generation_settings(page_settings: dict) -> GenerationSettings:
    """The page's form values as GenerationSettings (form-only keys such as seed and chat dropped),
    through the mapping the page's own settings take (runtime.settings.settings_from). The form's
    Acceptance control starts at auto (USER_ACCEPTANCE); where it is off, the sampler checks no drafts."""
    return settings_from({"acceptance": USER_ACCEPTANCE, **inputs_of(page_settings)})
