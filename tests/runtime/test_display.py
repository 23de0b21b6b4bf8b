import io

from rich.console import Console

from runtime.denoise import StepEvent
from runtime.display import MASK_GLYPH, LiveView, StreamPrinter


def event(tokens, committed=None, step=0):
    return StepEvent(
        span=0, step=step, t=0.5, committed=committed or {}, tokens=tokens, retrieved=[], forward_ms=1.0
    )


def test_live_view_shows_masks_filling_in():
    console = Console(file=io.StringIO(), force_terminal=True, width=80, record=True)
    words = {1: "The", 2: " cat", 3: " sat"}
    with LiveView(words.get, console=console) as view:
        view(event([1, None, None], {0: 1}))
        view(event([1, 2, None], {1: 2}, step=1))
        view(event([1, 2, 3], {2: 3}, step=2))
    text = console.export_text()
    assert f"The{MASK_GLYPH}{MASK_GLYPH}" in text
    assert "The cat sat" in text
    assert "step 3" in text


def test_live_view_erases_its_last_frame_so_the_answer_is_printed_once():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80)
    with LiveView({1: "The", 2: " cat"}.get, console=console) as view:
        view(event([1, 2], {1: 2}))
    frame, after = out.getvalue().rsplit("ms/forward", 1)  # the last frame's status line
    # the frame (text, status line) is erased line by line once the view closes
    assert after.count("\x1b[2K") >= 2


def test_stream_printer_writes_final_prefixes_once():
    out = io.StringIO()
    text = {1: "a", 2: "b", 3: "c"}
    printer = StreamPrinter(lambda ids: "".join(text[i] for i in ids), out, eos={9})
    printer(event([None, 2, None]))
    assert out.getvalue() == ""  # nothing final yet: position 0 is masked
    printer(event([1, 2, None]))
    printer(event([1, 2, 3, 9, None]))
    printer(event([1, 2, 3, 9, 2]))  # after EOS nothing more is printed
    printer.finish("abc")
    assert out.getvalue() == "abc\n"


def test_stream_printer_waits_for_complete_characters():
    out = io.StringIO()
    pieces = {1: b"\xc3", 2: b"\xa9", 3: b"!"}
    printer = StreamPrinter(
        lambda ids: b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace"), out, eos=set()
    )
    printer(event([1, None]))
    assert out.getvalue() == ""
    printer(event([1, 2, 3]))
    assert out.getvalue() == "é!"
