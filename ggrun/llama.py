"""The llama layer: the only module that calls llama.cpp to decode, tokenize, sample or
manage the KV cache.

- :class:`Weights`: the model file loaded (weights and vocabulary): tokenize,
  detokenize, special tokens.
- :class:`Context`: a KV cache over some weights: decode a :class:`Batch`, read the
  logits of a row, drop or keep a sequence's cells.
- :class:`Batch`: a reusable ``llama_batch`` (token, position, sequence, logits flag).
- :class:`Sampler`: picks the next token from one row of logits with llama.cpp's sampler
  chain, a repetition penalty applied in place, and an optional grammar that is checked
  *before* llama.cpp sees a token (llama.cpp aborts the process on a token its grammar
  rejects, or when no token is legal).
- :class:`Embedder`: texts to unit vectors (pooled, L2-normalized) on an embedding
  context of its own, made on first use beside the generation context, never touching it.
- Log routing: llama.cpp logs through one process-wide callback; it goes nowhere unless
  verbose (then stderr), and can be captured to explain a failure.

Every native object here has ``close()`` and frees its memory deterministically.
"""

from __future__ import annotations

import ctypes
import logging
import math
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ggrun import hardware
from ggrun.errors import GgrunError, GrammarError, InvalidArgument, InvalidModelFile
from ggrun.gguffile import GGUFInfo, read_gguf

logger = logging.getLogger(__name__)

# -------------------------------------------------------------------- log routing

_CALLBACK: object = None  # llama.cpp keeps the pointer: keep the object alive
_VERBOSE = False
_captured: list[str] | None = None


def route_llama_log(verbose: bool = False) -> None:
    global _CALLBACK, _VERBOSE
    import llama_cpp as ll

    _VERBOSE = verbose
    if _CALLBACK is not None:
        return

    @ll.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        message = text.decode("utf-8", errors="replace")
        if _captured is not None:
            _captured.append(message)
        if _VERBOSE:
            sys.stderr.write(message)

    _CALLBACK = callback
    ll.llama_log_set(callback, ctypes.c_void_p(0))


@contextmanager
def captured_llama_log() -> Iterator[list[str]]:
    """Collect llama.cpp's log lines for the duration (to explain a failure)."""
    global _captured
    route_llama_log(_VERBOSE)
    previous, _captured = _captured, []
    mine = _captured
    try:
        yield mine
    finally:
        _captured = previous
        if previous is not None:  # an outer capture sees these lines too
            previous.extend(mine)


# llama.h's llama_token_attr bits
_ATTR_UNKNOWN, _ATTR_CONTROL, _ATTR_LSTRIP, _ATTR_RSTRIP = 1 << 0, 1 << 3, 1 << 7, 1 << 8
_SPACES = " \t\n\v\f\r"  # C's isspace


def _ll() -> Any:
    import llama_cpp

    return llama_cpp


# -------------------------------------------------------------------- weights


class _BuftOverride(ctypes.Structure):
    """llama.h's ``llama_model_tensor_buft_override``."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


class WeightParams:
    """llama.cpp's model parameters as ggrun sets them, holding what they point at.

    ``extra_buffers``: llama.cpp's extra weight buffers (REPACK, AMX). With them off,
    ``repack`` still puts the weights that llama.cpp's CPU_REPACK buffer can hold there,
    named one by one in ``tensor_buft_overrides`` (:func:`ggrun.hardware.repack_plan`);
    None: where :func:`ggrun.hardware.repack_without_amx` says. ``info``: the file's
    validated table, read again when it is needed and not given. llama.cpp keeps the
    override pointer: keep this object as long as the model.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        n_gpu_layers: int = 0,
        use_mmap: bool = True,
        extra_buffers: bool = True,
        repack: bool | None = None,
        info: GGUFInfo | None = None,
    ) -> None:
        ll = _ll()
        ll.llama_backend_init()
        self.params: Any = ll.llama_model_default_params()
        self.params.n_gpu_layers = n_gpu_layers
        self.params.use_mmap = use_mmap
        self.params.use_extra_bufts = extra_buffers
        plan = None
        if not extra_buffers and (hardware.repack_without_amx() if repack is None else repack):
            plan = hardware.repack_plan((info or read_gguf(path)).tensors)
        self.repacked: tuple[str, ...] = ()  # the tensors the overrides name
        self._patterns: list[bytes] = []
        self._overrides: Any = None
        if plan is not None:
            self.repacked = plan.tensors
            self._patterns = [p.encode() for p in plan.patterns]
            self._overrides = (_BuftOverride * (len(self._patterns) + 1))()  # zeroed: the end
            for entry, pattern in zip(self._overrides, self._patterns, strict=False):
                entry.pattern, entry.buft = pattern, plan.buffer_type
            self.params.tensor_buft_overrides = ctypes.cast(self._overrides, ctypes.c_void_p)
            logger.info("%d weight tensors go to llama.cpp's CPU_REPACK buffer", len(plan.tensors))


