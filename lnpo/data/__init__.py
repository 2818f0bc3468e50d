"""The data layer: load -> validate -> tokenize -> layout -> per-host iterator.

::

    from lnpo import data

    pairs, report = data.load_preferences("prefs.jsonl")            # canonical rows + LoadReport
    tokens, tok_report = data.tokenize_preferences(pairs, tokenizer, max_len=512, max_prompt_len=256)
    batches = data.PairIterator(tokens, global_batch=64, micro_batches=2, layout="packed", seq_len=512,
                                seed=0, process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(batches)                                          # {key: [A, R, T]} + pair_valid [A, L]

See :mod:`lnpo.data.sources` (sources and schemas), :mod:`lnpo.data.validate`
(skip reasons and the report), :mod:`lnpo.data.tokenize` (token contract),
:mod:`lnpo.data.layouts` (row arrays) and :mod:`lnpo.data.iterator` (batches).
"""

from lnpo.data.iterator import EvalIterator, PairIterator, SFTIterator
from lnpo.data.layouts import LAYOUTS, ROW_KEYS, layout_pairs, layout_sft, plan_rows, unit_lengths
from lnpo.data.sources import (
    PREFERENCE_SCHEMAS,
    SFT_SCHEMAS,
    load_preferences,
    load_sft,
    validate_preferences,
    validate_sft,
)
from lnpo.data.tokenize import PlainTemplate, TokenizeConfig, tokenize_preferences, tokenize_sft
from lnpo.data.validate import REASONS, LoadReport

from lnpo.data import embedded  # the embedded synthetic task: materialize(), score()

__all__ = [
    "embedded",
    "EvalIterator",
    "LAYOUTS",
    "LoadReport",
    "PREFERENCE_SCHEMAS",
    "PairIterator",
    "PlainTemplate",
    "REASONS",
    "ROW_KEYS",
    "SFTIterator",
    "SFT_SCHEMAS",
    "TokenizeConfig",
    "layout_pairs",
    "layout_sft",
    "load_preferences",
    "load_sft",
    "plan_rows",
    "tokenize_preferences",
    "tokenize_sft",
    "unit_lengths",
    "validate_preferences",
    "validate_sft",
]
