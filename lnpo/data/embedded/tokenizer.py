"""The embedded task's tokenizer: a byte-level BPE trained on a seed-independent corpus of the task.

:func:`build_tokenizer` trains a byte-level BPE with ``tokenizers`` whose
pre-tokenizer splits digits into single characters (so arithmetic generalizes over
numbers) and whose vocabulary ends up holding every task word whole. Special tokens:
``<|pad|>`` (id 0), ``<|bos|>``, ``<|eos|>``, ``<|user|>``, ``<|assistant|>``,
``<|system|>``. The chat template (:data:`CHAT_TEMPLATE`) renders
``<|bos|><|user|>{user}<|assistant|>{assistant}<|eos|>``; with ``add_generation_prompt``
it ends in ``<|assistant|>``. The template adds the BOS; plain ``tokenizer(text)`` adds
no special tokens. Version 2's corpus adds its explanation sentences to version 1's, so
version 1's tokenizer is unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from lnpo.data.embedded import v1, v2
from lnpo.data.embedded.responses import (
    CLOSERS,
    OPENERS,
    concise_response,
    verbose_response,
)
from lnpo.data.embedded.task import (
    COUNTS,
    KINDS,
    OOD_TEMPLATES,
    SPECIAL_TOKENS,
    TEMPLATES,
    WORDS,
)

#: version -> the longest rendered prompt + response, in tokens.
MAX_LENGTHS: dict[int, int] = {1: v1.MAX_LENGTH, 2: v2.MAX_LENGTH}

#: Hugging Face chat template (Jinja): <|bos|><|user|>{..}<|assistant|>{..}<|eos|>...
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('unsupported role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def corpus_texts(version: int = 1) -> list[str]:
    """A seed-independent corpus covering every word, phrasing, digit and filler of the task ``version``.

    :func:`materialize` trains the tokenizer on it, so token ids do not depend on the
    data seed (a model trained on one seed's data reads any other seed's).
    """
    texts: list[str] = []
    fill = {"a": "12", "b": "34", "n": "56", "d": "7890"}
    for table in (TEMPLATES, OOD_TEMPLATES):
        for kind in KINDS:
            for template in table[kind]:
                if "{w}" in template:
                    texts.extend(template.format(w=w, k=k, **fill) for w in WORDS for k in COUNTS)
                else:
                    texts.append(template.format(**fill))
    for w in WORDS:
        texts.append(concise_response(" ".join([w] * 4)))
    texts.append(concise_response("0123456789"))
    # Sentences of a response appear both first and after a space ("Let" and " Let").
    texts.extend(OPENERS + CLOSERS)
    texts.append(verbose_response("0", OPENERS + CLOSERS))
    if version >= 2:
        texts.extend(v2.corpus_texts())
    return texts


def build_tokenizer(texts: Iterable[str], *, max_length: int = v1.MAX_LENGTH):
    """Train the task's tokenizer on ``texts``; deterministic for the same texts.

    A byte-level BPE (``tokenizers``) with digits pre-split into single characters,
    the full byte alphabet (so any text round-trips), merges until every word of
    ``texts`` is one token, the special tokens of :data:`SPECIAL_TOKENS` (``<|pad|>``
    is id 0) and :data:`CHAT_TEMPLATE`. Returns a
    ``transformers.PreTrainedTokenizerFast``.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(texts),
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        pad_token=SPECIAL_TOKENS["pad"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=max_length,
        padding_side="right",
    )


def _train_bpe(texts: Iterable[str]):
    """The ``tokenizers.Tokenizer`` behind :func:`build_tokenizer` (no transformers import)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4096,  # an upper bound: training stops once every word is one token
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return tok


def save_tokenizer(tokenizer, directory: str) -> None:
    # The chat template goes into tokenizer_config.json (read by every transformers
    # version) and the class is named PreTrainedTokenizerFast, a name that both
    # transformers 4.x and 5.x resolve.
    tokenizer.save_pretrained(directory, save_jinja_files=False)
    config_path = os.path.join(directory, "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = CHAT_TEMPLATE
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


