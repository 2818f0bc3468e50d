"""The embedded task's questions: kinds, phrasings, operands, reference answers, prompt parsing.

Shared by every task version (:mod:`lnpo.data.embedded.v1`, :mod:`lnpo.data.embedded.v2`).
Six kinds, each with its operand distribution (drawn uniformly) and its phrasings:

===========  ==========================================  ===================
kind         operands                                    reference answer
===========  ==========================================  ===================
``add``      a, b in 0..9                                a + b
``sub``      0 <= b <= a <= 9                            a - b
``next``     n in 0..998                                 n + 1
``reverse``  a 3-5 digit string (no leading zero)        the digits reversed
``repeat``   a word from :data:`WORDS`, k in two..four   the word k times
``max``      a != b in 0..99                             max(a, b)
===========  ==========================================  ===================

In-distribution prompts use :data:`TEMPLATES`; out-of-distribution (OOD) prompts use
:data:`OOD_TEMPLATES`: unseen phrasings that recombine phrases of the training
templates (every OOD token occurs in training prompts). A fixed
:data:`HELDOUT_FRACTION` of the in-distribution prompt strings (:func:`is_heldout`)
is reserved for the held-out preference split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from collections.abc import Mapping

KINDS: tuple[str, ...] = ("add", "sub", "next", "reverse", "repeat", "max")

#: In-distribution phrasings. Placeholders: {a} {b} {n} {d} numbers/digit strings,
#: {w} a word from WORDS, {k} a count word ("two", "three", "four").
TEMPLATES: dict[str, tuple[str, ...]] = {
    "add": (
        "What is {a} plus {b}?",
        "Add {a} and {b}.",
        "What is the sum of {a} and {b}?",
        "Compute {a} + {b}.",
    ),
    "sub": (
        "What is {a} minus {b}?",
        "Subtract {b} from {a}.",
        "What is the difference between {a} and {b}?",
        "Compute {a} - {b}.",
    ),
    "next": (
        "What comes after {n}?",
        "What number follows {n}?",
        "Count one up from {n}.",
        "What is the successor of {n}?",
    ),
    "reverse": (
        "Reverse the digits of {d}.",
        "Write {d} backwards.",
        "What is {d} reversed?",
        "Read {d} from right to left.",
    ),
    "repeat": (
        "Repeat the word {w} {k} times.",
        "Say {w} {k} times.",
        "Write the word {w} {k} times.",
        "Say the word {w} {k} times.",
    ),
    "max": (
        "Which is larger, {a} or {b}?",
        "What is the larger of {a} and {b}?",
        "Pick the bigger number: {a} or {b}.",
    ),
}

#: Out-of-distribution phrasings: never used by the SFT or preference training data.
#: Each recombines phrases of the in-distribution templates of the same kind, so
#: every token of an OOD prompt also occurs in training prompts (a tiny model can
#: still partially solve them), but the phrasings themselves are unseen.
OOD_TEMPLATES: dict[str, tuple[str, ...]] = {
    "add": ("Compute the sum of {a} and {b}.", "What is {a} + {b}?"),
    "sub": ("Compute the difference between {a} and {b}.", "What is {a} - {b}?"),
    "next": ("What number comes after {n}?", "Compute the successor of {n}."),
    "reverse": ("What is {d} backwards?", "Write the digits of {d} from right to left."),
    "repeat": ("Write {w} {k} times.", "Repeat {w} {k} times."),
    "max": ("Which is bigger, {a} or {b}?", "Pick the larger of {a} and {b}."),
}

WORDS: tuple[str, ...] = (
    "apple", "river", "stone", "cloud", "house", "green", "music", "tiger",
    "paper", "light", "water", "bread", "chair", "dream", "earth", "flame",
    "grass", "horse", "island", "juice", "kite", "lemon", "moon", "night",
    "ocean", "piano", "queen", "robot", "sugar", "train", "violet", "window",
    "yellow", "zebra", "book", "cat", "dog", "fish", "star", "tree",
)  # fmt: skip

COUNTS: dict[str, int] = {"two": 2, "three": 3, "four": 4}


HELDOUT_FRACTION = 0.1



SPECIAL_TOKENS: dict[str, str] = {
    "pad": "<|pad|>",
    "bos": "<|bos|>",
    "eos": "<|eos|>",
    "user": "<|user|>",
    "assistant": "<|assistant|>",
    "system": "<|system|>",
}


@dataclasses.dataclass(frozen=True)
class Question:
    """One task instance: its kind, operands (as placeholder -> text), and rendering."""

    kind: str
    args: tuple[tuple[str, str], ...]  # sorted (placeholder, value) pairs
    prompt: str
    answer: str
    ood: bool = False


def reference_answer(kind: str, args: Mapping[str, str]) -> str:
    if kind == "add":
        return str(int(args["a"]) + int(args["b"]))
    if kind == "sub":
        return str(int(args["a"]) - int(args["b"]))
    if kind == "next":
        return str(int(args["n"]) + 1)
    if kind == "reverse":
        return args["d"][::-1]
    if kind == "repeat":
        return " ".join([args["w"]] * COUNTS[args["k"]])
    if kind == "max":
        return str(max(int(args["a"]), int(args["b"])))
    raise ValueError(f"unknown task kind {kind!r}")


def sample_args(rng: random.Random, kind: str) -> dict[str, str]:
    if kind == "add":
        return {"a": str(rng.randint(0, 9)), "b": str(rng.randint(0, 9))}
    if kind == "sub":
        a = rng.randint(0, 9)
        return {"a": str(a), "b": str(rng.randint(0, a))}
    if kind == "next":
        return {"n": str(rng.randint(0, 998))}
    if kind == "reverse":
        length = rng.randint(3, 5)
        digits = [str(rng.randint(1, 9))] + [str(rng.randint(0, 9)) for _ in range(length - 1)]
        return {"d": "".join(digits)}
    if kind == "repeat":
        return {"w": rng.choice(WORDS), "k": rng.choice(tuple(COUNTS))}
    if kind == "max":
        a = rng.randint(0, 99)
        b = rng.randint(0, 98)
        b = b + 1 if b >= a else b  # b != a, uniform over the other 99 values
        return {"a": str(a), "b": str(b)}
    raise ValueError(f"unknown task kind {kind!r}")


def make_question(kind: str, template: str, args: Mapping[str, str], ood: bool) -> Question:
    return Question(
        kind=kind,
        args=tuple(sorted(args.items())),
        prompt=template.format(**args),
        answer=reference_answer(kind, args),
        ood=ood,
    )


def sample_question(rng: random.Random, ood: bool = False, heldout: bool | None = None) -> Question:
    """Draw a question: kind uniform, then template and operands uniform.

    ``heldout`` restricts in-distribution questions to the held-out (True) or the
    training (False) part of the prompt space by rejection, keeping the kind
    uniform; ``None`` means no restriction (OOD prompts are never restricted).
    """
    kind = rng.choice(KINDS)
    while True:
        template = rng.choice((OOD_TEMPLATES if ood else TEMPLATES)[kind])
        q = make_question(kind, template, sample_args(rng, kind), ood)
        if ood or heldout is None or is_heldout(q.prompt) == heldout:
            return q


def is_heldout(prompt: str) -> bool:
    """Whether an in-distribution prompt belongs to the held-out part of the prompt space.

    A fixed :data:`HELDOUT_FRACTION` of prompt strings, chosen by a hash of the text
    (independent of the seed): ``sft`` and ``train_prefs`` never use them,
    ``eval_prefs`` only uses them.
    """
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < HELDOUT_FRACTION * 2**64


_PLACEHOLDER_PATTERNS = {
    "a": r"(?P<a>[0-9]+)",
    "b": r"(?P<b>[0-9]+)",
    "n": r"(?P<n>[0-9]+)",
    "d": r"(?P<d>[0-9]+)",
    "w": r"(?P<w>[A-Za-z]+)",
    "k": r"(?P<k>two|three|four)",
}


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w)\}", template)
    pattern = "".join(re.escape(p) if i % 2 == 0 else _PLACEHOLDER_PATTERNS[p] for i, p in enumerate(parts))
    return re.compile(pattern)


_PROMPT_PARSERS: tuple[tuple[str, bool, re.Pattern[str]], ...] = tuple(
    (kind, ood, _template_regex(t))
    for ood, table in ((False, TEMPLATES), (True, OOD_TEMPLATES))
    for kind, templates in table.items()
    for t in templates
)


def _user_text(prompt: str) -> str:
    """The user's message: ``prompt`` itself, or the last user turn of a rendered chat prompt."""
    user, assistant = SPECIAL_TOKENS["user"], SPECIAL_TOKENS["assistant"]
    if user in prompt:
        prompt = prompt.rsplit(user, 1)[1].split(assistant, 1)[0]
    return prompt.strip()


