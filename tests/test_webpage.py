"""The chat page at ``/`` in a real browser: Debian's Chromium, driven by Playwright, against a
real ``ggrun serve`` on SmolLM2.

Playwright's Python package brings its own driver; the browser is the system's
``/usr/bin/chromium`` (``.ci/run`` installs it), never one Playwright downloads. Screenshots
go to ``$GGRUN_TEST_ARTIFACTS`` (default ``tests/artifacts/``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import httpx
import pytest

from ggrun import webpage

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
MODEL_ID = "SmolLM2-135M-Instruct.Q4_1"
KEY = "page-key-456"
ARTIFACTS = Path(os.environ.get("GGRUN_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")


def _unavailable(reason: str) -> NoReturn:
    """Skip on a developer machine without a browser; in CI the browser tests must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (.ci/run installs it)")
    pytest.skip(reason, allow_module_level=True)


if not CHROMIUM.exists():
    _unavailable(f"Debian's chromium is not installed ({CHROMIUM}): apt-get install chromium")
try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:
    _unavailable("playwright is not installed: pip install -e '.[test]'")


# ---------------------------------------------------------------- a real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(base: str, proc: subprocess.Popen[Any]) -> None:
    """Until /health answers; fails if the server process dies first."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
    raise AssertionError(f"{base} did not become healthy in 90 s")


@contextmanager
def _serve(model: Path, home: Path, *extra: str) -> Iterator[str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "ggrun", "serve", str(model), "--port", str(port)]
    cmd += ["--parallel", "2", "--ctx", "1024", *extra]
    env = {**os.environ, "GGRUN_HOME": str(home)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc)
        yield base
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert b"Traceback" not in out, out


@pytest.fixture(scope="module")
def server(smol_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _serve(smol_path, tmp_path_factory.mktemp("home")) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield b
        b.close()


@pytest.fixture()
def open_page(browser: Browser, server: str) -> Iterator[Callable[..., Page]]:
    """Opens the chat page in a fresh browser context (empty localStorage).

    Every request a page makes is recorded, and at the end all of them must have gone to
    the server's own origin.
    """
    contexts, requests = [], []

    def open_(base: str = server, **context: Any) -> Page:
        ctx = browser.new_context(base_url=base, **context)
        contexts.append(ctx)
        page = ctx.new_page()
        page.on("request", lambda r: requests.append((base, r.url)))
        page.goto("/")
        return page

    yield open_
    for ctx in contexts:
        ctx.close()
    foreign = [url for base, url in requests if _origin(url) != _origin(base)]
    assert requests and not foreign, foreign


def _origin(url: str) -> str:
    if url.startswith("blob:"):  # an export download, made by the page itself
        url = url[len("blob:") :]
    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc}"


def _metrics(base: str, key: str | None = None) -> dict[str, float]:
    h = {"Authorization": f"Bearer {key}"} if key else {}
    text = httpx.get(base + "/metrics", headers=h).text
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\w+) ([\d.]+)$", text, re.M)}


# ---------------------------------------------------------------- page helpers


def _ready(page: Page) -> None:
    """Until the model picker is filled from /v1/models."""
    page.wait_for_function(
        "id => document.getElementById('model').value === id", arg=MODEL_ID, timeout=30_000
    )


def _settings(page: Page, *, max_tokens: int, temperature: float | None = None) -> None:
    page.click("#settings-btn")
    page.get_by_label("Max tokens").fill(str(max_tokens))
    if temperature is not None:
        page.get_by_label("Temperature").fill(str(temperature))
    page.click("#settings-btn")


def _send(page: Page, text: str) -> None:
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")


def _reply(page: Page) -> Any:
    return page.locator(".msg.assistant").last


def _wait_done(page: Page, timeout: float = 120_000) -> None:
    page.wait_for_selector(".msg.assistant[aria-busy='false']", timeout=timeout)


def _store(page: Page, *chats: dict[str, Any]) -> None:
    """Put conversations into the page's localStorage (the first one open) and reload."""
    page.evaluate(
        """cs => { localStorage.setItem('ggrun.chats', JSON.stringify(cs));
                   localStorage.setItem('ggrun.current', JSON.stringify(cs[0].id)); }""",
        list(chats),
    )
    page.reload()


