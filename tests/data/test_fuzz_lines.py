"""Fuzz: 1200 seeded JSON Lines mixing every malformation with valid rows.

Every valid row is kept, in order, with its content; every bad line is counted under its
reason; strict mode names the first bad line as an editor numbers it.
"""

from __future__ import annotations

import json
import random

import pytest

from lnpo.data import load_preferences
from lnpo.errors import DataError

N_LINES = 1200


def _text(rng: random.Random) -> str:
    words = ["alpha", "beta", "gamma", "delta", "é", "日本", "emoji 🙂", "tab\there", "quote\"s", "back\\slash"]
    return " ".join(rng.choice(words) for _ in range(rng.randint(1, 5))) + f" {rng.random():.6f}"


def _valid(rng: random.Random):
    """(line bytes, expected canonical (prompt, chosen, rejected)) of a valid row in one of several shapes."""
    p, c, r = _text(rng), _text(rng), _text(rng) + " (worse)"
    shape = rng.randrange(5)
    if shape == 0:
        row = {"prompt": p, "chosen": c, "rejected": r}
    elif shape == 1:  # the prompt as messages, the completions as text: the column mixes types across rows
        row = {"prompt": [{"role": "user", "content": p}], "chosen": c, "rejected": r}
    elif shape == 2:  # the completions as message lists
        row = {"prompt": p, "chosen": [{"role": "assistant", "content": c}],
               "rejected": [{"role": "assistant", "content": r}]}
    elif shape == 3:  # an unused column nested deeply, but within what the parser takes
        row = {"prompt": p, "chosen": c, "rejected": r, "extra": json.loads("[" * 300 + "]" * 300)}
    else:  # an unused column whose type changes from row to row
        row = {"prompt": p, "chosen": c, "rejected": r, "meta": rng.choice([1, "x", [1, 2], {"k": None}, None])}
    line = json.dumps(row, ensure_ascii=rng.random() < 0.5).encode("utf-8")
    if rng.random() < 0.2:
        line += b"\r"  # a CRLF line ending
    return line, (p, c, r)


def _bad(rng: random.Random) -> tuple[bytes, str]:
    """(line bytes, skip reason) of one malformation."""
    good = {"prompt": _text(rng), "chosen": _text(rng), "rejected": _text(rng) + "!"}
    kind = rng.randrange(12)
    if kind == 0:  # an invalid UTF-8 byte inside a string
        return json.dumps(good).encode().replace(b'"prompt": "', b'"prompt": "\xff', 1), "undecodable_text"
    if kind == 1:  # a lone surrogate escape
        return json.dumps({**good, "chosen": "x"}).encode().replace(b'"x"', b'"\\ud800"'), "undecodable_text"
    if kind == 2:
        return rng.choice([b"not json", b"{'prompt': 'single quotes'}", b'{"prompt": "a",}', b"{", b"}"]), \
            "malformed_json"
    if kind == 3:  # a truncated line
        line = json.dumps(good).encode()
        return line[: rng.randrange(1, len(line) - 1)], "malformed_json"
    if kind == 4:  # valid JSON, not an object
        return rng.choice([b"[1, 2]", b"3", b'"text"', b"null", b"true"]), "malformed_json"
    if kind == 5:  # nested deeper than the parser allows
        depth = rng.randint(1100, 4000)
        return (b'{"prompt": ' + b"[" * depth + b"]" * depth + b', "chosen": "b", "rejected": "c"}',
                "malformed_json")
    if kind == 6:  # empty or whitespace only
        return rng.choice([b"", b" ", b"\t", b"   \t  ", b"\r"]), "blank_line"
    if kind == 7:
        dropped = rng.choice(list(good))
        return json.dumps({k: v for k, v in good.items() if k != dropped}).encode(), "missing_field"
    if kind == 8:
        return json.dumps({**good, "chosen": rng.choice([5, 1.5, True, {"a": 1}])}).encode(), "wrong_type"
    if kind == 9:
        return json.dumps({**good, "rejected": good["chosen"]}).encode(), "identical_responses"
    if kind == 10:
        return json.dumps({**good, "chosen": rng.choice(["", "   ", "\n"])}).encode(), "empty_response"
    return json.dumps({**good, "prompt": rng.choice(["", "  "])}).encode(), "empty_prompt"


def _fuzz_file(path, seed: int):
    rng = random.Random(seed)
    lines, expected, reasons, first_bad = [], [], {}, None
    for number in range(1, N_LINES + 1):
        if number <= 3 or rng.random() < 0.55:  # valid rows first, so the schema is detected from them
            line, row = _valid(rng)
            expected.append((number, row))
        else:
            line, reason = _bad(rng)
            reasons[reason] = reasons.get(reason, 0) + 1
            first_bad = first_bad or (number, reason)
        lines.append(line)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return expected, reasons, first_bad


@pytest.mark.parametrize("seed", [0, 1])
def test_fuzzed_lines_keep_every_valid_row_and_count_every_bad_one(tmp_path, cache_dir, seed):
    path = tmp_path / f"fuzz{seed}.jsonl"
    expected, reasons, first_bad = _fuzz_file(path, seed)
    assert set(reasons) == {"undecodable_text", "malformed_json", "blank_line", "missing_field", "wrong_type",
                            "identical_responses", "empty_response", "empty_prompt"}  # every kind occurs

    ds, report = load_preferences(str(path), cache_dir=cache_dir)
    assert report.skipped == dict(sorted(reasons.items()))
    assert report.kept == len(expected) == len(ds)
    assert report.total == N_LINES  # every line accounted for
    assert ds["source_row"][:] == [number - 1 for number, _ in expected]
    got = [(r["prompt"][0]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in ds]
    assert got == [row for _, row in expected]

    with pytest.raises(DataError) as e:
        load_preferences(str(path), cache_dir=cache_dir, strict=True)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{path} line {first_bad[0]}: "), (message, first_bad)
