"""Row validation and the load/tokenization report.

Every row that reaches the trainer has passed these checks; every row that did
not is counted under a stable snake_case *reason* (the keys of :data:`REASONS`)
in a :class:`LoadReport`. In strict mode the first bad row raises a
:class:`~lnpo.errors.DataError` instead, naming the file and, for a JSON Lines file,
the 1-based line as an editor shows it (otherwise the 0-based row)::

    DataError: prefs.jsonl line 18: chosen is identical to rejected

Canonical rows (the output of :mod:`lnpo.data.sources`):

- preference pair: ``{"prompt": [msg, ...], "chosen": [msg, ...], "rejected": [msg, ...]}``
- SFT example: ``{"prompt": [msg, ...], "completion": [msg, ...]}``

where a message is ``{"role": str, "content": str}``. ``chosen``, ``rejected``
and ``completion`` hold only the completion turns, never the prompt; their first
message is an assistant message.

The checks of a canonical row, field by field (``prompt``, then ``chosen`` /
``completion``, then ``rejected``; the first failing check names the reason):

1. ``missing_field`` / ``wrong_type``: the field is a list of messages, each a
   dict with string ``role`` and ``content`` (bytes are decoded as UTF-8);
2. ``undecodable_text``: every string is valid UTF-8 (no undecodable bytes, no
   lone surrogates);
3. prompt: ``empty_prompt`` unless some message has non-blank content;
   ``invalid_role`` for an empty role;
4. completion: ``empty_response`` for no messages; ``invalid_role`` unless it
   starts with an ``assistant`` message (or for an empty role);
   ``empty_response`` when all its contents are blank;

and finally ``identical_responses`` when chosen and rejected are equal (ignoring
leading and trailing whitespace of each message).

The schema adapters (:mod:`lnpo.data.sources`) and the tokenizer
(:mod:`lnpo.data.tokenize`) use the other reasons of :data:`REASONS`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from lnpo.errors import DataError

# reason -> what it means (the text of a strict-mode error starts with the row's detail,
# which is more specific; these are the documentation of the keys).
REASONS: dict[str, str] = {
    "missing_field": "a required field is missing or null",
    "wrong_type": "a field or message has the wrong type",
    "undecodable_text": "text is not valid UTF-8 (undecodable bytes or lone surrogates)",
    "malformed_json": "a JSON Lines line is not a JSON object (not JSON, or nested too deeply to parse)",
    "blank_line": "a JSON Lines line is empty or whitespace only",
    "empty_prompt": "the prompt is empty",
    "invalid_role": "a completion does not start with an assistant message (SFT messages: do not end with one), "
                    "or a role is empty",
    "empty_response": "a response is empty or whitespace only",
    "identical_responses": "chosen is identical to rejected",
    "malformed_transcript": "an HH-RLHF transcript is not '\\n\\nHuman: ...' / '\\n\\nAssistant: ...' turns "
                            "starting with Human and ending with Assistant",
    "prompt_mismatch": "chosen and rejected do not share a prompt that ends before an assistant turn",
    "invalid_label": "a preference label (e.g. better_response_id) is not 0 or 1",
    # tokenization (lnpo.data.tokenize)
    "prompt_too_long": "the tokenized prompt is longer than max_prompt_len (truncation='drop')",
    "too_long": "prompt + response is longer than max_len (truncation='drop')",
    "identical_tokens": "chosen and rejected have the same tokens (after truncation to max_len)",
    "template_error": "the chat template raised an error for this row",
}


class RowIssue(Exception):
    """A malformed row: ``reason`` is a key of :data:`REASONS`, ``detail`` one line for humans."""

    def __init__(self, reason: str, detail: str):
        if reason not in REASONS:
            raise KeyError(f"unknown skip reason {reason!r}")
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass
class LoadReport:
    """What a load or tokenization pass kept and skipped.

    Attributes:
        kept: rows that passed.
        skipped: reason -> number of rows skipped for it (only reasons that occurred).
        source: the data source's display name (a path, hub name or ``"<Dataset>"``).
        adjusted: kept rows that were changed, by kind (e.g. ``truncated_prompt``,
            ``truncated_response``, ``template_fallback``); these are *not* skips.
    """

    kept: int
    skipped: dict[str, int]
    source: str
    adjusted: dict[str, int] = dataclasses.field(default_factory=dict)
    schema: str = ""  # the schema the rows were read with ("" for a tokenization pass)
    schema_detected: bool = dataclasses.field(default=False, compare=False)  # whether schema="auto" picked it

    @property
    def total(self) -> int:
        return self.kept + sum(self.skipped.values())

    def summary(self) -> str:
        """One line, e.g. ``prefs.jsonl: kept 95 of 100 rows; skipped 5 (identical_responses=2, missing_field=3)``.

        With a schema: ``prefs.jsonl: schema 'generic' (auto-detected); kept ...``.
        """
        n_skipped = sum(self.skipped.values())
        line = f"{self.source}: "
        if self.schema:
            line += f"schema {self.schema!r}{' (auto-detected)' if self.schema_detected else ''}; "
        line += f"kept {self.kept} of {self.total} rows"
        if n_skipped:
            parts = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
            line += f"; skipped {n_skipped} ({parts})"
        else:
            line += "; skipped 0"
        if self.adjusted:
            line += "; " + ", ".join(f"{k}={v}" for k, v in sorted(self.adjusted.items()))
        return line

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def strict_error(source: str, row: int, detail: str, *, lines: bool = False) -> DataError:
    """The one-line strict-mode error: ``"<source> row <row>: <detail>"`` (``row`` 0-based), or for a JSON
    Lines file (``lines``, where ``row`` is the 0-based line index) ``"<source> line <row + 1>: <detail>"``,
    the line number an editor shows."""
    where = f"line {row + 1}" if lines else f"row {row}"
    return DataError(f"{source} {where}: {detail}")


def reasons_of(dataset, column: str) -> np.ndarray:
    """The skip-reason column of a ``datasets.Dataset`` as an object array, read through Arrow in one go
    (``dataset[column]`` decodes row by row)."""
    return np.asarray(dataset.with_format("arrow")[column].to_pylist() if len(dataset) else [], dtype=object)


def make_report(source: str, reasons: Iterable[str], *, adjusted: Mapping[str, int] | None = None,
                schema: str = "", schema_detected: bool = False) -> LoadReport:
    """A report from one reason per row (``""`` = kept)."""
    counts = Counter(reasons)
    kept = counts.pop("", 0)
    return LoadReport(kept=kept, skipped=dict(sorted(counts.items())), source=source,
                      adjusted=dict(sorted((adjusted or {}).items())), schema=schema, schema_detected=schema_detected)


# ----------------------------------------------------------------------------- checks


def check_text(value: Any, what: str) -> str:
    """``value`` as a ``str``: bytes are decoded as UTF-8; raises :class:`RowIssue` otherwise.

    ``None`` -> ``missing_field``; other non-strings -> ``wrong_type``; bytes that
    are not UTF-8, or strings with lone surrogates -> ``undecodable_text``.
    """
    if value is None:
        raise RowIssue("missing_field", f"missing field {what!r}")
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RowIssue("undecodable_text", f"{what} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not isinstance(value, str):
        raise RowIssue("wrong_type", f"{what} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RowIssue("undecodable_text", f"{what} is not valid UTF-8 ({e.reason} at character {e.start})") from None
    return value


def check_messages(value: Any, what: str) -> list[dict[str, str]]:
    """``value`` as a list of ``{"role", "content"}`` dicts (other keys dropped); raises :class:`RowIssue`.

    An empty list is returned as is; the callers decide whether it is allowed.
    """
    if value is None:
        raise RowIssue("missing_field", f"missing field {what!r}")
    if not isinstance(value, (list, tuple)):
        raise RowIssue("wrong_type", f"{what} must be a list of messages, got {type(value).__name__}")
    out = []
    for j, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise RowIssue("wrong_type", f"{what}[{j}] must be a message dict, got {type(message).__name__}")
        for key in ("role", "content"):
            if key not in message or message[key] is None:
                raise RowIssue("missing_field", f"{what}[{j}] has no {key!r}")
        out.append({"role": check_text(message["role"], f"{what}[{j}].role"),
                    "content": check_text(message["content"], f"{what}[{j}].content")})
    return out


def _check_prompt(prompt: Any) -> list[dict[str, str]]:
    prompt = check_messages(prompt, "prompt")
    if not prompt or all(not m["content"].strip() for m in prompt):
        raise RowIssue("empty_prompt", "prompt is empty")
    for j, m in enumerate(prompt):
        if not m["role"].strip():
            raise RowIssue("invalid_role", f"prompt[{j}] has an empty role")
    return prompt


def _check_completion(completion: Any, what: str) -> list[dict[str, str]]:
    completion = check_messages(completion, what)
    if not completion:
        raise RowIssue("empty_response", f"{what} is empty")
    if completion[0]["role"] != "assistant":
        raise RowIssue("invalid_role", f"{what} starts with a {completion[0]['role']!r} message, not 'assistant'")
    for j, m in enumerate(completion):
        if not m["role"].strip():
            raise RowIssue("invalid_role", f"{what}[{j}] has an empty role")
    if all(not m["content"].strip() for m in completion):
        raise RowIssue("empty_response", f"{what} is empty")
    return completion


def _stripped(messages: Sequence[Mapping[str, str]]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"].strip()) for m in messages]


def check_preference_row(row: Mapping[str, Any]) -> dict[str, list[dict[str, str]]]:
    """Check one canonical preference row; returns it normalized, or raises :class:`RowIssue`.

    The returned dict has exactly the keys ``prompt``, ``chosen``, ``rejected``.
    """
    prompt = _check_prompt(row.get("prompt"))
    chosen = _check_completion(row.get("chosen"), "chosen")
    rejected = _check_completion(row.get("rejected"), "rejected")
    if _stripped(chosen) == _stripped(rejected):
        raise RowIssue("identical_responses", "chosen is identical to rejected")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def check_sft_row(row: Mapping[str, Any]) -> dict[str, list[dict[str, str]]]:
    """Check one canonical SFT row; returns ``{"prompt", "completion"}`` normalized, or raises :class:`RowIssue`."""
    prompt = _check_prompt(row.get("prompt"))
    completion = _check_completion(row.get("completion"), "completion")
    return {"prompt": prompt, "completion": completion}


# ----------------------------------------------------------------------------- cache fingerprints


@functools.cache
def code_hash(*paths: str) -> str:
    """SHA-256 (16 hex digits) of the given source files: part of the ``datasets`` map
    fingerprints, so a change to the data code invalidates cached results."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def fingerprint_of(*parts: Any) -> str:
    """A ``datasets`` fingerprint (16 hex digits) of JSON-serializable ``parts`` (others by ``repr``)."""
    payload = json.dumps(parts, sort_keys=True, default=repr)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