class Weights:
    """A GGUF file loaded by llama.cpp: the weights and the vocabulary.

    The file must have been validated (:mod:`ggrun.gguffile`) before it comes here.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        n_gpu_layers: int = 0,
        use_mmap: bool = True,
        extra_buffers: bool = True,
        repack: bool | None = None,
        info: GGUFInfo | None = None,
        verbose: bool = False,
    ) -> None:
        """The buffers: see :class:`WeightParams`."""
        ll = _ll()
        self._ll = ll
        self.path = Path(path)
        route_llama_log(verbose)
        self._params = WeightParams(
            self.path,
            n_gpu_layers=n_gpu_layers,
            use_mmap=use_mmap,
            extra_buffers=extra_buffers,
            repack=repack,
            info=info,
        )
        self.repacked = self._params.repacked
        handle = ll.llama_model_load_from_file(str(self.path).encode(), self._params.params)
        if not handle:
            raise InvalidModelFile(
                f"{self.path}: llama.cpp could not load this model; run with --verbose to see why"
            )
        self._handle: Any = handle
        self._vocab: Any = ll.llama_model_get_vocab(handle)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(ll.llama_model_n_ctx_train(handle))
        self.bos = int(ll.llama_vocab_bos(self._vocab))
        self.eos = int(ll.llama_vocab_eos(self._vocab))
        self.eot = int(ll.llama_vocab_eot(self._vocab))
        self.has_bos = 0 <= self.bos < self.n_vocab
        self.add_bos = bool(ll.llama_vocab_get_add_bos(self._vocab)) and self.has_bos
        self._pieces: dict[int, bytes] = {}
        self._controls: list[tuple[str, int, int]] | None = None
        self._probe: _CharProbe | None = None

    # -- lifetime
    def close(self) -> None:
        if self._handle is not None:
            self._ll.llama_model_free(self._handle)
            self._handle = None
            self._vocab = None

    @property
    def closed(self) -> bool:
        return self._handle is None

    def check_open(self) -> None:
        if self._handle is None:
            raise GgrunError("the model is closed")

    def __enter__(self) -> Weights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tokens
    def tokenize(
        self, text: str, *, add_special: bool = False, parse_special: bool = False
    ) -> list[int]:
        """Token ids of ``text``; with ``parse_special``, a control token's text
        (``<|im_start|>``) becomes that token (only for markup: a template's, a raw
        prompt's)."""
        self.check_open()
        ll = self._ll
        raw = text.encode("utf-8", errors="surrogatepass")
        cap = len(raw) + 8
        buf = (ll.llama_token * cap)()
        n = ll.llama_tokenize(self._vocab, raw, len(raw), buf, cap, add_special, parse_special)
        if n < 0:  # buffer too small: -n is the size needed
            cap = -n
            buf = (ll.llama_token * cap)()
            n = ll.llama_tokenize(self._vocab, raw, len(raw), buf, cap, add_special, parse_special)
        if n < 0:
            raise GgrunError("llama.cpp failed to tokenize the text")
        return list(buf[:n])

    def control_tokens(self) -> list[tuple[str, int, int]]:
        """``(text, id, attributes)`` of each token that only special parsing makes
        (llama.cpp's control and unknown tokens), longest text first, as llama.cpp
        splits a text on them; read once."""
        if self._controls is None:
            self.check_open()
            ll, found = self._ll, []
            for t in range(self.n_vocab):
                attr = int(ll.llama_vocab_get_attr(self._vocab, t))
                if attr & (_ATTR_CONTROL | _ATTR_UNKNOWN) and (text := self.token_text(t)):
                    found.append((text, t, attr))
            found.sort(key=lambda f: len(f[0]), reverse=True)
            self._controls = found
        return self._controls

    def tokenize_marked(
        self, text: str, is_literal: Callable[[int, int], bool] | None
    ) -> list[int]:
        """As ``tokenize(text)`` with special parsing, except that a control token's text
        at ``text[a:b]`` stays text where ``is_literal(a, b)`` (a message's text:
        :meth:`ggrun.templates.Prompt.is_literal`).

        llama.cpp's own split, done here: the text is cut at each control token (longest
        first, with its lstrip/rstrip attributes) and each piece between is tokenized
        without special parsing (user-defined tokens are still split out, as llama.cpp
        does)."""
        if is_literal is None:
            return self.tokenize(text, parse_special=True)
        pieces: list[int | tuple[int, int]] = [(0, len(text))]
        for token, tid, attr in self.control_tokens():
            if token not in text:
                continue
            out: list[int | tuple[int, int]] = []
            for piece in pieces:
                if isinstance(piece, int):
                    out.append(piece)
                    continue
                pos, end = piece
                i = text.find(token, pos, end)
                while i >= 0:
                    j = i + len(token)
                    if is_literal(i, j):
                        i = text.find(token, i + 1, end)
                        continue
                    left = i
                    while attr & _ATTR_LSTRIP and left > pos and text[left - 1] in _SPACES:
                        left -= 1
                    if left > pos:
                        out.append((pos, left))
                    out.append(tid)
                    while attr & _ATTR_RSTRIP and j < end and text[j] in _SPACES:
                        j += 1
                    pos = j
                    i = text.find(token, pos, end)
                if pos < end:
                    out.append((pos, end))
            pieces = out
        tokens: list[int] = []
        for piece in pieces:
            if isinstance(piece, int):
                tokens.append(piece)
            else:
                tokens += self.tokenize(text[piece[0] : piece[1]], parse_special=False)
        return tokens

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for (special tokens as their text); cached."""
        piece = self._pieces.get(token)
        if piece is not None:
            return piece
        self.check_open()
        if not 0 <= token < self.n_vocab:
            raise GgrunError(f"token {token} is outside the vocabulary")
        buf = ctypes.create_string_buffer(64)
        n = self._ll.llama_token_to_piece(self._vocab, token, buf, 64, 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._ll.llama_token_to_piece(self._vocab, token, buf, -n, 0, True)
        piece = buf.raw[: max(n, 0)]
        self._pieces[token] = piece
        return piece

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        return self.token_bytes(token).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        """llama.cpp's own end-of-generation flag (EOS, EOT, ...)."""
        return bool(self._ll.llama_vocab_is_eog(self._vocab, token))

    def char_probe(self) -> _CharProbe:
        """The one-character tokens a grammar is probed with (:meth:`Sampler.forced`)."""
        if self._probe is None:
            self._probe = _CharProbe(self)
        return self._probe

    def single_token(self, text: str) -> int | None:
        """The id of ``text`` when the vocabulary holds it as one token."""
        toks = self.tokenize(text, parse_special=True)
        return toks[0] if len(toks) == 1 else None


# -------------------------------------------------------------------- context


CACHE_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}  # KV cache types and their ggml ids


@dataclass(frozen=True)
class ContextParams:
    """A context's shape: its KV cache, its batch sizes and its threads."""

    n_ctx: int
    n_batch: int = 512
    n_seq_max: int = 1
    n_threads: int = 1
    n_threads_batch: int = 1
    type_k: int | None = None  # a ggml type (f16, q8_0, q4_0); None: llama.cpp's f16
    type_v: int | None = None
    flash_attn: bool | None = None  # None: llama.cpp's auto


