"""Embedding throughput of ggrun's ``Model.embed`` against llama-cpp-python's own path.

Both sides run in this process on the same GGUF, threads, context size and weight buffers:
- ggrun: ``Model.embed(texts)`` (its own embedding context: mean pooling, texts batched
  several to a decode, L2-normalized, flash attention off);
- llama-cpp-python: ``Llama(embedding=True, pooling_type=MEAN).embed(texts,
  normalize=True)`` (llama.cpp's embedding path as that package drives it: texts batched
  the same way, each vector a Python list).

Each side embeds the same corpus once to burn in, then the sides alternate for
``--rounds`` rounds (which goes first flips each round, so drift on a shared host hits
both alike). It reports texts/s and tokens/s (tokens as the model counts them, BOS/EOS
included: the same on both sides), medians and standard deviations, the ratio, and the
largest difference between the two sides' vectors; ``--out`` writes JSON.

    python benchmarks/embed_bench.py --model qwen2.5-coder-0.5b --texts 64 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.decode import resolve, summary  # noqa: E402
from ggrun import hardware, llama  # noqa: E402
from ggrun.engine import LoadConfig, Model  # noqa: E402

WORDS = """the a model text vector search query document index embedding cat dog train city
river data python function returns list value error file server request token quick brown
fox jumps over lazy small large fast slow green blue red yesterday today because while after
before under between without through against during"""


def corpus(n: int, min_words: int, max_words: int, seed: int = 0) -> list[str]:
    """``n`` sentence-like texts of ``min_words``..``max_words`` words (seeded)."""
    rng = random.Random(seed)
    vocabulary = WORDS.split()
    texts = []
    for i in range(n):
        words = [rng.choice(vocabulary) for _ in range(rng.randint(min_words, max_words))]
        texts.append(f"{i}: " + " ".join(words).capitalize() + ".")
    return texts


@contextmanager
def llama_cpp_side(path: Path, n_ctx: int, threads: int) -> Iterator[Any]:
    """llama-cpp-python's ``Llama`` for embeddings, on the weight buffers ggrun uses (this
    build's AMX kernels crash on some machines: ggrun turns its extra buffers off there
    and repacks the weights itself)."""
    import llama_cpp
    import llama_cpp.llama_cpp as native

    default = native.llama_model_default_params
    ours = llama.WeightParams(path, extra_buffers=hardware.extra_buffers_safe())  # kept alive

    def params() -> Any:
        p = default()
        p.use_extra_bufts = ours.params.use_extra_bufts
        p.tensor_buft_overrides = ours.params.tensor_buft_overrides
        return p

    native.llama_model_default_params = params
    try:
        llm = llama_cpp.Llama(
            model_path=str(path),
            embedding=True,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_ubatch=n_ctx,  # a text must lie in one micro-batch to be pooled whole
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
    finally:
        native.llama_model_default_params = default
    try:
        yield llm
    finally:
        llm.close()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="a .gguf path or test alias")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512, help="tokens one decode holds (both)")
    ap.add_argument("--texts", type=int, default=64, help="texts in the corpus")
    ap.add_argument("--min-words", type=int, default=4)
    ap.add_argument("--max-words", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    import numpy as np

    path = resolve(args.model)
    texts = corpus(args.texts, args.min_words, args.max_words)
    cfg = LoadConfig(
        n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=args.threads, context=False
    )
    with Model(path, cfg) as model, llama_cpp_side(path, args.ctx, args.threads) as llm:
        n_tokens = model.embedder.embed(texts).total_tokens
        assert n_tokens == sum(len(llm.tokenize(t.encode())) for t in texts)
        sides: dict[str, Callable[[], Any]] = {
            "ggrun": lambda: model.embed(texts),
            "llama_cpp_python": lambda: llm.embed(texts, normalize=True),
        }
        vectors = {name: fn() for name, fn in sides.items()}  # burn in
        diff = float(
            np.abs(np.array(vectors["ggrun"]) - np.array(vectors["llama_cpp_python"])).max()
        )
        seconds: dict[str, list[float]] = {name: [] for name in sides}
        order = list(sides)
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                dt, _ = timed(sides[name])
                seconds[name].append(dt)
                print(f"round {r + 1} {name}: {dt:.3f} s", file=sys.stderr)
    res: dict[str, Any] = {
        "model": path.name,
        "threads": args.threads,
        "ctx": args.ctx,
        "texts": len(texts),
        "tokens": n_tokens,
        "rounds": args.rounds,
        "max_abs_diff": diff,
        "sides": {},
    }
    for name, xs in seconds.items():
        res["sides"][name] = {
            "seconds": summary(xs),
            "texts_per_s": summary([len(texts) / x for x in xs]),
            "tokens_per_s": summary([n_tokens / x for x in xs]),
        }
    g, lcp = (res["sides"][k]["tokens_per_s"]["median"] for k in ("ggrun", "llama_cpp_python"))
    res["ratio"] = g / lcp
    print(f"{path.name}: {len(texts)} texts, {n_tokens} tokens, {args.threads} threads, "
          f"ctx {args.ctx}, {args.rounds} rounds (median ± stdev)")  # fmt: skip
    for name, side in res["sides"].items():
        t, k = side["texts_per_s"], side["tokens_per_s"]
        print(f"  {name:<17} {t['median']:8.1f} ± {t['stdev']:5.1f} texts/s   "
              f"{k['median']:8.1f} ± {k['stdev']:6.1f} tokens/s")  # fmt: skip
    print(f"  ggrun / llama-cpp-python: {res['ratio']:.3f}; largest vector difference {diff:.1e}")
    if args.out:
        args.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
