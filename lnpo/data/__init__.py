"""The data layer: load -> validate -> tokenize -> layout -> per-host iterator.

::

    from lnpo import data

    pairs, report = data.load_preferences("prefs.jsonl")            # canonical rows + LoadReport
    tokens, tok_report = data.tokenize_preferences(pairs, tokenizer, max_len=512, max_prompt_len=256)
    batches = data.PairIterator(tokens, global_batch=64, micro_batches=2, layout="packed", seq_len=512,
                                seed=0, process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(batches)                                          # {key: [A, R, T]} + example_valid [A, L]

See :mod:`lnpo.data.sources` (sources and schemas), :mod:`lnpo.data.validate`
(skip reasons and the report), :mod:`lnpo.data.tokenize` (token contract),
:mod:`lnpo.data.layouts` (row arrays) and :mod:`lnpo.data.iterator` (batches).
"""

import importlib

# Names resolved on first use (PEP 562), so ``lnpo.data.layouts`` (numpy only) can be
# imported without loading the Hugging Face ``datasets`` stack (pyarrow, pandas: ~100 MB).
_EXPORTS = {
    "embedded": None,  # the embedded synthetic task: materialize(), score()
    "EvalIterator": "iterator", "PairIterator": "iterator", "SFTIterator": "iterator",
    "LAYOUTS": "layouts", "ROW_KEYS": "layouts", "layout_pairs": "layouts", "layout_sft": "layouts",
    "plan_rows": "layouts", "unit_lengths": "layouts", "row_buckets": "layouts", "bucket_rows": "layouts",
    "PREFERENCE_SCHEMAS": "sources", "SFT_SCHEMAS": "sources", "load_preferences": "sources",
    "load_sft": "sources", "validate_preferences": "sources", "validate_sft": "sources",
    "PlainTemplate": "tokenize", "TokenizeConfig": "tokenize", "tokenize_preferences": "tokenize",
    "tokenize_sft": "tokenize",
    "REASONS": "validate", "LoadReport": "validate",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lnpo.data' has no attribute {name!r}")
    module = importlib.import_module(f"lnpo.data.{_EXPORTS[name] or name}")
    value = module if _EXPORTS[name] is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS)
