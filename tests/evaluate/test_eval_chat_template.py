"""Evaluation renders prompts exactly as training did: one setting (data.chat_template), one rule."""

from __future__ import annotations

import json

import datasets
import pytest

from lnpo.data import tokenize_preferences, validate_preferences
from lnpo.data.tokenize import PlainTemplate, template_for
from lnpo.errors import ConfigError
from lnpo.evaluate import evaluate as evaluate_module
from lnpo.evaluate.generate import render_prompt_ids

PROMPTS = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3 + 4?"}],
           [{"role": "user", "content": "Write apple two times."}]]


@pytest.fixture(scope="module")
def base_tokenizer(task):
    """The embedded task's tokenizer without its chat template (as a base model's)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(task["tokenizer"])
    tok.chat_template = None
    return tok


def _training_prompt_ids(tokenizer, setting):
    rows = validate_preferences(datasets.Dataset.from_list(
        [{"prompt": p, "chosen": [{"role": "assistant", "content": "a"}],
          "rejected": [{"role": "assistant", "content": "b"}]} for p in PROMPTS]))[0]
    out, _ = tokenize_preferences(rows, tokenizer, max_len=256, max_prompt_len=200,
                                  plain_template=template_for(tokenizer, setting))
    return out["prompt_ids"][:]


@pytest.mark.parametrize("setting", ["plain", "Q: {content}\nA: "])
def test_evaluation_renders_prompts_like_training_for_the_same_setting(base_tokenizer, setting):
    assert render_prompt_ids(base_tokenizer, PROMPTS, plain_template=setting) == \
        _training_prompt_ids(base_tokenizer, setting)


def test_tokenizer_without_chat_template_is_the_same_error_in_training_and_evaluation(base_tokenizer):
    with pytest.raises(ConfigError, match=r"^config\.data\.chat_template: the tokenizer .* has no chat template"):
        _training_prompt_ids(base_tokenizer, "")
    with pytest.raises(ConfigError, match=r"^config\.data\.chat_template: the tokenizer .* has no chat template"):
        render_prompt_ids(base_tokenizer, PROMPTS)  # no silent default
    assert template_for(base_tokenizer, "plain") == PlainTemplate()


def test_evaluate_workdir_uses_the_runs_chat_template(tmp_path, monkeypatch):
    (tmp_path / "run.json").write_text(json.dumps({"export": str(tmp_path / "export"), "sft_path": None,
                                                   "eval_prompts": "p.jsonl", "scorer": "",
                                                   "chat_template": "plain"}))
    seen = {}
    monkeypatch.setattr(evaluate_module, "evaluate_run", lambda *a, **k: seen.update(k) or {})
    evaluate_module.evaluate_workdir(str(tmp_path))
    assert seen["plain_template"] == "plain"


def test_evaluate_workdir_refuses_a_reward_model_run_in_one_line(tmp_path):
    from lnpo.errors import ConfigError

    (tmp_path / "run.json").write_text(json.dumps({"stage": "rm", "export": str(tmp_path / "export"),
                                                   "eval_prompts": "p.jsonl"}))
    with pytest.raises(ConfigError, match=r"run\.json: a 'rm' run exports a reward model, not a policy"):
        evaluate_module.evaluate_workdir(str(tmp_path))
