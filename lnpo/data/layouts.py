"""Batch layouts: tokenized examples -> the row arrays of docs/architecture.md.

Every layout returns the same dict of int32 numpy arrays, each ``[R, T]``:

=================  ================================================================
``input_ids``      token ids, 0 on padding
``positions``      position ids; restart at 0 for each packed sequence; a
                   shared-prompt branch continues from the prompt
``segment_ids``    1, 2, 3, ... for the sequences packed in a row (left to right),
                   0 on padding
``branch_ids``     0 ordinary / shared prefix, 1 chosen branch, 2 rejected branch
``targets``        the next token of the same sequence (branch) at each position,
                   0 where there is none (last token of a sequence, padding)
``seq_index``      the completion sequence the target belongs to, -1 for none
=================  ================================================================

Sequences: pair ``i`` of the list has its chosen completion as sequence
``seq_offset + 2*i`` and its rejected as ``seq_offset + 2*i + 1``; SFT example
``i`` is sequence ``seq_offset + i``. Only completion tokens are targets: with a
prompt of ``P`` tokens and a completion of ``C`` tokens laid out from row offset
``o``, positions ``o + P - 1 ... o + P + C - 2`` carry the completion's
``seq_index`` (the last prompt token predicts the first completion token, the
last completion token predicts nothing), so a sequence has exactly ``C`` targets.

Layouts (``layout=``):

- ``"padded"``: one sequence (prompt + completion) per row, row ``2*i`` = pair
  ``i``'s prompt + chosen, row ``2*i + 1`` its prompt + rejected (SFT: row ``i``),
  right-padded to ``T``.
- ``"packed"``: the same sequences packed into rows of ``T`` tokens, first-fit
  in decreasing length order (stable), segment ids per row; a pair's chosen and
  rejected may land in different rows.
- ``"shared_prompt"`` (pairs only): one unit per pair, packed like ``"packed"``:
  ``prompt[:-1]`` in branch 0, then branch 1 = ``[prompt[-1]] + chosen``, then
  branch 2 = ``[prompt[-1]] + rejected``. The duplicated last prompt token has
  position ``P - 1`` in both branches and each branch continues from it (its
  completion token ``j`` is at position ``P + j``). With the attention rule of
  docs/architecture.md (a key is visible if it is in branch 0 or in the query's
  branch), each completion sees exactly the context it has in ``"padded"``.

A unit (sequence or shared-prompt pair) longer than ``T`` is an error: the
tokenizer's ``max_len`` must fit the layout (:func:`unit_lengths` gives the
lengths; for ``"shared_prompt"`` a pair needs ``P + C_chosen + C_rejected + 1``
tokens, up to ``2 * max_len``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from lnpo.errors import ConfigError

ROW_KEYS = ("input_ids", "positions", "segment_ids", "branch_ids", "targets", "seq_index")
LAYOUTS = ("padded", "packed", "shared_prompt")
PAIR_KEYS = ("prompt_ids", "chosen_ids", "rejected_ids")
SFT_KEYS = ("prompt_ids", "completion_ids")


def _check_layout(layout: str, kind: str) -> None:
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if kind == "sft" and layout == "shared_prompt":
        raise ConfigError("the shared_prompt layout needs preference pairs; SFT supports padded and packed")


def unit_lengths(prompt_len, completion_lens: Sequence, layout: str) -> np.ndarray:
    """Lengths of the layout's units, in unit order (int64 ``[U]``).

    Args:
        prompt_len: ``[N]`` prompt lengths.
        completion_lens: for pairs ``(chosen_len [N], rejected_len [N])``; for SFT
            ``(completion_len [N],)``.
        layout: one of :data:`LAYOUTS`.

    Units: ``"padded"`` / ``"packed"``: one per sequence, ordered
    ``pair0.chosen, pair0.rejected, pair1.chosen, ...`` (SFT: one per example);
    ``"shared_prompt"``: one per pair, of length ``P + Cc + Cr + 1``.
    """
    p = np.asarray(prompt_len, dtype=np.int64)
    cs = [np.asarray(c, dtype=np.int64) for c in completion_lens]
    _check_layout(layout, "pairs" if len(cs) == 2 else "sft")
    if layout == "shared_prompt":
        return p + cs[0] + cs[1] + 1
    return np.stack([p + c for c in cs], axis=1).reshape(-1)


@dataclasses.dataclass(frozen=True)
class RowPlan:
    """Where each unit goes: ``row[u]``, ``offset[u]`` (token offset in the row) and
    ``segment[u]`` (1-based segment id in the row); ``num_rows`` rows are used."""

    row: np.ndarray
    offset: np.ndarray
    segment: np.ndarray
    num_rows: int


def plan_rows(lengths, seq_len: int, layout: str) -> RowPlan:
    """Place units of ``lengths`` into rows of ``seq_len`` tokens; deterministic, plain numpy.

    ``"padded"``: unit ``u`` in row ``u``. ``"packed"`` / ``"shared_prompt"``:
    first-fit decreasing (units sorted by length, longest first, ties in unit
    order; each goes to the first row with room). Raises ``ValueError`` if a unit
    is longer than ``seq_len``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n and lengths.max() > seq_len:
        raise ConfigError(f"a sequence of {int(lengths.max())} tokens does not fit in seq_len {seq_len} "
                         f"(layout {layout!r}); tokenize with a smaller max_len or raise seq_len")
    if n and lengths.min() < 1:
        raise ValueError("units must have at least one token")
    if layout == "padded":
        return RowPlan(np.arange(n), np.zeros(n, np.int64), np.ones(n, np.int64), n)
    row = np.zeros(n, np.int64)
    offset = np.zeros(n, np.int64)
    segment = np.zeros(n, np.int64)
    used = np.zeros(max(n, 1), np.int64)  # tokens used per row (at most n rows)
    count = np.zeros(max(n, 1), np.int64)  # segments per row
    num_rows = 0
    for u in np.argsort(-lengths, kind="stable"):
        fits = np.flatnonzero(used[:num_rows] + lengths[u] <= seq_len)
        r = int(fits[0]) if len(fits) else num_rows
        num_rows = max(num_rows, r + 1)
        row[u], offset[u] = r, used[r]
        count[r] += 1
        segment[u] = count[r]
        used[r] += lengths[u]
    return RowPlan(row, offset, segment, num_rows)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def row_buckets(max_rows: int, row_multiple: int = 1) -> tuple[int, ...]:
    """The row counts ``R`` a packed batch may have, ascending: the powers of two and three halves of the powers
    of two (1, 2, 3, 4, 6, 8, 12, ...), each rounded up to a multiple of ``row_multiple``, below ``max_rows``;
    then ``max_rows`` (rounded up) itself.

    A jitted step compiles once per distinct ``R``, so a run over batches of varying rows compiles at most
    ``len(row_buckets(...))`` times (about ``2 log2(max_rows)``), and a batch that needs ``n`` rows gets fewer
    than ``1.5 n`` (each bucket is at most 1.5x the one below it).
    """
    if max_rows < 1 or row_multiple < 1:
        raise ValueError(f"max_rows and row_multiple must be positive, got {max_rows}, {row_multiple}")
    top = round_up(max_rows, row_multiple)
    sizes, p = set(), 1
    while p < top:
        sizes.update(round_up(s, row_multiple) for s in (p, 3 * p // 2) if s >= 1)
        p *= 2
    return tuple(sorted(s for s in sizes if s < top)) + (top,)


def bucket_rows(need: int, buckets: Sequence[int]) -> int:
    """The smallest bucket of ``buckets`` (ascending, :func:`row_buckets`) holding ``need`` rows."""
    for b in buckets:
        if b >= need:
            return b
    raise ValueError(f"a batch needs {need} rows, more than the largest row bucket {buckets[-1]}")


# ----------------------------------------------------------------------------- units


def _ids(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64).reshape(-1)


def _sequence_unit(prompt: np.ndarray, completion: np.ndarray, seq: int) -> dict[str, np.ndarray]:
    tokens = np.concatenate([prompt, completion])
    n, p = len(tokens), len(prompt)
    targets = np.zeros(n, np.int64)
    targets[:-1] = tokens[1:]
    seq_index = np.full(n, -1, np.int64)
    seq_index[p - 1: n - 1] = seq
    return {"input_ids": tokens, "positions": np.arange(n), "branch_ids": np.zeros(n, np.int64),
            "targets": targets, "seq_index": seq_index}


def _shared_unit(prompt: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, seq_chosen: int,
                 seq_rejected: int) -> dict[str, np.ndarray]:
    p = len(prompt)
    prefix = prompt[:-1]
    parts = {"input_ids": [prefix], "positions": [np.arange(p - 1)], "branch_ids": [np.zeros(p - 1, np.int64)],
             "targets": [prompt[1:]], "seq_index": [np.full(p - 1, -1, np.int64)]}
    for branch, completion, seq in ((1, chosen, seq_chosen), (2, rejected, seq_rejected)):
        tokens = np.concatenate([prompt[-1:], completion])
        n = len(tokens)
        targets = np.zeros(n, np.int64)
        targets[:-1] = tokens[1:]
        seq_index = np.full(n, -1, np.int64)
        seq_index[:-1] = seq
        parts["input_ids"].append(tokens)
        parts["positions"].append(p - 1 + np.arange(n))
        parts["branch_ids"].append(np.full(n, branch, np.int64))
        parts["targets"].append(targets)
        parts["seq_index"].append(seq_index)
    return {k: np.concatenate(v) for k, v in parts.items()}


def _units(examples: Sequence[Mapping], layout: str, kind: str, seq_offset: int) -> list[dict[str, np.ndarray]]:
    units = []
    for i, ex in enumerate(examples):
        prompt = _ids(ex["prompt_ids"])
        if len(prompt) < 1:
            raise ValueError(f"example {i}: empty prompt_ids (the last prompt token predicts the first "
                             "completion token)")
        if kind == "sft":
            completion = _ids(ex["completion_ids"])
            if len(completion) < 1:
                raise ValueError(f"example {i}: empty completion_ids")
            units.append(_sequence_unit(prompt, completion, seq_offset + i))
            continue
        chosen, rejected = _ids(ex["chosen_ids"]), _ids(ex["rejected_ids"])
        if len(chosen) < 1 or len(rejected) < 1:
            raise ValueError(f"pair {i}: empty chosen_ids or rejected_ids")
        seq = seq_offset + 2 * i
        if layout == "shared_prompt":
            units.append(_shared_unit(prompt, chosen, rejected, seq, seq + 1))
        else:
            units.append(_sequence_unit(prompt, chosen, seq))
            units.append(_sequence_unit(prompt, rejected, seq + 1))
    return units


def _assemble(units: list[dict[str, np.ndarray]], plan: RowPlan, seq_len: int, num_rows: int) -> dict[str, np.ndarray]:
    out = {k: np.zeros((num_rows, seq_len), np.int32) for k in ROW_KEYS}
    out["seq_index"].fill(-1)
    for u, unit in enumerate(units):
        r, o = int(plan.row[u]), int(plan.offset[u])
        n = len(unit["input_ids"])
        for key, value in unit.items():
            out[key][r, o: o + n] = value
        out["segment_ids"][r, o: o + n] = plan.segment[u]
    return out


def _layout(examples: Sequence[Mapping], layout: str, seq_len: int, kind: str, num_rows: int | None,
            seq_offset: int) -> dict[str, np.ndarray]:
    _check_layout(layout, kind)
    units = _units(examples, layout, kind, seq_offset)
    plan = plan_rows([len(u["input_ids"]) for u in units], seq_len, layout)
    if num_rows is None:
        num_rows = plan.num_rows
    elif plan.num_rows > num_rows:
        raise ConfigError(f"layout {layout!r} needs {plan.num_rows} rows of {seq_len} tokens, only {num_rows} allowed")
    return _assemble(units, plan, seq_len, num_rows)


def layout_pairs(examples: Sequence[Mapping], layout: str, seq_len: int, *, num_rows: int | None = None,
                 seq_offset: int = 0) -> dict[str, np.ndarray]:
    """Rows ``{key: int32 [R, seq_len]}`` (keys :data:`ROW_KEYS`) for tokenized pairs.

    Args:
        examples: mappings with ``prompt_ids``, ``chosen_ids``, ``rejected_ids``
            (each non-empty).
        layout: ``"padded"``, ``"packed"`` or ``"shared_prompt"``.
        seq_len: T, the row length.
        num_rows: R; default the rows the layout needs (``2 * len(examples)`` for
            padded). Extra rows are all padding; fewer than needed is an error.
        seq_offset: added to every ``seq_index`` (the global number of the first
            sequence; even).
    """
    return _layout(examples, layout, seq_len, "pairs", num_rows, seq_offset)


def layout_sft(examples: Sequence[Mapping], layout: str, seq_len: int, *, num_rows: int | None = None,
               seq_offset: int = 0) -> dict[str, np.ndarray]:
    """Rows for tokenized SFT examples (``prompt_ids``, ``completion_ids``); ``"padded"`` or ``"packed"``.

    Example ``i`` is sequence ``seq_offset + i``; otherwise as :func:`layout_pairs`.
    """
    return _layout(examples, layout, seq_len, "sft", num_rows, seq_offset)