def _errors(page: Page) -> list[str]:
    """Uncaught exceptions and console errors of ``page`` from now on."""
    seen: list[str] = []
    page.on("pageerror", lambda e: seen.append(f"pageerror: {e}"))
    page.on("console", lambda m: seen.append(m.text) if m.type == "error" else None)
    return seen


def _depth(page: Page, selector: str) -> int:
    """How deep elements nest under ``selector``."""
    return int(
        page.eval_on_selector(
            selector,
            """root => { let most = 0;
                         for (const e of root.querySelectorAll('*')) {
                           let d = 0;
                           for (let x = e; x !== root; x = x.parentElement) d++;
                           most = Math.max(most, d);
                         }
                         return most; }""",
        )
    )


def _shot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


# ---------------------------------------------------------------- tests


def test_a_reply_streams_in(open_page: Callable[..., Page]) -> None:
    page = open_page()
    _ready(page)
    _settings(page, max_tokens=48)
    box = page.get_by_label("Message", exact=True)
    box.fill("Write a short poem")
    box.press("Shift+Enter")  # a new line, not a send
    box.press_sequentially("about the sea.")
    assert box.input_value() == "Write a short poem\nabout the sea."
    assert page.locator(".msg").count() == 0
    box.press("Enter")
    assert page.locator(".msg.user .body").inner_text() == "Write a short poem\nabout the sea."
    seen = []
    reply = _reply(page)
    deadline = time.monotonic() + 120
    while reply.get_attribute("aria-busy") != "false" and time.monotonic() < deadline:
        n = len(reply.locator(".body").inner_text())
        if n and (not seen or n != seen[-1]):
            seen.append(n)
        time.sleep(0.03)
    # it grew, piece by piece (markdown may shrink it a little on the way: "**" closed
    # becomes bold, a line's trailing "  " a break)
    assert len(seen) >= 3 and seen[0] < seen[-1] == max(seen), seen
    stats = reply.locator(".stats").inner_text()
    assert re.search(r"\d+ tokens · [\d.]+ tok/s", stats) and "prompt" in stats, stats
    assert page.locator("#send").is_visible() and not page.locator("#stop").is_visible()
    _shot(page, "webpage-reply.png")


def test_stop_cancels_the_request_and_frees_the_slot(
    open_page: Callable[..., Page], server: str
) -> None:
    page = open_page()
    _ready(page)
    _settings(page, max_tokens=600)
    before = _metrics(server)["ggrun_requests_cancelled_total"]
    _send(page, "Write a very long story about a dragon who learns to fly.")
    page.wait_for_function(
        "() => document.querySelector('.msg.assistant .body').textContent.length > 20"
    )
    assert _metrics(server)["ggrun_requests_active"] == 1
    page.get_by_role("button", name="Stop").click()
    deadline = time.monotonic() + 5
    while _metrics(server)["ggrun_requests_active"] != 0:
        assert time.monotonic() < deadline, "the slot is still busy 5 s after Stop"
        time.sleep(0.1)
    assert _metrics(server)["ggrun_requests_cancelled_total"] == before + 1
    _wait_done(page, timeout=5_000)
    assert "stopped" in _reply(page).locator(".stats").inner_text()
    assert page.locator("#send").is_visible()


HOSTILE = (
    'Hi <img src=x onerror="window.__pwned=1"> and <script>window.__pwned=2</script>\n\n'
    "**bold <b>x</b>** and *em* `<i>code</i>` [link](javascript:window.__pwned=3)\n\n"
    "```html\n<script>window.__pwned=4</script>\n```\n\n"
    '- item <svg onload="window.__pwned=5">\n'
    "- second\n\n"
    '1. <iframe src="javascript:window.__pwned=6"></iframe>\n'
    "2. [ok](https://example.org/)"
)


def _sse(*events: dict[str, Any]) -> str:
    return "".join(f"data: {json.dumps(e)}\r\n\r\n" for e in events) + "data: [DONE]\r\n\r\n"


