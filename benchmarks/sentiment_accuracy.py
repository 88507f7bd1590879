"""Accuracy of the ``sentiment`` task preset on 10 obvious examples (recorded, not tested).

python benchmarks/sentiment_accuracy.py --model qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.decode import resolve  # noqa: E402
from ggrun.engine import LoadConfig, Model  # noqa: E402

CASES = [
    ("I absolutely loved this movie, it was wonderful!", "positive"),
    ("Best purchase I have made all year. Highly recommend.", "positive"),
    ("The staff were friendly and the room was spotless.", "positive"),
    ("What a fantastic concert, I'm still smiling.", "positive"),
    ("This is terrible. It broke after one day.", "negative"),
    ("Worst customer service ever, I want a refund.", "negative"),
    ("The food was cold and the waiter was rude.", "negative"),
    ("I hate how slow and buggy this app is.", "negative"),
    ("The meeting is scheduled for 3 pm on Monday.", "neutral"),
    ("The book has 300 pages and a blue cover.", "neutral"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    args = ap.parse_args()
    path = resolve(args.model)
    right = 0
    with Model(path, LoadConfig(n_ctx=2048)) as m:
        for text, want in CASES:
            got = m.run_task("sentiment", text).data["sentiment"]
            right += got == want
            print(f"{'ok ' if got == want else 'BAD'} {want:<8} {got:<8} {text}")
    print(f"accuracy {right}/{len(CASES)} on {path.name}")


if __name__ == "__main__":
    main()