class Context:
    """A llama.cpp context: a KV cache of ``n_ctx`` cells for up to ``n_seq_max`` sequences.

    With several sequences, each has its own ``n_ctx / n_seq_max`` cells (not unified).
    """

    def __init__(self, weights: Weights, params: ContextParams) -> None:
        ll = _ll()
        weights.check_open()
        self._ll = ll
        self.weights = weights
        cp = ll.llama_context_default_params()
        cp.n_ctx = params.n_ctx
        cp.n_batch = min(params.n_batch, params.n_ctx)
        cp.n_ubatch = min(params.n_batch, params.n_ctx)
        cp.n_seq_max = params.n_seq_max
        cp.kv_unified = params.n_seq_max == 1
        cp.n_threads = params.n_threads
        cp.n_threads_batch = params.n_threads_batch
        cp.no_perf = True
        if params.type_k is not None:
            cp.type_k = params.type_k
        if params.type_v is not None:
            cp.type_v = params.type_v
        if params.flash_attn is not None:
            cp.flash_attn_type = (
                ll.LLAMA_FLASH_ATTN_TYPE_ENABLED
                if params.flash_attn
                else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        with captured_llama_log() as log:
            handle = ll.llama_init_from_model(weights._handle, cp)
        if not handle:
            why = next((m.strip() for m in log if "error" in m.lower() or "fail" in m.lower()), "")
            raise GgrunError(
                f"llama.cpp could not create a context of {params.n_ctx} tokens for "
                f"{weights.path.name}" + (f": {why}" if why else " (out of memory?)")
            )
        self._handle: Any = handle
        self._mem = ll.llama_get_memory(handle)
        self.params = params
        self.n_ctx = int(ll.llama_n_ctx(handle))
        self.n_batch = int(cp.n_batch)
        self.n_seq_max = params.n_seq_max
        self.n_vocab = weights.n_vocab

    def close(self) -> None:
        if self._handle is not None:
            self._ll.llama_free(self._handle)
            self._handle = None

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def seq_ctx(self) -> int:
        """Cells each sequence may use."""
        return self.n_ctx // self.n_seq_max

    def decode(self, batch: Batch) -> None:
        """Decode the batch's tokens into the KV cache; raise when llama.cpp cannot."""
        if self._handle is None:
            raise GgrunError("the context is closed")
        rc = self._ll.llama_decode(self._handle, batch._b)
        if rc != 0:
            raise GgrunError(
                f"llama.cpp failed to decode (code {rc}): the context is full or memory ran out"
            )

    def logits(self, row: int) -> Any:
        """The logits of a batch row with its flag set, as a writable numpy view."""
        import numpy as np

        ptr = self._ll.llama_get_logits_ith(self._handle, row)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def all_logits(self, n_rows: int) -> Any:
        """The logits of the last decode's ``n_rows`` output rows (a numpy view)."""
        import numpy as np

        ptr = self._ll.llama_get_logits(self._handle)
        return np.ctypeslib.as_array(ptr, shape=(n_rows, self.n_vocab))

    # -- the KV cache
    def clear(self) -> None:
        self._ll.llama_memory_clear(self._mem, True)

    def drop(self, seq: int, start: int = 0) -> None:
        """Forget sequence ``seq``'s cells from position ``start`` on."""
        if start <= 0 and self.n_seq_max == 1:
            self.clear()
        else:
            self._ll.llama_memory_seq_rm(self._mem, seq, max(start, 0), -1)

    def seq_state(self, seq: int) -> memoryview:
        """Sequence ``seq``'s cells as llama.cpp serializes them (its seq state)."""
        size = int(self._ll.llama_state_seq_get_size(self._handle, seq))
        buf = bytearray(size)
        dst = (ctypes.c_uint8 * size).from_buffer(buf)
        n = int(self._ll.llama_state_seq_get_data(self._handle, dst, size, seq))
        del dst  # the buffer may be sliced once nothing exports it
        return memoryview(buf)[:n]

    def load_seq_state(self, seq: int, data: bytearray) -> bool:
        """Put a state from :meth:`seq_state` into sequence ``seq`` (after dropping its
        cells); False when llama.cpp refuses it (its shape is not this context's)."""
        self.drop(seq, 0)
        src = (ctypes.c_uint8 * len(data)).from_buffer(data)
        with captured_llama_log():  # a refusal is logged as an error: ours says it once
            n = int(self._ll.llama_state_seq_set_data(self._handle, src, len(data), seq))
        del src
        if n == 0:
            self.drop(seq, 0)
            return False
        return True


class Batch:
    """A reusable batch of up to ``capacity`` tokens, each with its own sequence."""

    def __init__(self, capacity: int) -> None:
        ll = _ll()
        self._ll = ll
        self.capacity = capacity
        self._b: Any = ll.llama_batch_init(capacity, 0, 1)
        self.n = 0

    def clear(self) -> None:
        self.n = 0
        self._b.n_tokens = 0

    @property
    def room(self) -> int:
        return self.capacity - self.n

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append a token; return its row (where its logits will be, if asked)."""
        b, n = self._b, self.n
        if n >= self.capacity:  # llama_batch's arrays end here
            raise GgrunError(f"a batch holds {self.capacity} tokens at most")
        b.token[n] = token
        b.pos[n] = pos
        b.n_seq_id[n] = 1
        b.seq_id[n][0] = seq
        b.logits[n] = logits
        self.n = n + 1
        b.n_tokens = self.n
        return n

    def close(self) -> None:
        if self._b is not None:
            self._ll.llama_batch_free(self._b)
            self._b = None

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -------------------------------------------------------------------- sampling

DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: a random seed
LAZY_ROOT = "ggrun-lazy-root"  # a lazy grammar may start after whitespace
GRAMMAR_STEP_BUDGET = 0.25  # seconds of grammar work one token may cost
FORCED_BUDGET = 0.005  # seconds of probing for a grammar's forced text, a step (a guess)
_NEG_INF = -3.0e38


def grammar_for(grammar: str, root: str, lazy: bool) -> tuple[str, str]:
    """The GBNF text and root rule to give llama.cpp."""
    if not lazy:
        return grammar, root
    return f"{grammar}\n{LAZY_ROOT} ::= [ \\t\\n\\r]{{0,8}} {root}\n", LAZY_ROOT


def _init_grammar(weights: Weights, grammar: str, root: str) -> Any:
    ll = weights._ll
    weights.check_open()
    with captured_llama_log() as log:
        g = ll.llama_sampler_init_grammar(weights._vocab, grammar.encode(), root.encode())
    if not g:
        raise GrammarError(_grammar_problem(grammar, log))
    return g


def _grammar_problem(grammar: str, log: list[str]) -> str:
    """llama.cpp's parse error, with the grammar line it points at when it can be found."""
    detail = next(
        (m.strip() for m in log if "error" in m.lower() or "undefined" in m.lower()),
        "llama.cpp could not parse it",
    )
    where = ""
    if " at " in detail:
        rest = detail.split(" at ", 1)[1].strip()[:20]
        pos = grammar.find(rest) if rest else -1
        if pos >= 0:
            where = f" (line {grammar.count(chr(10), 0, pos) + 1})"
    return f"invalid grammar{where}: {detail}"


class _Candidates:
    """A reusable ``llama_token_data_array`` over the whole vocabulary (or over ``ids``)."""

    def __init__(self, n_vocab: int, ids: Any = None) -> None:
        import numpy as np

        ll = _ll()
        self._ll = ll
        self.ids = np.arange(n_vocab, dtype=np.int32) if ids is None else ids
        self.n = len(self.ids)
        fields = [("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]
        self.buf = np.zeros(self.n, dtype=np.dtype(fields, align=True))

    def load(self, logits: Any) -> Any:
        self.buf["id"] = self.ids
        self.buf["logit"] = logits
        self.buf["p"] = 0.0
        data = self.buf.ctypes.data_as(ctypes.POINTER(self._ll.llama_token_data))
        return self._ll.llama_token_data_array(data, self.n, -1, False)

    def any_allowed(self) -> bool:
        return bool((self.buf["logit"] > _NEG_INF).any())

    def allowed(self) -> list[int]:
        """The ids a grammar applied to the array left allowed."""
        return [int(t) for t in self.ids[self.buf["logit"] > _NEG_INF]]


def check_grammar(
    weights: Weights, grammar: str, *, root: str = "root", lazy: bool = False
) -> None:
    """Parse a grammar and probe it once over the whole vocabulary, up front.

    Refuses a grammar llama.cpp cannot parse, one whose first step allows no token at
    all (a character no token can produce), and one whose first step already costs more
    than :data:`GRAMMAR_STEP_BUDGET`.
    """
    import numpy as np

    text, start = grammar_for(grammar, root, lazy)
    g = _init_grammar(weights, text, start)
    ll = weights._ll
    try:
        cand = _Candidates(weights.n_vocab)
        arr = cand.load(np.zeros(weights.n_vocab, dtype=np.float32))
        t0 = time.perf_counter()
        ll.llama_sampler_apply(g, ctypes.byref(arr))
        dt = time.perf_counter() - t0
        if dt > GRAMMAR_STEP_BUDGET:
            raise GrammarError(
                f"the grammar is too expensive: one step took {dt:.2f} s of grammar work "
                f"(limit {GRAMMAR_STEP_BUDGET} s); simplify the schema or grammar"
            )
        if not cand.any_allowed():
            raise GrammarError(
                "the grammar cannot start: no token of this model's vocabulary matches its "
                "first characters (a character no token can produce, such as NUL?)"
            )
    finally:
        ll.llama_sampler_free(g)


class _CharProbe:
    """The vocabulary's one-character tokens (printable ASCII, tab, newline) and its ends
    of generation, as a token array to apply a grammar to: which characters it lets come
    next. Built once a vocabulary (:meth:`Weights.char_probe`)."""

    CHARS = "".join(chr(c) for c in range(0x20, 0x7F)) + "\n\t"

    def __init__(self, weights: Weights) -> None:
        import numpy as np

        self.char: dict[int, str] = {}
        for c in self.CHARS:
            toks = weights.tokenize(c)
            if len(toks) == 1 and weights.token_bytes(toks[0]) == c.encode():
                self.char[toks[0]] = c
        self.ends = {t for t in (weights.eos, weights.eot) if 0 <= t < weights.n_vocab}
        self.space = next((t for t, c in self.char.items() if c == " "), None)
        ids = [*self.char, *sorted(self.ends - self.char.keys())]
        self.ids = np.asarray(ids, dtype=np.int32)

    def allowed(self, ll: Any, grammar: Any) -> list[int]:
        """The probe tokens ``grammar`` allows now (an end of generation among them when
        it may end here). An array of its own each call: samplers of other threads probe
        the same vocabulary, and llama.cpp runs without the GIL."""
        cand = _Candidates(0, self.ids)
        ll.llama_sampler_apply(grammar, ctypes.byref(cand.load(0.0)))
        return cand.allowed()

    def may_end(self, ll: Any, grammar: Any) -> bool:
        """The grammar may end here, and allows nothing else but a space."""
        ok = set(self.allowed(ll, grammar))
        return bool(ok & self.ends) and ok <= self.ends | {self.space}

    def next_char(
        self, ll: Any, grammar: Any, before: str, spaced: dict[str, bool] | None = None
    ) -> int | None:
        """The character token that comes next: the only one allowed; or, where the
        grammar's only choice is an optional space (JSON's), a space after a character
        that ``spaced`` says takes one (by default ``json.dumps``'s: ``:`` and ``,``),
        else the other; None where there is a real choice."""
        ok = self.allowed(ll, grammar)
        if len(ok) == 1:
            return ok[0] if ok[0] in self.char else None
        if len(ok) != 2 or not all(t in self.char for t in ok):
            return None
        a, b = (self.char[t] for t in ok)
        if " " not in (a, b) or a == b:
            return None
        space, other = (ok[0], ok[1]) if a == " " else (ok[1], ok[0])
        spaced = _DUMPS_SPACING if spaced is None else spaced
        return space if spaced.get(before, False) else other


_DUMPS_SPACING = {":": True, ",": True}  # json.dumps: a space after these, none elsewhere


class _Spacing:
    """How a reply spaces its JSON, outside strings: whether a space follows ``:`` and
    ``,`` where the grammar leaves it optional. ``json.dumps``'s way until the reply shows
    its own (a model asked for compact JSON writes ``{"a":1,"b":2}``)."""

    def __init__(self) -> None:
        self.spaced = dict(_DUMPS_SPACING)
        self._string = self._escape = False
        self._after = ""  # the ':' or ',' just written, outside a string

    def feed(self, text: str) -> None:
        for c in text:
            if self._string:
                if self._escape:
                    self._escape = False
                elif c == "\\":
                    self._escape = True
                elif c == '"':
                    self._string = False
                continue
            if self._after:
                self.spaced[self._after] = c == " "
                self._after = ""
            if c == '"':
                self._string = True
            elif c in ":,":
                self._after = c


class _Penalties:
    """llama.cpp's repetition, frequency and presence penalties, on the few seen logits.

    llama.cpp's penalties sampler walks every candidate (~150k for a Qwen vocabulary,
    ~1.5 ms a token); a penalty only changes the logits of the tokens in the window, so
    they are changed in place, first, exactly where the chain would apply them and with
    the same float32 arithmetic (``tests/test_sampling.py`` checks the tokens match).
    """

    def __init__(self, repeat: float, freq: float, present: float, last_n: int) -> None:
        import numpy as np

        self._np = np
        self.repeat = np.float32(repeat)
        self.freq = np.float32(freq)
        self.present = np.float32(present)
        self.last_n = last_n
        self.window: deque[int] = deque()
        self.counts: Counter[int] = Counter()

    def apply(self, logits: Any) -> None:
        if not self.counts:
            return
        np = self._np
        ids = np.fromiter(self.counts.keys(), dtype=np.int64, count=len(self.counts))
        c = np.fromiter(self.counts.values(), dtype=np.float32, count=len(self.counts))
        x = logits[ids]
        x = np.where(x <= 0, x * self.repeat, x / self.repeat).astype(np.float32)
        x -= c * self.freq + (c > 0).astype(np.float32) * self.present
        logits[ids] = x

    def undo(self) -> None:
        """Forget the last accepted token (it was drawn again)."""
        if self.window:
            token = self.window.pop()
            self.counts[token] -= 1
            if not self.counts[token]:
                del self.counts[token]

    def accept(self, token: int) -> None:
        if self.last_n <= 0:
            return
        if len(self.window) >= self.last_n:
            old = self.window.popleft()
            self.counts[old] -= 1
            if not self.counts[old]:
                del self.counts[old]
        self.window.append(token)
        self.counts[token] += 1


class SamplerSettings(Protocol):
    """What :class:`Sampler` reads of a sampling config: each option of the table in
    :mod:`ggrun.sampling` as an attribute (``s.top_k``); a
    :class:`ggrun.sampling.SamplingConfig` is one. The options are named once, there;
    here only where they are applied (:func:`build_chain`, :class:`Sampler`)."""

    def __getattr__(self, name: str) -> Any: ...


def _penalized(s: SamplerSettings) -> bool:
    return s.repeat_penalty != 1.0 or bool(s.presence_penalty or s.frequency_penalty)


BAN = -100.0  # a logit bias this low bans the token (OpenAI's meaning), at any temperature


def _logit_bias(ll: Any, pairs: Sequence[tuple[int, float]], vocab_size: int) -> Any:
    """llama.cpp's logit-bias sampler over checked ``(token id, bias)`` pairs; a bias of
    :data:`BAN` becomes minus infinity."""
    if any(not 0 <= t < vocab_size for t, _ in pairs):  # checked by Model.prepare already
        raise InvalidArgument(f"a logit bias names a token id not below {vocab_size}")
    arr = (ll.llama_logit_bias * len(pairs))()
    for k, (t, b) in enumerate(pairs):
        arr[k] = ll.llama_logit_bias(t, -math.inf if b <= BAN else b)
    return ll.llama_sampler_init_logit_bias(vocab_size, len(pairs), arr)  # it copies arr


def build_chain(s: SamplerSettings, vocab_size: int, *, penalty_last_n: int | None = None) -> Any:
    """A native sampler chain (logit biases, top-k, typical-p, top-p, min-p, temperature,
    seeded draw or greedy; with mirostat, temperature and mirostat's draw).

    ``penalty_last_n`` puts llama.cpp's own penalties sampler first (after the biases, as
    llama.cpp's common sampler), over that many tokens (the reference the in-place fast
    path is tested against; that one penalizes before the biases).
    """
    ll = _ll()
    params = ll.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = ll.llama_sampler_chain_init(params)
    add = ll.llama_sampler_chain_add
    if s.logit_bias:
        try:
            add(chain, _logit_bias(ll, s.logit_bias, vocab_size))
        except BaseException:
            ll.llama_sampler_free(chain)
            raise
    if penalty_last_n is not None and _penalized(s):
        add(
            chain,
            ll.llama_sampler_init_penalties(
                vocab_size,
                penalty_last_n,
                s.repeat_penalty,
                s.frequency_penalty,
                s.presence_penalty,
            ),
        )
    if s.temperature == 0:
        add(chain, ll.llama_sampler_init_greedy())
        return chain
    seed = DEFAULT_SEED if s.seed is None else s.seed
    if s.mirostat:  # as llama.cpp's common sampler: temperature, then mirostat's own draw
        add(chain, ll.llama_sampler_init_temp(s.temperature))
        tau, eta = s.mirostat_tau, s.mirostat_eta
        if s.mirostat == 1:
            add(chain, ll.llama_sampler_init_mirostat(vocab_size, seed, tau, eta, 100))
        else:
            add(chain, ll.llama_sampler_init_mirostat_v2(seed, tau, eta))
        return chain
    if s.top_k > 0:
        add(chain, ll.llama_sampler_init_top_k(s.top_k))
    if s.typical_p < 1.0:
        add(chain, ll.llama_sampler_init_typical(s.typical_p, 1))
    if s.top_p < 1.0:
        add(chain, ll.llama_sampler_init_top_p(s.top_p, 1))
    if s.min_p > 0.0:
        add(chain, ll.llama_sampler_init_min_p(s.min_p, 1))
    add(chain, ll.llama_sampler_init_temp(s.temperature))
    add(chain, ll.llama_sampler_init_dist(seed))
    return chain


class Sampler:
    """Picks a sequence's next token from one row of logits; call :meth:`close` when done.

    - Plain greedy decoding takes the argmax of the logits (llama.cpp's chain would first
      copy all ~150k candidates); with logit biases it goes through the chain.
    - Penalties are applied in place to the logits of the tokens seen (:class:`_Penalties`).
    - A grammar is checked against the sampled token first, as llama.cpp's common sampler
      does; only when it rejects the token are all candidates filtered and the token
      drawn again. When no token is legal the request ends with a :class:`GrammarError`:
      llama.cpp never accepts a token its grammar rejects (it would abort the process).
      Grammar work beyond :data:`GRAMMAR_STEP_BUDGET` for one token is an error too.
    - A *lazy* grammar (thinking models) waits until :meth:`activate` (the end of the
      thought), then applies from the first non-blank character.
    - The native chain is this sequence's own, so is mirostat's running estimate (mu). A
      grammar's second draw (and :meth:`redraw`) runs the chain again for the same
      token, as llama.cpp's common sampler does: mirostat then updates it twice.
    """

    def __init__(
        self,
        settings: SamplerSettings,
        ctx: Context,
        grammar: str | None = None,
        *,
        root: str = "root",
        lazy: bool = False,
        reference_penalties: bool = False,
    ) -> None:
        ll = _ll()
        self._ll = ll
        self._ctx = ctx
        self.settings = settings
        self._chain: Any = None
        self._grammar: Any = None
        self.grammar_active = grammar is not None and not lazy
        self.forced_end = False  # the last forced text ends the grammar (Sampler.forced)
        self._spacing = _Spacing()  # how the reply spaces its JSON (Sampler.forced)
        self._cand: _Candidates | None = None
        last_n = settings.repeat_last_n if settings.repeat_last_n >= 0 else ctx.seq_ctx
        self._penalties = (
            _Penalties(
                settings.repeat_penalty,
                settings.frequency_penalty,
                settings.presence_penalty,
                last_n,
            )
            if _penalized(settings) and not reference_penalties
            else None
        )
        try:
            if grammar is not None:
                text, start = grammar_for(grammar, root, lazy)
                self._grammar = _init_grammar(ctx.weights, text, start)
                self._cand = _Candidates(ctx.n_vocab)
                self._one = (ll.llama_token_data * 1)()
            if (settings.temperature != 0 or grammar is not None or reference_penalties
                    or settings.logit_bias):  # fmt: skip
                ref = last_n if reference_penalties else None
                self._chain = build_chain(settings, ctx.n_vocab, penalty_last_n=ref)
        except BaseException:
            self.close()
            raise

    def activate(self, replay: Sequence[int] = ()) -> bool:
        """Start applying a lazy grammar (the thought ended, a tool call opened), first
        feeding it ``replay``, tokens already drawn that belong to what it constrains.
        False (and still inactive) when the grammar rejects one of them."""
        if self._grammar is None or self.grammar_active:
            return self.grammar_active
        if replay:  # fed one by one to a copy, which replaces the grammar if all pass
            ll, original = self._ll, self._grammar
            self._grammar = ll.llama_sampler_clone(original)
            for token in replay:
                if not self._allowed(token):
                    ll.llama_sampler_free(self._grammar)
                    self._grammar = original
                    return False
                ll.llama_sampler_accept(self._grammar, token)
            ll.llama_sampler_free(original)
            for token in replay:
                self._spacing.feed(self._ctx.weights.token_text(token))
        self.grammar_active = True
        return True

    def sample(self, row: int) -> int:
        """The next token from the logits of batch row ``row``; it is accepted."""
        logits = self._ctx.logits(row)
        if self._penalties is not None:
            self._penalties.apply(logits)
        token = self._pick(logits, row)
        if self._penalties is not None:
            self._penalties.accept(token)
        return token

    def accept(self, token: int) -> None:
        """A token the caller forces (not drawn here): it enters the penalty window and,
        when it applies, the grammar (which must allow it)."""
        if self._penalties is not None:
            self._penalties.accept(token)
        if self.grammar_active:
            if not self._allowed(token):
                raise GrammarError("a forced token breaks the grammar")
            self._accept_grammar(token)
        if self._chain is not None:
            self._ll.llama_sampler_accept(self._chain, token)

    def forced(self, before: str = "", limit: int = 64) -> str:
        """The text the grammar lets come next, up to ``limit`` characters, after text
        ending in ``before``: each character it allows alone, and at an optional space
        (JSON's) the way ``json.dumps`` writes; '' where it allows a real choice, or is
        off or still waiting. :attr:`forced_end`: the grammar is done after it.

        Found by probing the grammar with the vocabulary's one-character tokens (on a
        copy of its state once a character is found); a trailing space is left out (the
        model writes it with what follows). These are guesses for speculative decoding:
        the model still picks every token, so a guess that misses costs speed, never
        text."""
        self.forced_end = False
        if not self.grammar_active or self._grammar is None:
            return ""
        return self._probe(self._grammar, before, limit)

    def forced_after(self, text: str, limit: int = 64) -> str | None:
        """As :meth:`forced`, had ``text`` come next (its tokens as the tokenizer cuts
        it); None where the grammar is off or rejects ``text``. :attr:`forced_end` stays
        :meth:`forced`'s."""
        if not self.grammar_active or self._grammar is None:
            return None
        ll, end = self._ll, self.forced_end
        g = ll.llama_sampler_clone(self._grammar)
        try:
            for t in self._ctx.weights.tokenize(text):
                if not self._allowed(t, g):
                    return None
                ll.llama_sampler_accept(g, t)
            return self._probe(g, text, limit)
        finally:
            ll.llama_sampler_free(g)
            self.forced_end = end

    def _probe(self, g: Any, before: str, limit: int) -> str:
        """The forced text from grammar state ``g``: the sampler's own (never moved: a
        copy is made once a character is found) or a copy of it (moved on)."""
        ll, probe = self._ll, self._ctx.weights.char_probe()
        spaced = self._spacing.spaced
        out: list[str] = []
        made = None  # the copy made here
        t0 = time.perf_counter()
        try:
            while len(out) < limit and time.perf_counter() - t0 < FORCED_BUDGET:
                token = probe.next_char(ll, g, out[-1] if out else before[-1:], spaced)
                if token is None:
                    break
                if g is self._grammar:  # the state itself is never moved
                    g = made = ll.llama_sampler_clone(g)
                ll.llama_sampler_accept(g, token)
                out.append(probe.char[token])
            # the grammar done (a space at most may follow): the reply ends, as json.dumps's
            self.forced_end = len(out) < limit and probe.may_end(ll, g)
        finally:
            if made is not None:
                ll.llama_sampler_free(made)
        return "".join(out).rstrip(" ")

    def admitted(self, tokens: Sequence[int]) -> int:
        """How many of ``tokens``, from the first, could follow here: up to the first one
        the grammar rejects, and no further than an end of generation (guesses past
        them are verified for nothing)."""
        ll, w = self._ll, self._ctx.weights
        check = self.grammar_active and self._grammar is not None
        g = ll.llama_sampler_clone(self._grammar) if check and tokens else None
        n = 0
        try:
            for t in tokens:
                if g is not None:
                    if not self._allowed(t, g):
                        break
                    ll.llama_sampler_accept(g, t)
                n += 1
                if w.is_eog(t):
                    break
        finally:
            if g is not None:
                ll.llama_sampler_free(g)
        return n

    def redraw(self, row: int) -> int:
        """Draw row ``row``'s token again, now with the lazy grammar active (the first
        draw showed the model starting what the grammar constrains)."""
        if self._penalties is not None:
            self._penalties.undo()
        self.activate()
        token = self._pick(self._ctx.logits(row), row)  # penalties already applied
        if self._penalties is not None:
            self._penalties.accept(token)
        return token

    def _pick(self, logits: Any, row: int) -> int:
        if self.grammar_active:
            return self._sample_with_grammar(logits)
        if self._chain is not None:
            return int(self._ll.llama_sampler_sample(self._chain, self._ctx._handle, row))
        return int(logits.argmax())

    def _allowed(self, token: int, grammar: Any = None) -> bool:
        ll = self._ll
        self._one[0] = ll.llama_token_data(token, 0.0, 0.0)
        arr = ll.llama_token_data_array(self._one, 1, -1, False)
        ll.llama_sampler_apply(self._grammar if grammar is None else grammar, ctypes.byref(arr))
        return bool(self._one[0].logit > _NEG_INF)

    def _sample_with_grammar(self, logits: Any) -> int:
        ll = self._ll
        assert self._cand is not None
        arr = self._cand.load(logits)
        ll.llama_sampler_apply(self._chain, ctypes.byref(arr))
        token = int(arr.data[arr.selected].id)
        t0 = time.perf_counter()
        if not self._allowed(token):  # draw again with the grammar over every candidate
            arr = self._cand.load(logits)
            ll.llama_sampler_apply(self._grammar, ctypes.byref(arr))
            if not self._cand.any_allowed():
                raise GrammarError(
                    "the grammar allows no token here: the model's vocabulary cannot "
                    "continue the constrained output (a character no token can produce?)"
                )
            self._check_budget(t0)
            ll.llama_sampler_apply(self._chain, ctypes.byref(arr))
            token = int(arr.data[arr.selected].id)
        self._accept_grammar(token)
        self._check_budget(t0)
        ll.llama_sampler_accept(self._chain, token)
        return token

    def _accept_grammar(self, token: int) -> None:
        """The grammar takes ``token`` (allowed: checked first), and the reply's spacing
        learns from its text."""
        self._ll.llama_sampler_accept(self._grammar, token)
        self._spacing.feed(self._ctx.weights.token_text(token))

    def _check_budget(self, t0: float) -> None:
        dt = time.perf_counter() - t0
        if dt > GRAMMAR_STEP_BUDGET:
            raise GrammarError(
                f"the grammar is too expensive: one token took {dt:.2f} s of grammar work "
                f"(limit {GRAMMAR_STEP_BUDGET} s); simplify the schema or grammar"
            )

    def close(self) -> None:
        for name in ("_chain", "_grammar"):
            handle = getattr(self, name, None)
            if handle is not None:
                self._ll.llama_sampler_free(handle)
                setattr(self, name, None)


# -------------------------------------------------------------------- embeddings

POOLING_TYPES = {"mean": 1, "cls": 2, "last": 3}  # llama_pooling_type: one vector a text
EMBED_BATCH = 512  # tokens one embedding decode holds at first (llama.cpp's own default)
EMBED_SEQ_MAX = 64  # texts one embedding decode holds at most
MAX_EMBED_CHARS = 1 << 24  # far past any context: refused before it is tokenized


@dataclass(frozen=True)
class Embeddings:
    """One unit vector a text (rows of a float32 array) and each text's token count."""

    vectors: Any  # numpy float32, shape (texts, dims); each row of L2 norm 1
    n_tokens: tuple[int, ...]

    @property
    def total_tokens(self) -> int:
        return sum(self.n_tokens)

    def tolist(self) -> list[list[float]]:
        rows: list[list[float]] = self.vectors.tolist()
        return rows


def normalize(vectors: Any) -> Any:
    """Each row divided by its Euclidean norm, as llama.cpp's ``common_embd_normalize``
    (norm 2) does: the sum of squares in double precision; a zero row stays zero."""
    import numpy as np

    v = np.asarray(vectors, dtype=np.float32)
    norms = np.sqrt((v * v).astype(np.float64).sum(axis=-1, keepdims=True))
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return v * scale.astype(np.float32)


def pooling_of(weights: Weights) -> str:
    """The pooling a model's GGUF declares (an embedding model's mean, CLS or last
    token), else ``mean``: llama.cpp's pooling for a generative model (``--pooling mean``)."""
    ll = weights._ll
    weights.check_open()
    buf = ctypes.create_string_buffer(128)
    if ll.llama_model_meta_val_str(weights._handle, b"general.architecture", buf, 128) <= 0:
        return "mean"
    key = buf.value + b".pooling_type"
    n = ll.llama_model_meta_val_str(weights._handle, key, buf, 128)
    value = buf.value.decode(errors="replace").strip() if n > 0 else ""
    return next((name for name, v in POOLING_TYPES.items() if str(v) == value), "mean")


class Embedder:
    """Texts to unit vectors with a model's weights, on a llama.cpp context of its own.

    - The context (``embeddings`` on; the model's own pooling, else mean) is created on
      first use beside any generation context of the same weights, which it never touches.
    - Each text is tokenized as text (a control token's text stays text; BOS/EOS as the
      model adds them) and is one sequence. A text must fit in ``n_ctx`` tokens.
    - Several texts share one ``llama_decode``: at most :attr:`n_batch` tokens and
      ``n_seq_max`` texts. A text lies whole in one micro-batch, as llama.cpp's pooling
      needs (a text cut in two is pooled over its last part only), so the context holds
      ``n_batch`` tokens; it starts at :data:`EMBED_BATCH` and is made anew, larger, for a
      longer text (up to ``n_ctx``). Its compute buffer costs about 4 bytes per
      vocabulary entry per token (llama.cpp computes the logits of every token).
    - Each pooled vector is read with ``llama_get_embeddings_seq`` and L2-normalized.
      Flash attention is off: a text's vector then depends less on what it is batched
      with (llama.cpp's kernels round by the batch's shape: cosine >= 0.9999 here).

    :meth:`embed` is thread-safe: calls take turns on the one context (a lock).
    ``close()`` frees it.
    """

    def __init__(
        self,
        weights: Weights,
        *,
        n_ctx: int,
        n_threads: int = 1,
        n_threads_batch: int = 1,
        n_seq_max: int = EMBED_SEQ_MAX,
    ) -> None:
        import threading

        ll = _ll()
        weights.check_open()
        if n_ctx < 1:
            raise GgrunError(f"an embedding context needs room for a token, not {n_ctx}")
        self._ll = ll
        self.weights = weights
        self.n_ctx = n_ctx
        self.n_batch = min(EMBED_BATCH, n_ctx)
        self.n_seq_max = max(1, min(n_seq_max, int(ll.llama_max_parallel_sequences())))
        self.n_embd = int(ll.llama_model_n_embd_out(weights._handle))
        self.pooling = pooling_of(weights)
        self._threads = (n_threads, n_threads_batch)
        self._lock = threading.Lock()
        self._handle: Any = None
        self._batch: Batch | None = None

    # -- input
    def tokenize(self, texts: str | Sequence[str], *, truncate: bool = False) -> list[list[int]]:
        """The tokens of each text, checked: a string or a list of strings, each one not
        empty once tokenized and within ``n_ctx`` tokens (with ``truncate``, a longer
        one keeps its first ``n_ctx`` tokens, as ollama's ``truncate``)."""
        from ggrun.errors import ContextOverflow, InvalidArgument

        if isinstance(texts, str):
            items: list[Any] = [texts]
        elif isinstance(texts, Sequence) and not isinstance(texts, (bytes, bytearray)):
            items = list(texts)
        else:
            raise InvalidArgument(
                f"embed takes a string or a list of strings, not {type(texts).__name__}"
            )
        out: list[list[int]] = []
        for i, text in enumerate(items):
            name = "the text" if isinstance(texts, str) else f"text {i}"
            if not isinstance(text, str):
                raise InvalidArgument(f"{name} is {type(text).__name__}, not a string")
            if len(text) > MAX_EMBED_CHARS and truncate:
                text = text[:MAX_EMBED_CHARS]  # still far more tokens than are kept
            if len(text) > MAX_EMBED_CHARS:
                raise ContextOverflow(
                    f"{name} has {len(text):,} characters, far more than the embedding "
                    f"context's {self.n_ctx} tokens; split it",
                    n_ctx=self.n_ctx,
                )
            tokens = self.weights.tokenize(text, add_special=True, parse_special=False)
            if not tokens:  # llama.cpp's server: "Input content cannot be empty"
                raise InvalidArgument(
                    f"{name} is empty: this model adds no BOS token, so there is nothing to embed"
                )
            if len(tokens) > self.n_ctx and truncate:
                tokens = tokens[: self.n_ctx]
            if len(tokens) > self.n_ctx:
                raise ContextOverflow(
                    f"{name} has {len(tokens)} tokens but the embedding context holds "
                    f"{self.n_ctx}; shorten it or raise n_ctx",
                    n_tokens=len(tokens),
                    n_ctx=self.n_ctx,
                )
            out.append(tokens)
        return out

    # -- embedding
    def embed(self, texts: str | Sequence[str], *, truncate: bool = False) -> Embeddings:
        """One unit vector for each text (a string is one text), in order; ``truncate``
        cuts a text over ``n_ctx`` tokens to its start instead of refusing it."""
        import numpy as np

        seqs = self.tokenize(texts, truncate=truncate)
        vectors = np.zeros((len(seqs), self.n_embd), dtype=np.float32)
        if seqs:
            with self._lock:
                handle, batch = self._open(max(len(s) for s in seqs))
                start = 0
                for end in self._groups([len(s) for s in seqs]):
                    vectors[start:end] = self._decode(handle, batch, seqs[start:end])
                    start = end
        return Embeddings(normalize(vectors), tuple(len(s) for s in seqs))

    def _groups(self, lengths: list[int]) -> list[int]:
        """Where each decode's run of texts ends: in order, at most ``n_batch`` tokens and
        ``n_seq_max`` texts each."""
        ends: list[int] = []
        tokens = count = 0
        for i, n in enumerate(lengths):
            if count and (tokens + n > self.n_batch or count >= self.n_seq_max):
                ends.append(i)
                tokens = count = 0
            tokens += n
            count += 1
        ends.append(len(lengths))
        return ends

    def _open(self, longest: int) -> tuple[Any, Batch]:
        """The context and its batch, made on first use, and made anew (larger: a power
        of two, at most ``n_ctx``) when ``longest`` tokens do not fit in one decode."""
        self.weights.check_open()
        if longest > self.n_batch:
            self.close()
            self.n_batch = min(self.n_ctx, 1 << (longest - 1).bit_length())
        if self._handle is not None and self._batch is not None:
            return self._handle, self._batch
        ll = self._ll
        cp = ll.llama_context_default_params()
        # one decode is one micro-batch; llama.cpp reserves its graph for n_seq_max
        # sequences of equal length (it aborts unless they divide the micro-batch)
        seqs = min(self.n_seq_max, self.n_batch)
        cp.n_ctx = cp.n_batch = cp.n_ubatch = -(-self.n_batch // seqs) * seqs
        cp.n_seq_max = seqs
        cp.kv_unified = True  # the texts of one decode share the cells
        cp.n_threads, cp.n_threads_batch = self._threads
        cp.embeddings = True
        cp.pooling_type = POOLING_TYPES[self.pooling]
        # flash attention off: a text's vector depends less on the texts decoded with it
        # (measured: components move by 1.8e-3 at most, 7.5e-3 with it on)
        cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.no_perf = True
        with captured_llama_log() as log:
            handle = ll.llama_init_from_model(self.weights._handle, cp)
        if not handle:
            why = next((m.strip() for m in log if "error" in m.lower() or "fail" in m.lower()), "")
            raise GgrunError(
                f"llama.cpp could not create an embedding context of {self.n_batch} tokens "
                f"for {self.weights.path.name}" + (f": {why}" if why else " (out of memory?)")
            )
        self._handle = handle
        try:
            self._batch = Batch(self.n_batch)
        except BaseException:
            self.close()
            raise
        return handle, self._batch

    def _decode(self, handle: Any, batch: Batch, seqs: list[list[int]]) -> Any:
        """The pooled (not yet normalized) vectors of a few texts, decoded together."""
        import numpy as np

        ll = self._ll
        batch.clear()
        for seq, tokens in enumerate(seqs):
            for pos, token in enumerate(tokens):
                batch.add(token, pos, seq, True)
        mem = ll.llama_get_memory(handle)
        if mem:  # an encoder-only model has no KV cache
            ll.llama_memory_clear(mem, True)
        rc = ll.llama_decode(handle, batch._b)
        if rc != 0:
            raise GgrunError(f"llama.cpp failed to compute embeddings (code {rc})")
        out = np.empty((len(seqs), self.n_embd), dtype=np.float32)
        for seq in range(len(seqs)):
            ptr = ll.llama_get_embeddings_seq(handle, seq)
            if not ptr:
                raise GgrunError(f"llama.cpp returned no embedding for sequence {seq}")
            out[seq] = np.ctypeslib.as_array(ptr, shape=(self.n_embd,))
        return out

    # -- lifetime
    def close(self) -> None:
        if self._batch is not None:
            self._batch.close()
            self._batch = None
        if self._handle is not None:
            self._ll.llama_free(self._handle)
            self._handle = None

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
