"""The bundled reasoning task: two-step arithmetic word problems with R1-style think traces and a boxed answer.

Regenerate the shipped files (the test suite checks they are up to date):

    python -m thinktune.data.bundled.arithmetic

Problems are drawn from a seeded RNG, de-duplicated by question text, and the test split is taken first so train and
test never share a question.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).parent
SEED = 20261123
N_TEST = 200
N_TRAIN = 2000

NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kofi", "Lena", "Mo", "Nia"]
ITEMS = ["apples", "stickers", "marbles", "pencils", "cards", "coins", "shells", "books", "stamps", "beads"]
BOXES = ["boxes", "bags", "packs", "jars", "baskets", "crates"]

Problem = tuple[str, list[str], int]


def _buy_and_give(r: random.Random) -> Problem:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(10, 60), r.randint(5, 40)
    c = r.randint(3, a + b - 1)
    q = f"{name} has {a} {item}. {name} gets {b} more and then gives away {c}. How many {item} does {name} have now?"
    return q, [f"{name} starts with {a} {item}.", f"{a} + {b} = {a + b}.", f"{a + b} - {c} = {a + b - c}."], a + b - c


def _groups_minus(r: random.Random) -> Problem:
    name, item, box = r.choice(NAMES), r.choice(ITEMS), r.choice(BOXES)
    a, b = r.randint(2, 9), r.randint(2, 9)
    c = r.randint(1, a * b - 1)
    q = f"{name} has {a} {box} with {b} {item} in each. {name} uses {c} of them. How many {item} are left?"
    return q, [f"{a} {box} × {b} {item} = {a * b} {item}.", f"{a * b} - {c} = {a * b - c}."], a * b - c


def _groups_plus(r: random.Random) -> Problem:
    name, item, box = r.choice(NAMES), r.choice(ITEMS), r.choice(BOXES)
    a, b, c = r.randint(2, 9), r.randint(2, 9), r.randint(1, 30)
    q = f"{name} buys {a} {box} of {item} with {b} in each, and already had {c}. How many {item} does {name} have?"
    return q, [f"{a} {box} × {b} = {a * b} {item}.", f"{a * b} + {c} = {a * b + c}."], a * b + c


def _share(r: random.Random) -> Problem:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    k, each = r.randint(2, 9), r.randint(2, 9)
    extra = r.randint(1, 20)
    total = k * each + extra
    q = (
        f"{name} has {total} {item}, keeps {extra} and shares the rest equally among {k} friends. "
        f"How many {item} does each friend get?"
    )
    return q, [f"{total} - {extra} = {k * each}.", f"{k * each} ÷ {k} = {each}."], each


def _distance(r: random.Random) -> Problem:
    speed, hours, back = r.randint(2, 9) * 10, r.randint(2, 6), r.randint(1, 9) * 5
    q = f"A bus drives {speed} km each hour for {hours} hours, then {back} km back. How far is it from the start?"
    return (
        q,
        [f"{speed} × {hours} = {speed * hours} km.", f"{speed * hours} - {back} = {speed * hours - back} km."],
        (speed * hours - back),
    )


def _convert(r: random.Random) -> Problem:
    m, cm = r.randint(2, 9), r.randint(1, 99)
    q = f"A rope is {m} meters and {cm} centimeters long. How many centimeters is that in total?"
    return (
        q,
        [f"1 meter = 100 centimeters, so {m} meters = {m * 100} centimeters.", f"{m * 100} + {cm} = {m * 100 + cm}."],
        (m * 100 + cm),
    )


KINDS: list[Callable[[random.Random], Problem]] = [
    _buy_and_give,
    _groups_minus,
    _groups_plus,
    _share,
    _distance,
    _convert,
]


def record(question: str, steps: list[str], answer: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": question},
            {
                "role": "assistant",
                "reasoning_content": "\n".join(steps),
                "content": f"The answer is \\boxed{{{answer}}}.",
            },
        ],
        "answer": str(answer),
    }


def generate(n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = SEED) -> tuple[list[dict], list[dict]]:
    r = random.Random(seed)
    seen: set[str] = set()
    out: list[dict] = []
    while len(out) < n_train + n_test:
        q, steps, ans = r.choice(KINDS)(r)
        if q in seen:
            continue
        seen.add(q)
        out.append(record(q, steps, ans))
    return out[n_test:], out[:n_test]


def write(dest: Path = HERE) -> None:
    train, test = generate()
    for name, rows in (("train", train), ("test", test)):
        with open(dest / f"arithmetic_{name}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    write()