def test_reasoning_settings_and_usage(open_page: Callable[..., Page]) -> None:
    """A Qwen3-style stream (canned here: SmolLM2 does not think) and what the page sends."""
    page = open_page()
    _ready(page)
    sent: list[Any] = []

    def reply(route: Any) -> None:
        sent.append((route.request.headers, route.request.post_data_json))
        chunk = {"choices": [{"index": 0, "delta": {}, "finish_reason": None}]}
        route.fulfill(
            status=200,
            content_type="text/event-stream",
            body=_sse(
                {"choices": [{"index": 0, "delta": {"reasoning_content": "Hmm, <b>two</b>"}}]},
                {"choices": [{"index": 0, "delta": {"reasoning_content": " words."}}]},
                {"choices": [{"index": 0, "delta": {"content": "Hello **there**"}}]},
                chunk,
                {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                 "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}},
            ),
        )  # fmt: skip

    page.route("**/v1/chat/completions", reply)
    page.click("#settings-btn")
    page.get_by_label("System prompt").fill("Be brief.")
    page.get_by_label("Temperature").fill("0.3")
    page.get_by_label("Think").uncheck()
    _send(page, "Hi")
    _wait_done(page)
    headers, body = sent[0]
    assert headers["content-type"] == "application/json"
    assert body["model"] == MODEL_ID and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["temperature"] == 0.3 and "max_tokens" not in body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    msg = _reply(page)
    details = msg.locator("details.reasoning")
    assert not details.get_attribute("open")  # folded once the answer began
    assert details.locator(".text").text_content() == "Hmm, <b>two</b> words."
    assert msg.locator(".body strong").inner_text() == "there"
    stats = msg.locator(".stats").inner_text()
    assert "5 tokens" in stats and "prompt 9 tokens" in stats and "length" in stats, stats


def test_an_api_error_is_shown(open_page: Callable[..., Page]) -> None:
    page = open_page()
    _ready(page)
    _settings(page, max_tokens=100_000)  # more than the context holds: a 400
    _send(page, "Hi")
    _wait_done(page)
    error = _reply(page).locator(".error-text").inner_text()
    assert "max_tokens" in error, error
    assert page.locator("#send").is_visible()


def test_model_text_is_text_never_html(open_page: Callable[..., Page]) -> None:
    page = open_page()
    probe = page.evaluate(
        """md => { const box = document.createElement('div');
                   box.id = 'probe';
                   box.append(window.ggrun.renderMarkdown(md));
                   document.body.append(box);
                   return box.textContent; }""",
        HOSTILE,
    )
    assert '<img src=x onerror="window.__pwned=1">' in probe
    assert "<script>window.__pwned=4</script>" in probe
    box = page.locator("#probe")
    assert box.locator(":is(img, script, svg, iframe, b, i)").count() == 0
    assert box.locator("strong").inner_text() == "bold <b>x</b>"
    assert box.locator("em").inner_text() == "em"
    assert box.locator("p code").inner_text() == "<i>code</i>"
    assert "window.__pwned=4" in box.locator("pre code").inner_text()
    assert box.locator("ul > li").count() == 2 and box.locator("ol > li").count() == 2
    hrefs = box.locator("a").evaluate_all("as => as.map(a => a.href)")
    assert hrefs == ["https://example.org/"]  # no javascript: link
    # the same text as a stored reply (with hostile reasoning) through the real message view
    reasoning = '<img src=y onerror="window.__pwned=7">'
    _store(page, {"id": "x", "title": "<b>t</b>", "created": 0, "updated": 0, "messages": [
        {"role": "user", "content": "<script>window.__pwned=8</script>"},
        {"role": "assistant", "content": HOSTILE, "reasoning": reasoning},
    ]})  # fmt: skip
    msgs = page.locator("#messages")
    assert msgs.locator(":is(img, script, svg, iframe, b, i)").count() == 0
    assert '<img src=x onerror="window.__pwned=1">' in msgs.inner_text()
    page.locator("details.reasoning summary").click()
    assert page.locator("details.reasoning .text").inner_text() == reasoning
    assert page.locator("#chat-list button").inner_text() == "<b>t</b>"
    time.sleep(0.3)  # an onerror would have fired by now
    assert page.evaluate("() => window.__pwned") is None


def test_the_conversation_survives_a_reload(open_page: Callable[..., Page], tmp_path: Path) -> None:
    page = open_page()
    _ready(page)
    _settings(page, max_tokens=16, temperature=0)
    _send(page, "Say hello.")
    _wait_done(page)
    reply = _reply(page).locator(".body").inner_text()
    assert reply
    page.reload()
    _ready(page)
    assert page.locator("#chat-list button").inner_text() == "Say hello."
    assert page.locator(".msg.user .body").inner_text() == "Say hello."
    assert _reply(page).locator(".body").inner_text() == reply
    assert page.get_by_label("Max tokens").input_value() == "16"  # settings are kept too
    with page.expect_download() as dl:
        page.get_by_role("button", name="Export").click()
    path = tmp_path / "chat.json"
    dl.value.save_as(path)
    exported = json.loads(path.read_text())
    assert [m["role"] for m in exported["messages"]] == ["user", "assistant"]
    assert exported["messages"][1]["stats"]["completion"] <= 16
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Delete").click()
    assert page.locator("#chat-list li").count() == 0 and page.locator("#empty").is_visible()
    page.reload()
    assert page.locator("#chat-list li").count() == 0


def test_headers_and_only_own_resources(open_page: Callable[..., Page], server: str) -> None:
    errors: list[str] = []
    page = open_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    response = page.reload()
    assert response is not None
    _ready(page)
    for path in webpage.ASSETS:
        r = httpx.get(server + path)
        assert r.status_code == 200
        assert r.headers["content-security-policy"] == webpage.CSP
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-cache" and r.headers["etag"]
        again = httpx.get(server + path, headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304 and not again.content
    assert response.headers["content-security-policy"] == webpage.CSP
    assert not errors, errors  # nothing was blocked by the page's own policy
    # (the fixture checks that every request the page made went to this origin)


def test_phone_width(open_page: Callable[..., Page]) -> None:
    page = open_page(viewport={"width": 375, "height": 740})
    _ready(page)
    _store(page, SHOWCASE)
    _ready(page)
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    box = page.get_by_label("Message", exact=True)
    assert box.is_visible()
    b = box.bounding_box()
    assert (
        b is not None and b["x"] >= 0 and b["x"] + b["width"] <= 375 and b["y"] + b["height"] <= 740
    )
    assert not page.locator("#sidebar").is_visible()  # folded away, behind the menu button
    _shot(page, "webpage-phone.png")
    page.get_by_role("button", name="Conversations").click()
    assert page.locator("#sidebar").is_visible()
    page.wait_for_timeout(300)  # the slide-in
    _shot(page, "webpage-phone-menu.png")
    page.keyboard.press("Escape")
    page.wait_for_selector("#sidebar", state="hidden")


def test_api_key_is_asked_for_and_kept(
    open_page: Callable[..., Page], smol_path: Path, tmp_path: Path
) -> None:
    with _serve(smol_path, tmp_path, "--api-key", KEY) as base:
        page = open_page(base)
        dialog = page.get_by_role("dialog")
        dialog.wait_for()
        page.get_by_label("API key", exact=True).fill("wrong")
        page.get_by_role("button", name="Use key").click()
        page.get_by_text("That key was refused.").wait_for()  # asked again
        page.get_by_label("API key", exact=True).fill(KEY)
        page.get_by_role("button", name="Use key").click()
        _ready(page)
        assert not dialog.is_visible()
        _settings(page, max_tokens=8)
        _send(page, "Hi!")
        _wait_done(page)
        assert _reply(page).locator(".stats").inner_text()
        assert not _reply(page).locator(".error-text").count()
        page.reload()
        _ready(page)  # the key was kept: no dialog this time
        assert not dialog.is_visible()
        assert _metrics(base, KEY)["ggrun_requests_finished_total"] == 1
        page.context.close()  # before the server stops


SHOWCASE = {
    "id": "showcase", "title": "Reverse a list in Python", "created": 0, "updated": 1,
    "messages": [
        {"role": "user", "content": "How do I reverse a list in Python? Keep it short."},
        {"role": "assistant", "reasoning": "The user wants a short answer. Slicing and "
         "list.reverse() are the two idioms; mention that one copies and one is in place.",
         "content": "Two common ways:\n\n1. **Slicing** makes a reversed *copy*:\n"
         "2. `list.reverse()` reverses **in place** and returns `None`.\n\n"
         "```python\nitems = [1, 2, 3]\nprint(items[::-1])  # [3, 2, 1]\nitems.reverse()\n"
         "print(items)        # [3, 2, 1], the list itself changed\n```\n\n"
         "Use `reversed(items)` when you only need to *iterate* backwards.",
         "stats": {"completion": 74, "prompt": 31, "seconds": 0.62, "ttft": 0.08,
                   "finish": "stop"}},
    ],
}  # fmt: skip


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshot(open_page: Callable[..., Page], scheme: str) -> None:
    page = open_page(viewport={"width": 1200, "height": 760}, color_scheme=scheme)
    _ready(page)
    _store(page, SHOWCASE)
    _ready(page)
    page.locator("details.reasoning summary").click()
    path = _shot(page, f"webpage-{scheme}.png")
    assert path.stat().st_size > 10_000


# ---------------------------------------------------------------- hostile replies (issue #25)

DEEP_QUOTE = ">" * 8000 + " deep down"  # a RangeError in a recursive renderer
DEEP_LIST = "- " * 8000 + "bottom"
HOSTILE_MARKDOWN = {  # each froze or crashed the old renderer; "END" must still show
    "quotes": DEEP_QUOTE + "\nEND",
    "spaced quotes": "> " * 8000 + "END",
    "list markers": DEEP_LIST + "\n\nEND",
    "numbered markers": "1. " * 5000 + "END",
    "quotes and lists": "> - " * 4000 + "END",
    "indented lists": "\n".join("  " * k + "- x" for k in range(1000)) + "\n\nEND",
    "rule-like list": "- " * 100_000 + "END",
    "open bold": "**a " * 100_000 + "END",
    "open italic": "*a " * 300_000 + "END",
    "open underscores": "_a " * 300_000 + "END",
    "open strike": "~~a " * 100_000 + "END",
    "open links": "[a](" * 100_000 + "END",
    "backtick runs": "".join("`" * k + "a" for k in range(1, 700)) + "END",
    "heading spaces": "# a" + " " * 300_000 + "END",
    # and two the old renderer handled, kept as checks
    "nested emphasis": "**a ~~b *c _d " * 2000 + "END" + " d_ c* b~~ a**" * 2000,
    "fences": "```\n" * 20_000 + "END",
}  # fmt: skip


@pytest.mark.parametrize("name", list(HOSTILE_MARKDOWN))
def test_hostile_markdown_renders_and_stays_shallow(
    open_page: Callable[..., Page], name: str
) -> None:
    """Deep nesting renders as plain text below a fixed depth, and no line makes the
    renderer backtrack: each of these took the old one 5 to 45 s, or overflowed its stack.
    The timeout only tells a frozen page from a working one (this takes milliseconds)."""
    page = open_page()
    page.evaluate(
        """md => setTimeout(() => {
             const box = document.createElement('div');
             box.id = 'probe';
             try { box.append(window.ggrun.renderMarkdown(md)); window.__rendered = 'ok'; }
             catch (e) { window.__rendered = String(e); }
             document.body.append(box);
           })""",
        HOSTILE_MARKDOWN[name],
    )
    page.wait_for_function("() => window.__rendered !== undefined", timeout=20_000)
    assert page.evaluate("() => window.__rendered") == "ok"
    assert "END" in page.locator("#probe").text_content()
    assert _depth(page, "#probe") <= 40


def test_a_stored_chat_that_nests_too_deep_still_loads(open_page: Callable[..., Page]) -> None:
    """A saved reply that crashed the renderer used to throw in init() on every reload:
    the page stayed on "loading…" until the user cleared its storage by hand."""
    page = open_page()
    errors = _errors(page)
    deep = {"id": "deep", "title": "Deep", "created": 0, "updated": 3, "messages": [
        {"role": "user", "content": "Quote me"},
        {"role": "assistant", "content": DEEP_QUOTE},
    ]}  # fmt: skip
    listed = {"id": "list", "title": "Listed", "created": 0, "updated": 2, "messages": [
        {"role": "user", "content": "List me"},
        {"role": "assistant", "content": DEEP_LIST},
    ]}  # fmt: skip
    _store(page, deep, listed, SHOWCASE)
    _ready(page)  # init() ran to the end
    titles = page.locator("#chat-list button").all_inner_texts()
    assert titles == ["Deep", "Listed", "Reverse a list in Python"]
    body = _reply(page).locator(".body")
    assert "deep down" in body.inner_text()
    assert 0 < body.locator("blockquote").count() <= 16 and _depth(page, "#messages") <= 48
    page.get_by_role("button", name="Listed").click()
    assert "bottom" in _reply(page).locator(".body").inner_text()
    page.get_by_role("button", name="Reverse a list in Python").click()
    assert _reply(page).locator(".body strong").first.inner_text() == "Slicing"
    assert not errors, errors


def test_a_chat_the_renderer_fails_on_shows_as_plain_text(open_page: Callable[..., Page]) -> None:
    """Any renderer failure, not just the known ones: here every blockquote throws (an
    init script breaks document.createElement for it). That chat shows its text as text,
    escaped; the other chats and the page work."""
    page = open_page()
    page.add_init_script(
        """{ const create = Document.prototype.createElement;
             Document.prototype.createElement = function (tag, ...rest) {
               if (String(tag).toLowerCase() === 'blockquote') throw new Error('broken');
               return create.call(this, tag, ...rest);
             }; }"""
    )
    hostile = '> quoted <img src=x onerror="window.__pwned=1">\n\n**not bold**'
    bad = {"id": "bad", "title": "Bad", "created": 0, "updated": 2, "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": hostile},
    ]}  # fmt: skip
    _store(page, bad, SHOWCASE)
    _ready(page)
    assert page.locator("#chat-list button").all_inner_texts() == ["Bad", SHOWCASE["title"]]
    body = _reply(page).locator(".body")
    assert body.inner_text() == hostile  # the text as it is: no markup, no HTML
    assert body.locator(":is(img, strong, blockquote)").count() == 0
    page.get_by_role("button", name=SHOWCASE["title"]).click()
    assert _reply(page).locator(".body strong").first.inner_text() == "Slicing"
    _settings(page, max_tokens=8)
    _send(page, "Hi")  # the page still sends and streams
    _wait_done(page)
    assert page.locator("#send").is_visible() and not page.locator("#stop").is_visible()
    assert page.evaluate("() => window.__pwned") is None


def test_a_streamed_reply_that_nests_too_deep(open_page: Callable[..., Page]) -> None:
    """The reply streams in pieces (repainted as it grows), then the stream ends: it
    renders, the Stop button goes away and the chat is saved and reloads."""
    page = open_page()
    _ready(page)
    errors = _errors(page)
    text = DEEP_QUOTE + "\n\n" + DEEP_LIST + "\n\nthe end"
    pieces = [text[k : k + 500] for k in range(0, len(text), 500)]
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(
            status=200,
            content_type="text/event-stream",
            body=_sse(*({"choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces)),
        ),
    )
    _send(page, "Nest")
    _wait_done(page, timeout=20_000)
    assert page.locator("#send").is_visible() and not page.locator("#stop").is_visible()
    body = _reply(page).locator(".body")
    assert "the end" in body.inner_text() and "deep down" in body.inner_text()
    assert not body.locator(".error-text").count()
    page.unroute("**/v1/chat/completions")
    page.reload()
    _ready(page)
    assert "the end" in _reply(page).locator(".body").inner_text()
    assert not errors, errors
