"""Showing a generation while it denoises: a live view in a terminal (masked positions filling
in), or plain text streamed as soon as a prefix is final when output is not a terminal."""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from runtime.denoise import StepEvent

MASK_GLYPH = "░"


class LiveView:
    """rich Live panel: committed tokens as text, masked ones as ░, this step's commits
    highlighted, and a status line with span, step and t."""

    def __init__(self, token_text: Callable[[int], str], console=None, prompt: str = ""):
        from rich.console import Console
        from rich.live import Live

        self.token_text = token_text
        self.prompt = prompt
        self.console = console or Console(stderr=False)
        # transient: the animation is erased when it ends, and the caller prints the answer once,
        # decoded whole (a last frame left on screen showed the answer twice)
        self.live = Live(console=self.console, auto_refresh=False, transient=True)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)

    def render(self, event: StepEvent):
        from rich.text import Text

        text = Text()
        if self.prompt:
            text.append(self.prompt, style="bold")
        for position, token in enumerate(event.tokens):
            if token is None:
                text.append(MASK_GLYPH, style="dim")
            elif position in event.committed:
                text.append(self.token_text(token), style="bold green")
            else:
                text.append(self.token_text(token))
        masked = sum(token is None for token in event.tokens)
        status = (
            f"\nspan {event.span} · step {event.step + 1} · t={event.t:.2f} · "
            f"{masked} masked · {event.forward_ms:.1f} ms/forward"
        )
        text.append(status, style="cyan")
        return text

    def __call__(self, event: StepEvent) -> None:
        self.live.update(self.render(event), refresh=True)


class StreamPrinter:
    """Writes text as soon as it is final: the generated prefix with no masked position left,
    cut before any end-of-sequence token, decoded as a whole so multi-byte characters stay
    intact."""

    def __init__(self, decode: Callable[[list[int]], str], out: TextIO, eos: set[int]):
        self.decode = decode
        self.out = out
        self.eos = eos
        self.printed = ""
        self.done = False

    def final_prefix(self, tokens: list) -> list[int]:
        prefix = []
        for token in tokens:
            if token is None:
                break
            if token in self.eos:
                self.done = True
                break
            prefix.append(token)
        return prefix

    def __call__(self, event: StepEvent) -> None:
        if self.done:
            return
        text = self.decode(self.final_prefix(event.tokens))
        if text.endswith("\ufffd"):
            text = text[:-1]  # an incomplete UTF-8 sequence: wait for the rest
        if text.startswith(self.printed) and len(text) > len(self.printed):
            self.out.write(text[len(self.printed) :])
            self.out.flush()
            self.printed = text

    def finish(self, final_text: str) -> None:
        """Print whatever the final decode adds (e.g. a trailing partial character)."""
        if final_text.startswith(self.printed):
            self.out.write(final_text[len(self.printed) :])
        self.out.write("\n")
        self.out.flush()
