"""The model: weights, metadata and one context; :meth:`Model.stream` is the primitive.

Everything that generates one reply (``generate``, ``chat``, :class:`ggrun.Chat`, the
CLI) is a loop over :meth:`Model.stream`, which yields small :class:`Chunk` dataclasses.
A request is built once (:class:`~ggrun.request.Request`), made ready for this model by
:meth:`Model.prepare` (chat template, tokens, sampling preset, grammar check), and run
through the token loop of :mod:`ggrun.decoder` as one sequence of the model's own
context, which is created on first use and keeps its KV cache between calls: a prompt
that extends what the cache holds decodes only its new tokens.

The file is validated in Python (:mod:`ggrun.gguffile`) before llama.cpp opens it.
llama.cpp's log output is silenced unless ``verbose=True``. Native memory is freed
deterministically by :meth:`Model.close` (or ``with ggrun.load(...) as model``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggrun import hardware, llama, planner, redraw, sampling, structured, templates
from ggrun import speculative as speculative_mod
from ggrun import tools as tools_mod
from ggrun.decoder import Decoder, Prepared
from ggrun.errors import (
    ContextOverflow,
    GgrunError,
    InvalidArgument,
    SchemaMismatch,
    UnsupportedArchitecture,
)
from ggrun.gguffile import GGUFInfo, read_gguf
from ggrun.hardware import Hardware, detect_hardware
from ggrun.planner import Plan
from ggrun.promptcache import PromptCache
from ggrun.request import Request
from ggrun.runinfo import RunInfo
from ggrun.sampling import SamplingConfig
from ggrun.textstream import Chunk, Result
from ggrun.tools import Tool

logger = logging.getLogger(__name__)

DEFAULT_CTX = 4096

__all__ = ["Chunk", "LoadConfig", "Model", "Result", "load"]


@dataclass(frozen=True)
class LoadConfig:
    """How to load a model. ``None`` means: decided from the model and the machine."""

    n_ctx: int | None = None  # default: min(training context, 4096)
    n_threads: int | None = None  # generation threads; default: physical cores
    n_threads_batch: int | None = None  # prompt threads; default: logical cores
    n_batch: int = 512
    n_gpu_layers: int = 0
    use_mmap: bool = True
    # weight repacking (REPACK/AMX); None: safe default (an AMX build: REPACK alone)
    extra_buffers: bool | None = None
    verbose: bool = False
    cache_type: str = "f16"  # the KV cache: f16, q8_0 or q4_0 (quantized: flash attention on)
    context: bool = True  # create the model's own context now (False: on first use; a
    # server's batch engine makes its own and needs only the weights)
    prompt_cache: bool = True  # keep prompt states on disk (ggrun.promptcache)
    cache_size: int | None = None  # its bound in bytes, all models (None: 4 GiB)
    memory: bool = True  # remember its replies for later requests' guesses (a server's
    # --no-memory: a request's speed would show whether it repeats what others were told)

    def __post_init__(self) -> None:
        if self.n_ctx is not None and self.n_ctx < 16:
            raise InvalidArgument(f"n_ctx must be at least 16, got {self.n_ctx}")
        for name in ("n_threads", "n_threads_batch"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise InvalidArgument(f"{name} must be at least 1, got {v}")
        if self.n_batch < 1:
            raise InvalidArgument(f"n_batch must be at least 1, got {self.n_batch}")
        if self.cache_type not in llama.CACHE_TYPES:
            known = ", ".join(llama.CACHE_TYPES)
            raise InvalidArgument(f"cache_type must be one of {known}, got {self.cache_type!r}")

    @classmethod
    def from_plan(cls, plan: Plan, **extra: Any) -> LoadConfig:
        """Load exactly as ``plan`` says; ``extra`` sets the other fields."""
        return cls(
            n_ctx=plan.n_ctx,
            n_threads=plan.n_threads,
            n_threads_batch=plan.n_threads_batch,
            n_batch=plan.n_batch,
            n_gpu_layers=plan.n_gpu_layers,
            use_mmap=plan.use_mmap,
            cache_type=plan.cache_type,
            **extra,
        )


def check_architecture(info: GGUFInfo) -> None:
    """Refuse architectures llama.cpp does not know (gguf-py's MODEL_ARCH table)."""
    from gguf.constants import MODEL_ARCH_NAMES

    if info.arch not in set(MODEL_ARCH_NAMES.values()):
        raise UnsupportedArchitecture(
            f"{info.path}: architecture {info.arch!r} is not supported by llama.cpp"
        )


class Model:
    """A loaded GGUF model, its chat template and sampling presets, and one context."""

    def __init__(
        self,
        path: str | Path,
        config: LoadConfig | None = None,
        *,
        family: str = "",
        plan: Plan | None = None,
        info: GGUFInfo | None = None,
        speculative: str | speculative_mod.Draft | None = None,
        draft: str | Path | None = None,
    ) -> None:
        """``speculative`` is the default for every request (off, lookup, draft, auto);
        ``draft`` the path of a draft model (``ggrun.load`` resolves a
        :class:`~ggrun.Draft` alias)."""
        self.config = config or LoadConfig()
        self.speculative = speculative_mod.mode_of(speculative)
        self.path = Path(path)
        self.plan = plan  # how ggrun.load decided to run it (None for a bare Model())
        self.info: GGUFInfo = info or read_gguf(self.path)
        check_architecture(self.info)
        self.family = family or self.info.arch
        extra = self.config.extra_buffers
        self.weights_extra_buffers = hardware.extra_buffers_safe() if extra is None else extra
        self.weights = llama.Weights(
            self.path,
            n_gpu_layers=self.config.n_gpu_layers,
            use_mmap=self.config.use_mmap,
            extra_buffers=self.weights_extra_buffers,
            repack=self.config.extra_buffers,  # None: as hardware says; False: no repacking
            info=self.info,
            verbose=self.config.verbose,
        )
        if self.config.cache_type == "q4_0" and self.info.arch == "qwen2":
            logger.warning(
                "a q4_0 KV cache ruins Qwen2-family models (their keys have outliers: "
                "perplexity 3.8 -> 2009 on Qwen2.5-Coder-1.5B, in llama.cpp too); use q8_0"
            )
        self.n_ctx_train = self.weights.n_ctx_train
        self.n_ctx = self.config.n_ctx or min(self.n_ctx_train or DEFAULT_CTX, DEFAULT_CTX)
        self.n_threads = self.config.n_threads or hardware.generation_threads()
        self.n_threads_batch = self.config.n_threads_batch or hardware.batch_threads()
        self.n_batch = min(self.config.n_batch, self.n_ctx)
        self._eog = self._end_of_turn_tokens()
        self._ctx: llama.Context | None = None
        self._decoder: Decoder | None = None
        self._kv: list[int] = []  # tokens whose cells the context holds (sequence 0)
        # texts to vectors (Model.embed), on a context of its own made on first use
        self.embedder = llama.Embedder(
            self.weights, n_ctx=self.n_ctx, n_threads=self.n_threads,
            n_threads_batch=self.n_threads_batch,
        )  # fmt: skip
        # its recent replies, for the guesses of later requests (speculative decoding)
        self.memory = speculative_mod.Memory() if self.config.memory else None
        self.draft: speculative_mod.DraftModel | None = None
        self.prompt_cache = (
            PromptCache(self.path, self._kv_shape(), max_bytes=self.config.cache_size)
            if self.config.prompt_cache and self.config.cache_size != 0
            else None
        )
        try:
            if draft is not None:
                self.draft = self._load_draft(Path(draft))
            elif self.speculative == "draft":
                raise InvalidArgument("speculative='draft' needs a draft model (--draft MODEL)")
            if self.config.context:
                self._decoder_for_one()
        except BaseException:
            self.close()
            raise
        logger.info(
            "loaded %s: %s, ctx %d, threads %d/%d",
            self.path.name,
            self.info.arch,
            self.n_ctx,
            self.n_threads,
            self.n_threads_batch,
        )

    def _load_draft(self, path: Path) -> speculative_mod.DraftModel:
        """A draft model on this machine's threads, checked against this vocabulary."""
        info = read_gguf(path)
        check_architecture(info)
        w = llama.Weights(
            path,
            n_gpu_layers=self.config.n_gpu_layers,
            use_mmap=self.config.use_mmap,
            extra_buffers=self.weights_extra_buffers,
            repack=self.config.extra_buffers,
            info=info,
            verbose=self.config.verbose,
        )
        try:
            speculative_mod.check_vocab(self.weights, w)
            return speculative_mod.DraftModel(w, self.context_params(self.n_ctx))
        except BaseException:
            w.close()
            raise

    # -- lifetime -------------------------------------------------------------
    def close(self) -> None:
        if self.draft is not None:
            self.draft.close()
            self.draft.weights.close()
            self.draft = None
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None
        self.embedder.close()
        self.weights.close()
        self._kv = []

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a safety net; close() is the contract
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

    def context_params(self, n_ctx: int, n_seq_max: int = 1) -> llama.ContextParams:
        """A context shape for this model's weights with its threads and batch size."""
        cache = llama.CACHE_TYPES[self.config.cache_type]
        return llama.ContextParams(
            n_ctx=n_ctx,
            # every sequence's token fits in one step: a batch is never over n_batch
            n_batch=min(max(self.config.n_batch, n_seq_max), n_ctx),
            n_seq_max=n_seq_max,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads_batch,
            type_k=cache,
            type_v=cache,
            flash_attn=True if self.config.cache_type != "f16" else None,
        )

    def _kv_shape(self) -> str:
        """What besides the model and the tokens decides a prompt state's bytes."""
        p = self.context_params(self.n_ctx)
        return f"type_k={p.type_k}|type_v={p.type_v}|flash_attn={p.flash_attn}"

    def _decoder_for_one(self) -> Decoder:
        """The model's own context and loop (created on first use)."""
        self.weights.check_open()
        if self._decoder is None:
            self._ctx = llama.Context(self.weights, self.context_params(self.n_ctx))
            self._decoder = Decoder(
                self._ctx, self.is_end, draft=self.draft, memory=self.memory,
                store=self.prompt_cache,
            )  # fmt: skip
        return self._decoder

    # -- tokens -----------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = False, special: bool = False) -> list[int]:
        """Token ids of ``text``, as text: ``<|im_start|>`` is its characters' tokens.
        ``special=True`` parses control tokens' text into those tokens (markup only)."""
        return self.weights.tokenize(text, add_special=add_special, parse_special=special)

    def token_bytes(self, token: int) -> bytes:
        return self.weights.token_bytes(token)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.weights.detokenize(tokens)

    def _end_of_turn_tokens(self) -> frozenset[int]:
        w = self.weights
        eog = {t for t in (w.eos, w.eot) if 0 <= t < w.n_vocab}
        template = self.info.chat_template or templates.CHATML
        for marker in templates.END_OF_TURN_MARKERS:
            if marker in template and (tok := w.single_token(marker)) is not None:
                eog.add(tok)
        return frozenset(eog)

    def is_end(self, token: int) -> bool:
        return token in self._eog or self.weights.is_eog(token)

    def tokenize_prompt(self, prompt: str | templates.Prompt, *, special: bool = True) -> list[int]:
        """Tokenize a full prompt, adding BOS only when the model wants it and it is absent.

        A rendered :class:`~ggrun.templates.Prompt` gets control tokens only where the
        template wrote them; a string is markup (``special``) or text."""
        tokens = self._tokens(prompt, special)
        w = self.weights
        if w.add_bos and (not tokens or tokens[0] != w.bos):
            tokens.insert(0, w.bos)
        return tokens

    def _tokens(self, prompt: str | templates.Prompt, special: bool) -> list[int]:
        if isinstance(prompt, templates.Prompt):
            literal = prompt.is_literal if prompt.literal else None
            return self.weights.tokenize_marked(prompt.text, literal)
        return self.weights.tokenize(prompt, parse_special=special)

    def count_tokens(self, text: str | templates.Prompt) -> int:
        return len(self.tokenize_prompt(text))

    # -- prompts ------------------------------------------------------------------
    def format_chat(
        self,
        messages: Sequence[Any],
        *,
        think: bool | None = None,
        add_generation_prompt: bool = True,
        tools: Sequence[Tool] = (),
    ) -> str:
        """Render messages with the model's own chat template (ChatML if it has none).

        ``tools`` go to the template's own tool section; a template without one gets
        Qwen's tool instructions in the system message instead."""
        return self.render_chat(
            messages, think=think, add_generation_prompt=add_generation_prompt, tools=tools
        ).text

    def render_chat(
        self,
        messages: Sequence[Any],
        *,
        think: bool | None = None,
        add_generation_prompt: bool = True,
        tools: Sequence[Tool] = (),
    ) -> templates.Prompt:
        """:meth:`format_chat`'s prompt, with the spans where a message spells a control
        token's text: those are tokenized as text (text is data, never control)."""
        from ggrun.request import messages as checked

        w = self.weights
        msgs = list(checked(messages))
        template = self.info.chat_template
        if tools and "tools" not in (template or ""):
            note = tools_mod.fallback_system(tuple(tools))
            if msgs and msgs[0].role == "system":
                msgs[0] = dataclasses.replace(msgs[0], content=f"{msgs[0].content}\n\n{note}")
            else:
                msgs.insert(0, templates.Message("system", note))
        options: dict[str, Any] = {
            "controls": [c[0] for c in w.control_tokens()],
            "think": think,
            "bos_token": w.token_text(w.bos) if w.has_bos else "",
            "eos_token": w.token_text(w.eos) if 0 <= w.eos < w.n_vocab else "",
            "tools": [t.as_openai() for t in tools],
        }
        prompt = templates.render_prompt(
            template, msgs, add_generation_prompt=add_generation_prompt, **options
        )
        if add_generation_prompt and templates.THINK_OPEN in (template or ""):
            # the reply's opening: what the generation prompt adds to the conversation
            head = templates.render_prompt(template, msgs, add_generation_prompt=False, **options)
            if prompt.text.startswith(head.text):
                start = len(head.text)
            else:  # a template that renders the conversation apart: its last turn's markup
                start = max(prompt.rfind_markup("<|im_start|>"), 0)
            prompt = dataclasses.replace(prompt, reply_start=start)
        return prompt

    def sampling_for(
        self, think: bool | None = None, preset: str | None = None, **explicit: Any
    ) -> SamplingConfig:
        """Sampling settings for this model: explicit > preset > family preset > default."""
        return sampling.resolve(preset=preset, family=self.family, think=think, **explicit)

    def thinks(self, think: bool | None) -> bool:
        """Whether replies may think: the template knows ``<think>`` and it is not off."""
        return think is not False and templates.THINK_OPEN in (self.info.chat_template or "")

    def may_think(self, opening: str, think: bool | None) -> bool:
        """Whether a reply may start with a ``<think>`` block, given the template's
        ``opening`` of it (:attr:`ggrun.templates.Prompt.opening`)."""
        template = self.info.chat_template or ""
        if think is False or templates.THINK_OPEN not in template:
            return False
        return templates.THINK_CLOSE not in opening or templates.starts_in_thinking(opening)

    def prepare(
        self, request: Request, *, reuse_cache: bool = False, slot_ctx: int | None = None
    ) -> Prepared:
        """Render, tokenize and resolve ``request`` for this model; raise if it cannot run.

        The result is final: it carries its max_tokens, grammar, speculation mode and run
        manifest (:class:`~ggrun.runinfo.RunInfo`), and nobody changes it after.

        With ``reuse_cache``, a prompt that extends the text the context holds keeps those
        tokens as they are (re-tokenizing a reply does not always give them back).
        With ``slot_ctx``, the context the request will run in (a server's slot): a
        prompt that does not fit raises :class:`ContextOverflow`, and so does a
        ``max_tokens`` asked for that is more than the room the prompt leaves (the
        default one is cut to that room, as without ``slot_ctx``).
        """
        self.weights.check_open()
        chat = request.messages is not None
        tools = request.offered_tools
        if request.messages is not None:
            prompt: templates.Prompt | tuple[int, ...] = self.render_chat(
                request.messages, think=request.think, tools=tools
            )
        elif isinstance(request.prompt, str):
            # a raw prompt: its writer wrote the markup, unless it is text (a batch line)
            whole = (0, len(request.prompt))
            prompt = templates.Prompt(request.prompt, () if request.parse_special else (whole,))
        else:
            assert request.prompt is not None
            prompt = request.prompt
        if isinstance(prompt, tuple):
            tokens = list(prompt)
            if any(t >= self.weights.n_vocab for t in tokens):
                raise InvalidArgument(f"a prompt token id is not below {self.weights.n_vocab}")
        else:
            tokens = self._tokens_for(prompt) if reuse_cache else self.tokenize_prompt(prompt)
        if not tokens:
            raise InvalidArgument("the prompt is empty")
        think = request.think if chat else None
        cfg = self.sampling_for(think=think, preset=request.preset, **request.overrides)
        cfg = cfg.seeded(llama.DEFAULT_SEED)  # a random seed, drawn here so the run names it
        cfg.check_vocab(self.weights.n_vocab)  # token ids, before llama.cpp sees them
        opening = prompt.opening if chat and isinstance(prompt, templates.Prompt) else ""
        thinks = chat and self.may_think(opening, request.think)
        # room to think: a thinking reply without a max_tokens of its own gets the rest
        max_tokens = None if thinks and request.default_max else request.max_tokens
        if slot_ctx is not None:
            check_room(len(tokens), None if request.default_max else max_tokens, slot_ctx)
            if max_tokens is None:  # the room left in that context, not in a larger one
                max_tokens = slot_ctx - len(tokens)
        grammar, root, activation = _grammar(request, thinks)
        speculative = self._speculation(request, len(tokens))
        if grammar is not None:
            lazy = activation is not None
            llama.check_grammar(self.weights, grammar, root=root, lazy=lazy)
        run = RunInfo.build(
            model=self.path, sampling=cfg, grammar=grammar, speculative=speculative,
            cache_type=self.config.cache_type,
        )  # fmt: skip
        return Prepared(
            request, tokens, cfg, chat=chat,
            starts_thinking=self.thinks(None) and templates.starts_in_thinking(opening),
            grammar=grammar, grammar_root=root, activation=activation,
            speculative=speculative, max_tokens=max_tokens, run=run,
            fixed=self._fixed_part(request, tokens),
        )  # fmt: skip

    def _fixed_part(self, request: Request, tokens: list[int]) -> int:
        """How many first tokens of a chat prompt come before its last message (the
        system prompt, a task's examples, the history): what later prompts share."""
        msgs = request.messages
        if msgs is None or len(msgs) < 2:
            return 0
        try:
            head = self.render_chat(
                msgs[:-1], think=request.think, add_generation_prompt=False,
                tools=request.offered_tools,
            )  # fmt: skip
            before = self.tokenize_prompt(head)
        except GgrunError:  # a template that will not render a conversation cut there
            return 0
        n = 0
        for a, b in zip(before, tokens, strict=False):
            if a != b:
                break
            n += 1
        return n

    def _speculation(self, request: Request, n_prompt: int) -> str:
        """Where a request's guesses come from: its own choice, else the model's."""
        mode = request.speculative or self.speculative
        if mode == "auto":
            if self.draft is not None:
                return "auto"  # lookup, and the draft model where it pays
            return "lookup" if n_prompt >= speculative_mod.AUTO_MIN_PROMPT else "off"
        if mode == "draft" and self.draft is None:
            raise InvalidArgument("speculative='draft' needs a draft model (--draft MODEL)")
        return mode

    def _tokens_for(self, prompt: templates.Prompt) -> list[int]:
        """The tokens held in the KV cache that ``prompt`` starts with, then the rest.

        Held tokens are kept as they are (a reply re-tokenized is not always the same),
        up to a control token the model wrote where the prompt now has a message's text:
        from there on the prompt is tokenized anew, as text."""
        held = self._kv
        if held:
            text = self.detokenize(held)
            if prompt.text.startswith(text) and len(prompt.text) > len(text):
                keep, at = len(held), len(text)
                if prompt.literal:
                    controls = {tid for _, tid, _ in self.weights.control_tokens()}
                    for i, t in enumerate(held):
                        if t in controls:
                            start = len(self.detokenize(held[:i]))
                            if prompt.is_literal(start, start + len(self.token_bytes(t))):
                                keep, at = i, start
                                break
                return [*held[:keep], *self._tokens(prompt.tail(at), True)]
        return self.tokenize_prompt(prompt)

    # -- generation -----------------------------------------------------------------
    def stream(
        self, prompt: str | Sequence[int] | Request, *, keep_cache: bool = False, **options: Any
    ) -> Iterator[Chunk]:
        """Stream a raw completion of ``prompt`` (text or token ids), or run a
        :class:`~ggrun.request.Request`. ``options`` are :meth:`Request.build`'s: sampling
        (``temperature``, ``top_k``, ... ``seed``, ``preset``), ``max_tokens`` (default
        256; ``None``: the room left), ``stop``, and one of ``json``, ``schema``,
        ``grammar``, ``format``. ``keep_cache`` reuses what the KV cache holds."""
        request = _request(prompt, options)
        return self.run(self.prepare(request, reuse_cache=keep_cache), keep_cache=keep_cache)

    def chat_stream(self, messages: Sequence[Any], **options: Any) -> Iterator[Chunk]:
        """Stream an assistant reply to ``messages`` (role/content dicts); ``think``
        sets Qwen3's thinking mode. Other options as :meth:`stream`."""
        keep = options.pop("keep_cache", False)
        request = Request.build(messages=list(messages), **options)
        return self.run(self.prepare(request, reuse_cache=keep), keep_cache=keep)

    def generate(self, prompt: str | Sequence[int] | Request, **options: Any) -> Result:
        """A raw completion, collected. With a structured-output option, ``Result.data``
        holds the parsed, validated value."""
        return self.complete(_request(prompt, options))

    def chat(self, messages: Sequence[Any], **options: Any) -> Result:
        """An assistant reply to ``messages``, collected. See :meth:`chat_stream` and, for
        structured output, :meth:`generate`."""
        return self.complete(Request.build(messages=list(messages), **options))

    def complete(self, request: Request) -> Result:
        """Run ``request`` to the end; parse and check structured output and tool calls.
        A reply that fails a check no grammar holds is drawn again (:mod:`ggrun.redraw`)."""
        job, attempt = self.prepare(request), 0
        while True:
            result = Result.collect(self.run(job))
            try:
                return structured.check_result(result, request.constraint)
            except SchemaMismatch as e:
                attempt += 1
                nxt = redraw.again(job, attempt)
                if nxt is None:
                    raise SchemaMismatch(f"{e} (in each of {attempt} draws)") from None
                logger.info("%s; drawing it again", e)
                job = nxt

    def run_task(self, name: str, text: str, **options: Any) -> Result:
        """Run a few-shot task preset (``presets/tasks/NAME.yaml`` or a path) on ``text``."""
        return self.complete(Request.build(task=name, prompt=text, **options))

    def run(self, job: Prepared, *, keep_cache: bool = False) -> Iterator[Chunk]:
        """Run a prepared request as sequence 0 of the model's context; stream its chunks."""
        n_prompt = len(job.tokens)
        if n_prompt >= self.n_ctx:
            raise ContextOverflow(
                f"the prompt has {n_prompt} tokens but the context holds {self.n_ctx} "
                f"(and needs room for at least one new token); shorten it or raise n_ctx",
                n_tokens=n_prompt,
                n_ctx=self.n_ctx,
            )
        decoder = self._decoder_for_one()
        kept: list[int] = []
        if keep_cache:
            for a, b in zip(self._kv, job.tokens[: n_prompt - 1], strict=False):
                if a != b:
                    break
                kept.append(a)
        self._kv = []
        seq = decoder.start(0, job, kept=kept, remember=keep_cache)
        return self._loop(decoder, seq)

    def _loop(self, decoder: Decoder, seq: Any) -> Iterator[Chunk]:
        try:
            while True:
                yield from seq.drain()
                if seq.finished:
                    break
                decoder.step()
            if seq.error is not None:
                raise seq.error
        finally:
            self._kv = decoder.release(seq, keep=True)

    def reset(self) -> None:
        """Forget everything the KV cache holds."""
        self.weights.check_open()
        if self._ctx is not None:
            self._ctx.clear()
        self._kv = []

    @property
    def kv_tokens(self) -> list[int]:
        """The tokens whose keys and values the context holds now (sequence 0)."""
        return list(self._kv)

    # -- embeddings -----------------------------------------------------------------
    def embed(self, texts: str | Sequence[str]) -> list[list[float]]:
        """One unit vector (L2 norm 1, ``n_embd`` floats) for each text, in order; a
        string is one text (a list of one vector).

        Any GGUF: pooled as its file says, else mean-pooled over the text's tokens (as
        llama.cpp's ``--pooling mean``), then normalized. Texts are tokenized as text, and
        several go through one decode. This runs on an embedding context of its own,
        made on first use: generation and its KV cache are never disturbed. Thread-safe
        (calls take turns on that context). A text over ``n_ctx`` tokens raises
        :class:`ContextOverflow`; an empty one (on a model that adds no BOS token) or one
        that is not a string, :class:`InvalidArgument`. ``model.embedder.embed(texts)``
        gives the vectors as one float32 array and the token counts.
        """
        return self.embedder.embed(texts).tolist()


def _request(prompt: str | Sequence[int] | Request, options: dict[str, Any]) -> Request:
    if isinstance(prompt, Request):
        return prompt.with_options(**options) if options else prompt
    return Request.build(prompt=prompt if isinstance(prompt, str) else list(prompt), **options)


def _grammar(request: Request, thinks: bool) -> tuple[str | None, str, str | None]:
    """The output's grammar, its root rule, and when it starts (``Prepared.activation``)."""
    c = request.constraint
    if c is not None:
        # a grammar that spells out the thought itself applies from the first token
        late = thinks and templates.THINK_CLOSE not in c.grammar
        return c.grammar, "root", "think" if late else None
    tools = request.offered_tools
    if not tools:
        return None, "root", None
    choice = request.tool_choice
    grammar = tools_mod.call_grammar(tools, choice, request.parallel_tool_calls)
    when = "tool" if choice.mode == "auto" else ("think" if thinks else None)
    return grammar, tools_mod.GRAMMAR_ROOT, when


def check_room(n_prompt: int, max_tokens: int | None, n_ctx: int) -> None:
    """Raise :class:`ContextOverflow` unless a prompt of ``n_prompt`` tokens leaves room
    in ``n_ctx`` for one new token, and for ``max_tokens`` when it is given."""
    room = n_ctx - n_prompt
    if room < 1:
        raise ContextOverflow(
            f"the prompt has {n_prompt} tokens; the context holds {n_ctx}",
            n_tokens=n_prompt,
            n_ctx=n_ctx,
        )
    if max_tokens is not None and max_tokens > room:
        raise ContextOverflow(
            f"max_tokens {max_tokens} is more than the {room} tokens left in the "
            f"{n_ctx}-token context after the prompt ({n_prompt} tokens)",
            n_tokens=n_prompt,
            n_ctx=n_ctx,
        )


def load(
    model: str | Path | None = None,
    *,
    n_ctx: int | None = None,
    n_threads: int | None = None,
    device: str | None = None,
    gpu_layers: int | str | None = None,
    use_mmap: bool | None = None,
    hardware: Hardware | None = None,
    verbose: bool = False,
    config: LoadConfig | None = None,
    speculative: str | speculative_mod.Draft | None = None,
    cache_type: str | None = None,
    **load_options: Any,
) -> Model:
    """Load a model from a path or an alias; ``None`` picks the default model.

    Device, GPU layers, threads, context and mmap come from :func:`ggrun.plan`
    unless given; a value that cannot work raises before llama.cpp allocates.
    ``config`` skips the plan and loads exactly as told. Other keywords
    (``n_batch``, ``n_threads_batch``, ``extra_buffers``, ``context``, ``memory``) go to
    :class:`LoadConfig`. ``cache_type`` is the KV cache's (f16, q8_0, q4_0; None: the
    planner's choice). ``speculative`` is every request's default: "lookup", "auto",
    or ``ggrun.Draft("qwen2.5-coder-0.5b")`` (a small model of the same tokenizer,
    planned into the same memory).
    """
    from ggrun import models

    if model is None:
        ref, notice = models.default_model()
        if notice:
            logger.warning("%s", notice)
    else:
        ref = str(model)
    path = models.resolve(ref)
    family = models.family_of(ref)
    draft = (
        models.resolve(speculative.model)
        if isinstance(speculative, speculative_mod.Draft)
        else None
    )
    if config is not None:
        return Model(path, config, family=family, speculative=speculative, draft=draft)
    info = read_gguf(path)
    check_architecture(info)
    hw = hardware or detect_hardware()
    p = planner.plan(
        planner.ModelShape.from_gguf(info),
        hw,
        n_ctx=n_ctx,
        device=device,
        gpu_layers=gpu_layers,
        n_threads=n_threads,
        n_threads_batch=load_options.pop("n_threads_batch", None),
        n_batch=load_options.pop("n_batch", planner.DEFAULT_BATCH),
        use_mmap=use_mmap,
        cache_type=cache_type,
    )
    for note in p.notes:
        logger.warning("%s", note)
    logger.info("plan: %s", p.summary())
    if draft is not None:
        planner.check_draft(p, planner.ModelShape.from_gguf(read_gguf(draft)), hw)
    cfg = LoadConfig.from_plan(p, verbose=verbose, **load_options)
    return Model(path, cfg, family=family, plan=p, info=info, speculative=speculative, draft=draft)
