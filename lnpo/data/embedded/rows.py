"""Row formats and random streams shared by every task version's generator."""

from __future__ import annotations

import json
import random
from collections.abc import Callable


def split_rng(seed: int, split: str, version: int = 1) -> random.Random:
    """The random stream of one split. String seeds are hashed with SHA-512 by ``random``: stable
    across processes and Python versions. Version 1 keeps its original key (its bytes never change)."""
    key = f"lnpo-embedded:{seed}:{split}" if version == 1 else f"lnpo-embedded-v{version}:{seed}:{split}"
    return random.Random(key)


def sft_row(prompt: str, response: str) -> dict:
    """``{"messages": [user, assistant]}``."""
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]}


def pref_row(prompt: str, chosen: str, rejected: str) -> dict:
    """The canonical preference row ``{"prompt": [user], "chosen": [assistant], "rejected": [assistant]}``."""
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def annotated_pair(rng: random.Random, prompt: str, policy: Callable[[], tuple[str, bool]],
                   preference: Callable[[bool, int, bool, int], float]) -> dict:
    """A preference row from an annotator: two different ``policy()`` responses ``(text, correct)`` a and
    b, a chosen with probability ``preference(correct_a, words_a, correct_b, words_b)``."""
    a, correct_a = policy()
    while True:
        b, correct_b = policy()
        if b != a:
            break
    p = preference(correct_a, len(a.split()), correct_b, len(b.split()))
    chosen, rejected = (a, b) if rng.random() < p else (b, a)
    return pref_row(prompt, chosen, rejected)
