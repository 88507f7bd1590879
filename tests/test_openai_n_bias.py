"""OpenAI's ``n`` (several choices, each drawn with its own seed through the batcher) and
``logit_bias`` (llama.cpp's logit-bias sampler, first in the chain): through the real
``openai`` client against ``ggrun serve`` on SmolLM2, through the Python API and the
CLI's ``--logit-bias``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ggrun.errors import InvalidArgument
from ggrun.sampling import SamplingConfig
from tests.helpers import serving

openai = pytest.importorskip("openai")

PROMPT = "The capital of France is"  # model="" below: the server's own
MSGS = [{"role": "user", "content": "Write one sentence about the sea."}]


@pytest.fixture(scope="module")
def server(smol_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    args = [str(smol_path), "--parallel", "2", "--ctx", "1024"]
    with serving(args, tmp_path_factory.mktemp("home")) as base:
        yield base


@pytest.fixture(scope="module")
def client(server: str) -> Any:
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def first(smol: Any) -> tuple[str, int]:
    """The token greedy decoding picks first after :data:`PROMPT`, and its id."""
    r = smol.generate(PROMPT, max_tokens=1, temperature=0)
    ids = smol.tokenize(r.text)
    assert len(ids) == 1
    return r.text, ids[0]


# ---------------------------------------------------------------- n


def test_n_gives_n_choices_that_a_seed_repeats(client: Any) -> None:
    def ask() -> Any:
        return client.chat.completions.create(
            model="", messages=MSGS, n=2, temperature=1.0, seed=11, max_tokens=16
        )

    r = ask()
    assert [c.index for c in r.choices] == [0, 1]
    texts = [c.message.content for c in r.choices]
    assert all(texts) and texts[0] != texts[1]  # seeds 11 and 12
    assert [c.message.content for c in ask().choices] == texts
    one = client.chat.completions.create(
        model="", messages=MSGS, temperature=1.0, seed=11, max_tokens=16
    )
    assert r.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once
    assert r.usage.completion_tokens > one.usage.completion_tokens / 2 + 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_n_on_completions_and_greedy(client: Any) -> None:
    r = client.completions.create(model="", prompt=PROMPT, n=3, temperature=0, max_tokens=6)
    assert [c.index for c in r.choices] == [0, 1, 2]  # more choices than --parallel
    assert len({c.text for c in r.choices}) == 1  # greedy: one answer, n times
    assert r.usage.completion_tokens == 3 * 6


def test_n_streams_each_choice_with_its_index(client: Any) -> None:
    stream = client.chat.completions.create(
        model="", messages=MSGS, n=2, temperature=1.0, seed=11, max_tokens=16, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text: dict[int, str] = {0: "", 1: ""}
    finishes = []
    for c in chunks[:-1]:
        assert c.usage is None and len(c.choices) == 1
        ch = c.choices[0]
        text[ch.index] += ch.delta.content or ""
        if ch.finish_reason:
            finishes.append(ch.index)
    assert sorted(finishes) == [0, 1]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    whole = client.chat.completions.create(
        model="", messages=MSGS, n=2, temperature=1.0, seed=11, max_tokens=16
    )
    assert [text[0], text[1]] == [c.message.content for c in whole.choices]
    assert last.usage.completion_tokens == whole.usage.completion_tokens


def _metric(server: str, name: str) -> float:
    for line in httpx.get(server + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(name)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_frees_every_choice(server: str, stream: bool) -> None:
    cancelled = _metric(server, "ggrun_requests_cancelled_total")
    never_ends = {"0": -100, "2": -100}  # SmolLM2's <|endoftext|> and <|im_end|> banned
    body = {"messages": MSGS, "n": 3, "max_tokens": 900, "stream": stream, "temperature": 1.0,
            "logit_bias": never_ends}  # fmt: skip
    url = server + "/v1/chat/completions"
    if stream:
        with httpx.stream("POST", url, json=body, timeout=60) as r:
            for line in r.iter_lines():
                if '"content":"' in line.replace(" ", "") and '"content":""' not in line:
                    break  # one piece of text, then the client goes away
    else:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up waiting
            httpx.post(url, json=body, timeout=httpx.Timeout(60, read=1.5))
    deadline = time.monotonic() + 30
    while _metric(server, "ggrun_requests_active") + _metric(server, "ggrun_queue_length"):
        assert time.monotonic() < deadline, "the choices still run"
        time.sleep(0.1)
    assert _metric(server, "ggrun_requests_cancelled_total") >= cancelled + 2


@pytest.mark.parametrize("n", [0, 17, 2.5, "2"])
def test_n_out_of_bounds_is_a_400(client: Any, n: Any) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="", messages=MSGS, n=n, max_tokens=2)
    assert e.value.body["param"] == "n" and "from 1 to 16" in e.value.body["message"]


# ---------------------------------------------------------------- logit_bias


def test_logit_bias_bans_and_forces_a_token(client: Any, first: tuple[str, int]) -> None:
    text, token = first

    def complete(**body: Any) -> str:
        r = client.completions.create(model="", prompt=PROMPT, temperature=0, max_tokens=4, **body)
        return r.choices[0].text  # type: ignore[no-any-return]

    assert complete().startswith(text)
    assert not complete(logit_bias={str(token): -100}).startswith(text)
    comma = 28  # ","
    assert complete(logit_bias={str(comma): 100}) == ",,,,"
    r = client.chat.completions.create(
        model="", messages=MSGS, max_tokens=4, temperature=0, logit_bias={str(comma): 100}
    )
    assert r.choices[0].message.content == ",,,,"


def test_a_ban_holds_when_sampling(client: Any, first: tuple[str, int]) -> None:
    text, token = first
    r = client.completions.create(
        model="", prompt=PROMPT, n=4, temperature=2.0, seed=1, max_tokens=1,
        logit_bias={str(token): -100},
    )  # fmt: skip
    assert all(c.text != text for c in r.choices)


@pytest.mark.parametrize(("bias", "says"), [
    ({"99999": 5}, "logit_bias names token 99999, but the model's vocabulary has 49152"),
    ({"5": 101}, "logit_bias[5] must be between -100 and 100, got 101"),
    ({"5": "x"}, "logit_bias[5] must be a number, got str"),
    ({"-1": 1}, "logit_bias keys must be token ids"),
    ({"ab": 1}, "logit_bias keys must be token ids"),
    ({str(i): 1 for i in range(301)}, "logit_bias may hold at most 300 tokens, got 301"),
])  # fmt: skip
def test_a_wrong_logit_bias_is_a_400_naming_it(
    client: Any, bias: dict[str, Any], says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="", messages=MSGS, max_tokens=2, logit_bias=bias)
    assert says in e.value.body["message"]


# ---------------------------------------------------------------- Python API and CLI


def test_the_python_api_takes_logit_bias(smol: Any, first: tuple[str, int]) -> None:
    text, token = first
    banned = smol.generate(PROMPT, max_tokens=8, temperature=0, logit_bias={token: -100})
    assert token not in smol.tokenize(banned.text) and not banned.text.startswith(text)
    forced = smol.generate(PROMPT, max_tokens=3, temperature=0, logit_bias={"28": 100})
    assert forced.text == ",,,"
    assert forced.run is not None and dict(forced.run.sampling)["logit_bias"] == ((28, 100.0),)
    with pytest.raises(InvalidArgument, match="names token 49152, but"):
        smol.generate(PROMPT, max_tokens=1, logit_bias={49152: 1})


def test_the_config_holds_biases_as_sorted_pairs() -> None:
    cfg = SamplingConfig(logit_bias={"7": 1, 3: -2.5})
    assert cfg.logit_bias == ((3, -2.5), (7, 1.0))
    assert cfg == SamplingConfig(logit_bias={3: -2.5, 7: 1}) and hash(cfg) == hash(
        SamplingConfig(logit_bias=((3, -2.5), (7, 1.0)))
    )
    assert cfg.replace(seed=1).logit_bias == cfg.logit_bias
    with pytest.raises(InvalidArgument, match="names token 3 twice"):
        SamplingConfig(logit_bias=[("3", 1.0), (3, 2.0)])
    with pytest.raises(InvalidArgument, match=r"names token 7, but .* has 5 tokens"):
        cfg.check_vocab(5)


def test_the_cli_takes_logit_bias(smol_path: Path) -> None:
    from typer.testing import CliRunner

    from ggrun.cli.app import app

    args = ["generate", str(smol_path), PROMPT, "-n", "3", "--ctx", "256", "--temp", "0"]
    runner = CliRunner()
    r = runner.invoke(app, [*args, "--logit-bias", "28=100", "--logit-bias", "5=-100"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == ",,,"
    bad = runner.invoke(app, [*args, "--logit-bias", "28"])
    assert bad.exit_code != 0 and "ID=N" in bad.output
    bad = runner.invoke(app, [*args, "--logit-bias", "99999=1"])
    assert bad.exit_code == 1 and "logit_bias names token 99999" in bad.stderr
