"""Per-host batch iterators over a tokenized dataset: shuffling, micro-batches, multi-host shards, resume.

A *global batch* is ``global_batch`` pairs (or SFT examples), split into ``A =
micro_batches`` micro-batches of ``M = global_batch // A`` pairs, every pair whole
in one micro-batch. Of each micro-batch, host ``h`` of ``H = process_count`` gets
the contiguous slice ``h*L : (h+1)*L`` with ``L = M // H`` and reads only those
rows from the dataset. A host-local batch is the dict

=================  ==========================  ===========================================
``input_ids`` ...  int32 ``[A, R, T]``         the :data:`~lnpo.data.layouts.ROW_KEYS` rows
``example_valid``  float32 ``[A, L]``          1.0 for a real pair / example, 0.0 for a dummy
``pair_label``     float32 ``[A, L]``          unpaired (KTO) data only: 1.0 desirable (lnpo.data.unpaired)
=================  ==========================  ===========================================

Sequence numbers are global within a micro-batch: on host ``h`` pair ``j`` of the
slice is pair ``h*L + j`` of the micro-batch, its chosen ``seq_index`` is
``2*(h*L + j)`` (SFT: ``h*L + j``), so the array assembled by
``jax.make_array_from_process_local_data`` along the row axis (axis 1), in host
order, numbers the ``2*M`` sequences of each micro-batch consistently.

``R`` is the same on every host and every micro-batch of a step: for ``"padded"``
it is ``2*L`` (SFT: ``L``); for ``"packed"`` / ``"shared_prompt"`` each host plans
the packing of *every* host's slice of every micro-batch from the lengths
columns (O(global batch), plain numpy) and takes the maximum. ``R`` is rounded up
to a multiple of ``row_multiple`` (the number of local data shards) and then up to
the next of the fixed row buckets :func:`~lnpo.data.layouts.row_buckets` (up to
the padded row count, ``2*L`` for pairs, ``L`` for SFT or shared_prompt), so it
varies from step to step over at most ``len(row_buckets(...))`` values and the
jitted step compiles at most that many times in a run; ``T = seq_len`` is fixed.

Order: epoch ``e`` visits the examples in the permutation
``numpy.random.default_rng([seed, e]).permutation(N)`` (the same on every host).
With ``drop_remainder=True`` an epoch has ``N // global_batch`` batches and the
rest of the permutation is skipped; with ``drop_remainder=False`` batches run on
into the next epoch's permutation, so every example is used each epoch. With
``num_epochs`` set, iteration stops after that many epochs (a last partial batch,
possible only with ``drop_remainder=False``, is filled with dummy pairs, as in
evaluation).

Dummy pairs (and dummy SFT examples) pad partial batches: prompt ``[0]``, chosen
``[0]``, rejected ``[0]``: real one-token sequences (so per-sequence counts are
never 0 and length-normalized losses stay finite) with ``example_valid == 0``; the
train and eval steps must weight per-pair values by ``example_valid``.

Resume: :meth:`PairIterator.state` is a small JSON-serializable dict saved with
each checkpoint; ``restore(state)`` (or ``state=`` in the constructor) continues
at exactly the next example. Restoring checks that the seed and the number of
examples match (raises ``ValueError`` otherwise) and warns if the dataset
fingerprint changed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

import datasets
import numpy as np

from lnpo.data.layouts import (
    LAYOUTS,
    bucket_rows,
    layout_pairs,
    layout_sft,
    plan_rows,
    round_up,
    row_buckets,
    unit_lengths,
)
from lnpo.errors import CheckpointError, ConfigError, DataError

log = logging.getLogger(__name__)

STATE_VERSION = 1
DUMMY_PAIR = {"prompt_ids": [0], "chosen_ids": [0], "rejected_ids": [0]}
DUMMY_SFT = {"prompt_ids": [0], "completion_ids": [0]}


def _kind(dataset: datasets.Dataset) -> str:
    cols = set(dataset.column_names)
    if {"prompt_ids", "chosen_ids", "rejected_ids"} <= cols:
        return "pairs"
    if {"prompt_ids", "completion_ids"} <= cols:
        return "sft"
    raise ValueError(f"not a tokenized dataset: columns {sorted(cols)} (expected prompt_ids + chosen_ids + "
                     "rejected_ids, or prompt_ids + completion_ids; see lnpo.data.tokenize)")


def _lengths(dataset: datasets.Dataset, key: str) -> np.ndarray:
    """``len`` of column ``{key}_ids`` for every row: the ``{key}_len`` column when present."""
    if f"{key}_len" in dataset.column_names:
        column = f"{key}_len"
        values = dataset.select_columns([column]).with_format("numpy")[:][column]
        return np.asarray(values, dtype=np.int64).reshape(-1)
    return np.fromiter((len(x) for x in dataset[f"{key}_ids"]), dtype=np.int64, count=len(dataset))


class _BatchBuilder:
    """Builds the host-local batch for a vector of global-batch example indices (-1 = dummy)."""

    def __init__(self, dataset: datasets.Dataset, *, global_batch: int, micro_batches: int, layout: str,
                 seq_len: int, process_index: int, process_count: int, row_multiple: int, kind: str | None = None):
        self.kind = kind or _kind(dataset)
        if layout not in LAYOUTS:
            raise ConfigError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
        if self.kind == "sft" and layout == "shared_prompt":
            raise ConfigError("the shared_prompt layout needs preference pairs")
        for name, value in (("global_batch", global_batch), ("micro_batches", micro_batches),
                            ("seq_len", seq_len), ("process_count", process_count), ("row_multiple", row_multiple)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if global_batch % micro_batches or (global_batch // micro_batches) % process_count:
            raise ConfigError(f"global_batch {global_batch} must split into micro_batches {micro_batches} x "
                             f"process_count {process_count} equal parts")
        cols = ["prompt_ids", "chosen_ids", "rejected_ids"] if self.kind == "pairs" else ["prompt_ids",
                                                                                           "completion_ids"]
        self.dataset = dataset.select_columns(cols)
        self.global_batch, self.micro_batches, self.layout, self.seq_len = global_batch, micro_batches, layout, seq_len
        self.process_index, self.process_count, self.row_multiple = process_index, process_count, row_multiple
        self.micro = global_batch // micro_batches  # M: pairs per micro-batch
        self.local = self.micro // process_count  # L: pairs per host per micro-batch
        keys = ("prompt", "chosen", "rejected") if self.kind == "pairs" else ("prompt", "completion")
        lens = [_lengths(dataset, k) for k in keys]
        # Unpaired (KTO) data laid out as pairs (lnpo.data.unpaired.kto_pairs): its labels, dummy = 0.
        self.labels = None
        if self.kind == "pairs" and "label" in dataset.column_names:
            self.labels = np.append(np.asarray(dataset["label"], np.float32).reshape(-1), 0.0)
        # Row lengths of each example's units, with one extra entry (index -1) for the dummy example.
        dummy = 1
        self.prompt_len = np.append(lens[0], dummy)
        self.completion_lens = [np.append(c, dummy) for c in lens[1:]]
        units = unit_lengths(self.prompt_len, self.completion_lens, layout)
        if len(units) and units.max() > seq_len:
            per_example = units.reshape(len(self.prompt_len), -1).max(axis=1)[:-1]
            too_long = int((per_example > seq_len).sum())
            hint = ""
            if layout == "shared_prompt":
                hint = " (shared_prompt needs P + C_chosen + C_rejected + 1 <= seq_len)"
            raise ConfigError(f"{too_long} of {len(dataset)} examples need more than seq_len={seq_len} tokens in "
                             f"layout {layout!r}{hint}; tokenize with a smaller max_len or raise seq_len")

    @property
    def row_buckets(self) -> tuple[int, ...]:
        """Every R a batch can have (:func:`~lnpo.data.layouts.row_buckets` up to the padded row count: a
        packed row holds at least one unit, so no batch needs more)."""
        units_per_slice = self.local * (2 if self.kind == "pairs" and self.layout != "shared_prompt" else 1)
        if self.layout == "padded":
            return (round_up(units_per_slice, self.row_multiple),)
        return row_buckets(units_per_slice, self.row_multiple)

    def num_rows(self, indices: np.ndarray) -> int:
        """R for a global batch: the most rows any host's slice of any micro-batch needs, up to its row bucket."""
        if self.layout == "padded":
            return self.row_buckets[0]
        need = 0
        for part in indices.reshape(self.micro_batches * self.process_count, self.local):
            units = unit_lengths(self.prompt_len[part], [c[part] for c in self.completion_lens], self.layout)
            need = max(need, plan_rows(units, self.seq_len, self.layout).num_rows)
        return bucket_rows(max(need, 1), self.row_buckets)

    def build(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The host-local batch (module docstring) for ``indices`` ``[global_batch]`` (-1 = dummy)."""
        indices = np.asarray(indices, dtype=np.int64)
        assert indices.shape == (self.global_batch,), indices.shape
        num_rows = self.num_rows(indices)
        h, L = self.process_index, self.local
        own = indices.reshape(self.micro_batches, self.process_count, L)[:, h, :]  # [A, L]
        real = sorted(set(int(i) for i in own.reshape(-1) if i >= 0))
        fetched = {}
        if real:
            batch = self.dataset[real]
            for j, i in enumerate(real):
                fetched[i] = {c: batch[c][j] for c in batch}
        dummy = DUMMY_PAIR if self.kind == "pairs" else DUMMY_SFT
        build = layout_pairs if self.kind == "pairs" else layout_sft
        offset = h * L * (2 if self.kind == "pairs" else 1)
        micro = []
        for m in range(self.micro_batches):
            examples = [fetched[int(i)] if i >= 0 else dummy for i in own[m]]
            micro.append(build(examples, self.layout, self.seq_len, num_rows=num_rows, seq_offset=offset))
        out = {k: np.stack([mb[k] for mb in micro]) for k in micro[0]}
        out["example_valid"] = (own >= 0).astype(np.float32)
        if self.labels is not None:
            out["pair_label"] = self.labels[own]  # index -1 (a dummy) is the appended 0
        return out


class PairIterator:
    """Endless (or ``num_epochs``) host-local training batches over a tokenized preference dataset.

    Args:
        dataset: tokenized pairs (:func:`lnpo.data.tokenize.tokenize_preferences`);
            the same dataset, in the same order, on every host.
        global_batch: pairs per optimizer step, all hosts together.
        micro_batches: A, gradient-accumulation micro-batches per step.
        layout: ``"padded"``, ``"packed"`` or ``"shared_prompt"``.
        seq_len: T.
        seed: shuffling seed.
        process_index, process_count: this host and the number of hosts
            (``jax.process_index()``, ``jax.process_count()``).
        row_multiple: R is rounded up to a multiple of it (local data shards).
        drop_remainder: see the module docstring.
        num_epochs: stop after this many epochs; ``None`` = never.
        shuffle: ``False`` visits examples in dataset order every epoch.
        state: a :meth:`state` dict to resume from.

    Yields the host-local batch dict of the module docstring.
    """

    _kind_required: str | None = "pairs"

    def __init__(self, dataset: datasets.Dataset, *, global_batch: int, micro_batches: int = 1,
                 layout: str = "padded", seq_len: int, seed: int = 0, process_index: int = 0,
                 process_count: int = 1, row_multiple: int = 1, drop_remainder: bool = True,
                 num_epochs: int | None = None, shuffle: bool = True, state: Mapping | None = None):
        kind = _kind(dataset)
        if self._kind_required and kind != self._kind_required:
            raise ValueError(f"{type(self).__name__} needs a tokenized {self._kind_required} dataset, got {kind}")
        self._builder = _BatchBuilder(dataset, global_batch=global_batch, micro_batches=micro_batches,
                                      layout=layout, seq_len=seq_len, process_index=process_index,
                                      process_count=process_count, row_multiple=row_multiple, kind=kind)
        self.num_examples = len(dataset)
        if drop_remainder and self.num_examples < global_batch:
            raise ConfigError(f"{self.num_examples} examples < global_batch {global_batch}: no full batch "
                             "(use drop_remainder=False or a smaller batch)")
        if self.num_examples == 0:
            raise DataError("the dataset is empty")
        self.global_batch, self.seed, self.drop_remainder = global_batch, int(seed), drop_remainder
        self.num_epochs, self.shuffle = num_epochs, shuffle
        self._fingerprint = getattr(dataset, "_fingerprint", None)
        self._epoch, self._offset, self._step = 0, 0, 0
        self._perm_cache: tuple[int, np.ndarray] | None = None
        if state is not None:
            self.restore(state)

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per epoch (``drop_remainder=True``) or batches per epoch on average (ceil otherwise)."""
        if self.drop_remainder:
            return self.num_examples // self.global_batch
        return -(-self.num_examples // self.global_batch)

    def _perm(self, epoch: int) -> np.ndarray:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            perm = (np.random.default_rng([self.seed, epoch]).permutation(self.num_examples) if self.shuffle
                    else np.arange(self.num_examples))
            self._perm_cache = (epoch, perm)
        return self._perm_cache[1]

    def _done(self, epoch: int) -> bool:
        return self.num_epochs is not None and epoch >= self.num_epochs

    def next_indices(self) -> np.ndarray:
        """Advance and return the next global batch's example indices ``[global_batch]`` (-1 = dummy)."""
        n, g = self.num_examples, self.global_batch
        epoch, offset = self._epoch, self._offset
        if self.drop_remainder:
            if offset + g > n:
                epoch, offset = epoch + 1, 0
            if self._done(epoch):
                raise StopIteration
            indices = self._perm(epoch)[offset: offset + g]
            offset += g
        else:
            if offset >= n:
                epoch, offset = epoch + 1, 0
            if self._done(epoch):
                raise StopIteration
            parts, need = [], g
            while need and not self._done(epoch):
                take = self._perm(epoch)[offset: offset + need]
                parts.append(take)
                need -= len(take)
                offset += len(take)
                if offset >= n and need:
                    epoch, offset = epoch + 1, 0
            if need:
                parts.append(np.full(need, -1, np.int64))
            indices = np.concatenate(parts)
        self._epoch, self._offset = epoch, offset
        self._step += 1
        return np.asarray(indices, dtype=np.int64)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return self.build(self.next_indices())

    def build(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The host-local batch for global ``indices`` from :meth:`next_indices` (-1 = dummy)."""
        return self._builder.build(indices)

    @property
    def row_buckets(self) -> tuple[int, ...]:
        """Every row count R a batch of this iterator can have (one compilation of the step each)."""
        return self._builder.row_buckets

    def state(self) -> dict:
        """JSON-serializable position: the next batch starts at ``offset`` of epoch ``epoch``'s permutation."""
        return {"version": STATE_VERSION, "epoch": int(self._epoch), "offset": int(self._offset),
                "step": int(self._step), "seed": self.seed, "num_examples": int(self.num_examples),
                "fingerprint": self._fingerprint}

    def restore(self, state: Mapping) -> None:
        """Continue from a :meth:`state` dict (exactly the next example)."""
        if int(state.get("version", -1)) != STATE_VERSION:
            raise CheckpointError(f"iterator state version {state.get('version')!r} != {STATE_VERSION}")
        if int(state["seed"]) != self.seed or int(state["num_examples"]) != self.num_examples:
            raise CheckpointError(f"iterator state is for seed {state['seed']} over {state['num_examples']} examples; "
                             f"this iterator has seed {self.seed} over {self.num_examples}: cannot resume exactly")
        if state.get("fingerprint") and self._fingerprint and state["fingerprint"] != self._fingerprint:
            log.warning("restoring an iterator state saved for dataset %s onto dataset %s", state["fingerprint"],
                        self._fingerprint)
        self._epoch, self._offset, self._step = int(state["epoch"]), int(state["offset"]), int(state["step"])


class SFTIterator(PairIterator):
    """:class:`PairIterator` over a tokenized SFT dataset (``prompt_ids``, ``completion_ids``);
    layouts ``"padded"`` / ``"packed"``; ``example_valid`` marks real examples."""

    _kind_required = "sft"


class EvalIterator:
    """One ordered pass over a tokenized dataset (pairs or SFT), every example exactly once.

    Same batch format and arguments as :class:`PairIterator` (no shuffling, no
    state). The last batch is filled up with dummy examples whose ``example_valid``
    is 0; ``len(iterator)`` is the number of batches, ``ceil(N / global_batch)``.
    Re-iterable.
    """

    def __init__(self, dataset: datasets.Dataset, *, global_batch: int, micro_batches: int = 1,
                 layout: str = "padded", seq_len: int, process_index: int = 0, process_count: int = 1,
                 row_multiple: int = 1, max_batches: int | None = None):
        self._builder = _BatchBuilder(dataset, global_batch=global_batch, micro_batches=micro_batches,
                                      layout=layout, seq_len=seq_len, process_index=process_index,
                                      process_count=process_count, row_multiple=row_multiple)
        self.num_examples = len(dataset)
        self.global_batch = global_batch
        self.max_batches = max_batches

    def __len__(self) -> int:
        n = -(-self.num_examples // self.global_batch)
        return n if self.max_batches is None else min(n, self.max_batches)

    @property
    def row_buckets(self) -> tuple[int, ...]:
        """Every row count R a batch of this iterator can have (one compilation of the step each)."""
        return self._builder.row_buckets

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for b in range(len(self)):
            indices = np.arange(b * self.global_batch, (b + 1) * self.global_batch, dtype=np.int64)
            indices[indices >= self.num_examples] = -1
            yield self._builder.build(indices)
