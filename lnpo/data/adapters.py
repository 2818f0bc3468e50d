"""Schema adapters: one raw row of a known schema -> the canonical row (not yet validated).

Preference adapters (:data:`PREFERENCE_ADAPTERS`) return ``{"prompt", "chosen", "rejected"}``, SFT
adapters (:data:`SFT_ADAPTERS`) ``{"prompt", "completion"}``, each a list of ``{"role", "content"}``
messages; a row they cannot read raises :class:`~lnpo.data.validate.RowIssue` (a counted skip). The
schemas are described in :mod:`lnpo.data.sources`, which runs these over a dataset.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from lnpo.data.validate import RowIssue, check_messages, check_text

#: pku_saferlhf: which label column picks the chosen response.
PKU_PREFERENCES = {"better": "better_response_id", "safer": "safer_response_id"}


def column_value(row: Mapping, columns: Mapping[str, str], key: str) -> Any:
    """The value of canonical column ``key`` (``columns``: canonical name -> source column); ``None`` when absent."""
    column = columns.get(key)
    return None if column is None else row.get(column)


def _as_messages(value: Any, what: str, default_role: str) -> list[dict[str, str]]:
    """Text -> one ``default_role`` message; a list -> checked messages."""
    if isinstance(value, (str, bytes, bytearray)):
        return [{"role": default_role, "content": check_text(value, what)}]
    if value is None:
        raise RowIssue("missing_field", f"missing field {what!r}")
    if not isinstance(value, (list, tuple)):
        raise RowIssue("wrong_type", f"{what} must be text or a list of messages, got {type(value).__name__}")
    return check_messages(value, what)


def _strip_prompt(prompt: list, completion: list) -> list:
    """``completion`` without a leading copy of the prompt messages (a common dataset convention).

    The copy may lack a leading system message of ``prompt`` (one added from a ``system`` column).
    """
    candidates = [prompt, prompt[1:]] if prompt and prompt[0]["role"] == "system" else [prompt]
    for p in candidates:
        n = len(p)
        if n and len(completion) > n and completion[:n] == p:
            return completion[n:]
    return completion


def _prompt_with_system(row, columns, prompt_value) -> list[dict[str, str]]:
    prompt = _as_messages(prompt_value, "prompt", "user")
    system = column_value(row, columns, "system")
    if system is not None:
        system = check_text(system, "system")
        if system.strip():
            prompt = [{"role": "system", "content": system}] + prompt
    return prompt


# --- preference adapters: raw row -> {"prompt", "chosen", "rejected"} (not yet validated)


def _adapt_generic(row, columns, options):
    prompt = _prompt_with_system(row, columns, column_value(row, columns, "prompt"))
    chosen = _strip_prompt(prompt, _as_messages(column_value(row, columns, "chosen"), "chosen", "assistant"))
    rejected = _strip_prompt(prompt, _as_messages(column_value(row, columns, "rejected"), "rejected", "assistant"))
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def split_shared_prefix(chosen: list, rejected: list) -> tuple[list, list, list]:
    """``(prompt, chosen completion, rejected completion)`` of two whole conversations.

    The prompt is the longest shared prefix of messages; the two conversations must
    then both continue with a (different) assistant message. Raises :class:`RowIssue`
    (``identical_responses`` or ``prompt_mismatch``) otherwise.
    """
    k = 0
    while k < len(chosen) and k < len(rejected) and chosen[k] == rejected[k]:
        k += 1
    if k == len(chosen) and k == len(rejected):
        raise RowIssue("identical_responses", "chosen is identical to rejected")
    if k == len(chosen) or k == len(rejected):
        raise RowIssue("prompt_mismatch", "one conversation is a prefix of the other")
    if chosen[k]["role"] != "assistant" or rejected[k]["role"] != "assistant":
        raise RowIssue("prompt_mismatch",
                       f"chosen and rejected first differ at message {k}, which is not an assistant message in both")
    return chosen[:k], chosen[k:], rejected[k:]


def _adapt_conversational(row, columns, options):
    chosen = check_messages(column_value(row, columns, "chosen"), "chosen")
    rejected = check_messages(column_value(row, columns, "rejected"), "rejected")
    prompt, chosen, rejected = split_shared_prefix(chosen, rejected)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: str, what: str = "transcript") -> list[dict[str, str]]:
    """Messages of an HH-RLHF transcript ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``.

    Turn contents are stripped of surrounding whitespace. Raises :class:`RowIssue`
    ``malformed_transcript`` unless the text is one or more turns (nothing before
    the first), starting with a Human turn and ending with an Assistant turn.
    """
    if not text.startswith("\n\n") and re.match(r"\s*Human:", text):
        text = "\n\n" + text.lstrip()
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise RowIssue("malformed_transcript", f"{what} has text before the first '\\n\\nHuman:' turn")
    messages = [{"role": _HH_ROLES[role], "content": content.strip()}
                for role, content in zip(parts[1::2], parts[2::2])]
    if not messages:
        raise RowIssue("malformed_transcript", f"{what} has no '\\n\\nHuman:' / '\\n\\nAssistant:' turns")
    if messages[0]["role"] != "user":
        raise RowIssue("malformed_transcript", f"{what} does not start with a Human turn")
    if messages[-1]["role"] != "assistant":
        raise RowIssue("malformed_transcript", f"{what} does not end with an Assistant turn")
    return messages


def _adapt_hh(row, columns, options):
    chosen = parse_hh_transcript(check_text(column_value(row, columns, "chosen"), "chosen"), "chosen")
    rejected = parse_hh_transcript(check_text(column_value(row, columns, "rejected"), "rejected"), "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise RowIssue("prompt_mismatch", "chosen and rejected transcripts differ before the final assistant turn")
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def _adapt_pku(row, columns, options):
    label_column = PKU_PREFERENCES[options["pku_preference"]]
    label = column_value(row, columns, label_column)
    if label is None:
        raise RowIssue("missing_field", f"missing field {label_column!r}")
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) or int(label) not in (0, 1):
        raise RowIssue("invalid_label", f"{label_column} must be 0 or 1, got {label!r}")
    prompt = _prompt_with_system(row, columns, column_value(row, columns, "prompt"))
    responses = [_as_messages(column_value(row, columns, f"response_{i}"), f"response_{i}", "assistant") for i in (0, 1)]
    return {"prompt": prompt, "chosen": responses[int(label)], "rejected": responses[1 - int(label)]}


PREFERENCE_ADAPTERS = {
    "generic": _adapt_generic,
    "conversational": _adapt_conversational,
    "hh_rlhf": _adapt_hh,
    "pku_saferlhf": _adapt_pku,
    "ultrafeedback": _adapt_conversational,
}


# --- SFT adapters: raw row -> {"prompt", "completion"}


def _adapt_messages(row, columns, options):
    messages = check_messages(column_value(row, columns, "messages"), "messages")
    if not messages:
        raise RowIssue("empty_prompt", "messages is empty")
    if messages[-1]["role"] != "assistant":
        raise RowIssue("invalid_role", f"messages ends with a {messages[-1]['role']!r} message, not 'assistant'")
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def _adapt_prompt_completion(row, columns, options):
    prompt = _prompt_with_system(row, columns, column_value(row, columns, "prompt"))
    completion = _strip_prompt(prompt, _as_messages(column_value(row, columns, "completion"), "completion", "assistant"))
    return {"prompt": prompt, "completion": completion}


SFT_ADAPTERS = {"messages": _adapt_messages, "prompt_completion": _adapt_prompt_completion}