def parse_prompt(prompt: str) -> Question:
    """Parse a task prompt (the user message text, or a rendered chat prompt) into a :class:`Question`.

    Raises ``ValueError`` if the text is not a prompt of this task.
    """
    text = _user_text(prompt)
    for kind, ood, regex in _PROMPT_PARSERS:
        match = regex.fullmatch(text)
        if match:
            args = match.groupdict()
            return Question(kind, tuple(sorted(args.items())), text, reference_answer(kind, args), ood)
    raise ValueError(f"not a prompt of the embedded task: {prompt!r}")


def wrong_answer(rng: random.Random, q: Question) -> str:
    """A plausible wrong answer for ``q`` (never equal to the reference answer)."""
    args = dict(q.args)
    for _ in range(100):
        if q.kind in ("add", "sub", "next", "max"):
            value = int(q.answer)
            style = rng.randrange(3)
            if style == 0:  # off by a little
                cand = str(value + rng.choice((-2, -1, 1, 2)))
            elif style == 1:  # off by ten (carry / borrow mistakes)
                cand = str(value + rng.choice((-10, 10)))
            else:  # echo an operand
                cand = rng.choice([v for k, v in sorted(args.items()) if k in "abn"])
        elif q.kind == "reverse":
            d = args["d"]
            style = rng.randrange(3)
            if style == 0:  # not reversed at all
                cand = d
            elif style == 1:  # reversed, one digit dropped
                r = d[::-1]
                i = rng.randrange(len(r))
                cand = r[:i] + r[i + 1 :]
            else:  # reversed, two neighbouring digits swapped
                r = list(d[::-1])
                i = rng.randrange(len(r) - 1)
                r[i], r[i + 1] = r[i + 1], r[i]
                cand = "".join(r)
        elif q.kind == "repeat":
            count = COUNTS[args["k"]] + rng.choice((-1, 1))
            cand = " ".join([args["w"]] * count)
            if rng.random() < 0.25:
                cand = " ".join([rng.choice(WORDS)] * COUNTS[args["k"]])
        else:
            raise ValueError(f"unknown task kind {q.kind!r}")
        if cand != q.answer and not cand.startswith("-"):
            return cand
    return q.answer + "0"  # unreachable in practice; still a wrong answer


