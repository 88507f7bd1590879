"""``ggrun chat`` in a real pseudo-terminal (pexpect): streaming, commands, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pexpect
import pytest

PROMPT = ">>>"


def spawn(model: Path, *args: str, home: Path) -> pexpect.spawn:
    env = {
        **os.environ,
        "GGRUN_HOME": str(home),
        "PROMPT_TOOLKIT_NO_CPR": "1",
        "TERM": "xterm",
        "NO_COLOR": "1",
    }
    child = pexpect.spawn(
        sys.executable,
        ["-m", "ggrun", "chat", str(model), "--ctx", "1024", *args],
        env=env,
        encoding="utf-8",
        timeout=90,
        dimensions=(40, 200),
        # Ctrl-C as in a terminal, also when the runner was started in the background
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    child.expect_exact(PROMPT)
    return child


def test_chat_session(qwen_path: Path, isolated_home: Path, tmp_path: Path) -> None:
    child = spawn(qwen_path, "--temp", "0", "--system", "Answer briefly.", home=isolated_home)
    try:
        child.sendline("My name is Zorblat. Say OK.")
        child.expect_exact(PROMPT)
        child.sendline("What is my name?")
        child.expect("Zorblat")
        child.expect_exact(PROMPT)
        child.sendline("/stats")
        child.expect(r"context: +\d+ / 1024 tokens used")
        child.expect_exact(PROMPT)
        save = tmp_path / "c.json"
        child.sendline(f"/save {save}")
        child.expect("saved to")
        child.expect_exact(PROMPT)
        data = json.loads(save.read_text())
        assert [m["role"] for m in data["messages"]] == [
            "system",
            "user",
            "assistant",
            "user",
            "assistant",
        ]
        child.sendline("/reset")
        child.expect("history cleared")
        child.expect_exact(PROMPT)
        child.sendline(f"/load {save}")
        child.expect("loaded 4 messages")
        child.expect_exact(PROMPT)
        child.sendline('"""')
        child.sendline("Reply with the word")
        child.sendline('BANANA only."""')
        child.expect("BANANA")
        child.expect_exact(PROMPT)
        child.sendline("/nope")
        child.expect("unknown command")
        child.expect_exact(PROMPT)
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_reply_and_keeps_the_session(smol_path: Path, isolated_home: Path) -> None:
    child = spawn(smol_path, "--temp", "0", "--max-tokens", "2000", home=isolated_home)
    try:
        child.sendline("Write a very long story about a dragon and a knight.")
        child.expect_exact("knight.")  # the echo of the input line
        child.expect(r"\n[^\n]*\w+ \w+ \w+")  # then the reply is streaming
        child.sendintr()
        child.expect_exact("(interrupted)")
        child.expect_exact(PROMPT)
        child.sendline("/stats")
        child.expect(r"generated at .* \(interrupted\)")
        child.expect_exact(PROMPT)
        child.sendcontrol("d")  # Ctrl-D at an empty prompt exits
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


@pytest.mark.parametrize("key", ["c", "d"])
def test_ctrl_c_or_d_at_empty_prompt_exits(smol_path: Path, isolated_home: Path, key: str) -> None:
    child = spawn(smol_path, home=isolated_home)
    child.sendcontrol(key)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
