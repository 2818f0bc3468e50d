"""lnpo.implied: what a run config implies, shared by the trainer, the config check and the planner;
and the one SFT recipe (configs/sft.py) that the embedded SFT stage uses."""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs.base import get_base  # noqa: E402
from configs.lndpo import get_config  # noqa: E402
from lnpo import implied  # noqa: E402


def test_row_length_is_seq_len_else_max_len_doubled_for_shared_prompt():
    c = get_config()
    c.data.max_len = 48
    assert implied.row_length(c) == 48
    c.data.layout = "shared_prompt"
    assert implied.row_length(c) == 96
    c.data.seq_len = 128
    assert implied.row_length(c) == 128


def test_reference_mode_is_none_without_a_reference_reading_objective():
    c = get_config()
    assert implied.reference_mode(c) == "cache"
    c.reference.mode = "in_step"
    assert implied.reference_mode(c) == "in_step"
    c.loss.name = "simpo"  # reference-free
    assert implied.reference_mode(c) == "none"
    c.loss.name, c.stage = "dpo", "sft"
    assert implied.reference_mode(c) == "none"


def test_data_parallel_is_data_times_fsdp():
    assert implied.data_parallel({"data": 2, "fsdp": 4, "tensor": 8, "context": 1}) == 8


def test_tiny_model_config_takes_its_sizes_and_runtime_from_the_config():
    c = get_config()
    c.model.tiny.hidden_size, c.model.tiny.num_layers = 64, 3
    c.model.compute_dtype, c.model.remat = "bfloat16", "full"
    c.data.max_len = 300
    cfg = implied.tiny_model_config(c, vocab_size=77, eos_token_id=5, num_labels=1)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.intermediate_size) == (77, 64, 3, 384)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.tie_embeddings, cfg.model_type) == (4, 2, True, "llama")
    assert (cfg.compute_dtype, cfg.remat, cfg.max_position_embeddings) == ("bfloat16", "full", 600)
    assert (cfg.eos_token_id, cfg.num_labels) == (5, 1)
    planned = implied.model_config(c)  # the planner's: the embedded vocabulary's upper bound
    assert planned == implied.tiny_model_config(c, vocab_size=implied.EMBEDDED_VOCAB)
    c.stage = "rm"
    assert (implied.model_config(c).num_labels, implied.model_config(c).tie_embeddings) == (1, False)


def test_the_embedded_sft_stage_is_the_configs_sft_recipe():
    from configs.sft import get_config as sft_get_config
    from lnpo.train.run import sft_config_for

    assert sft_config_for(get_base()).to_dict() == sft_get_config().to_dict()  # one recipe
    c = get_config()
    c.model.tiny.hidden_size, c.sft.steps, c.sft.lr, c.seed = 64, 7, 0.5, 3
    c.data.layout, c.train.micro_batches = "shared_prompt", 4
    sft = sft_config_for(c)
    assert (sft.stage, sft.name, sft.loss.to_dict()) == ("sft", "sft", {"name": "nll"})
    assert (sft.train.steps, sft.optim.lr, sft.train.global_batch, sft.train.micro_batches) == (7, 0.5, 64, 1)
    assert (sft.data.layout, sft.eval.enabled, sft.optim.schedule) == ("packed", False, "cosine")
    assert (sft.model.tiny.hidden_size, sft.seed) == (64, 3)  # the run's own model and seed
    assert c.stage == "po" and c.train.steps == 100  # the run config itself is untouched
