"""The trainer on one device: logging, reference modes, gradient accumulation, failure handling, export."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from train_helpers import losses_of, small_config

from lnpo.models import preflight
from lnpo.train import trainer
from lnpo.train.loop import NonFiniteLoss
from lnpo.train.run import run

TRL_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
               "logps/rejected")


def test_po_run_logs_every_metric_checkpoints_and_exports(tmp_path, tiny_sft_dir, task_files):
    workdir = str(tmp_path / "run")
    config = small_config(tiny_sft_dir, task_files, **{"train.eval_every": 2})
    summary = run(config, workdir)
    assert summary["steps"] == 4 and not summary["preempted"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        for key in ("loss", "grad_norm", "learning_rate", *TRL_METRICS):
            assert key in row and math.isfinite(row[key]), key
    # LN-DPO at policy == reference is exactly log 2 (the policy starts as the reference).
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert rows[-1]["loss"] < math.log(2)
    assert all("tokens_per_s" in r and "mfu" in r and "step_time_s" in r for r in rows[1:])
    assert "eval/loss" in rows[1] and "eval/rewards/accuracies" in rows[1]
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())[-1] == 4
    info = json.load(open(os.path.join(workdir, "run.json")))
    assert info["method"] == "ln_dpo" and info["loss"] == {"beta": 1.0}

    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(summary["export"])
    ids = torch.tensor([[1, 5, 7, 9]])
    assert torch.isfinite(hf(ids).logits).all()


def test_cached_reference_equals_in_step_reference_and_is_reused(tmp_path, tiny_sft_dir, task_files, monkeypatch):
    cache_dir = str(tmp_path / "cache")
    cached = small_config(tiny_sft_dir, task_files, **{"reference.mode": "cache", "reference.cache_dir": cache_dir})
    in_step = small_config(tiny_sft_dir, task_files, **{"reference.mode": "in_step"})
    run(cached, str(tmp_path / "cached"))
    run(in_step, str(tmp_path / "in_step"))
    a, b = losses_of(str(tmp_path / "cached")), losses_of(str(tmp_path / "in_step"))
    assert a.keys() == b.keys()
    np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], rtol=1e-5, atol=1e-6)
    files = sorted(os.listdir(cache_dir))
    assert len(files) == 2  # training and held-out pairs

    def no_recompute(*args, **kwargs):
        raise AssertionError("the reference cache was recomputed")

    monkeypatch.setattr(trainer, "compute_reference", no_recompute)
    run(cached, str(tmp_path / "cached_again"))
    assert sorted(os.listdir(cache_dir)) == files
    np.testing.assert_array_equal(list(losses_of(str(tmp_path / "cached_again")).values()), list(a.values()))


def test_gradient_accumulation_equals_one_large_batch(tmp_path, tiny_sft_dir, task_files):
    one = small_config(tiny_sft_dir, task_files, **{"train.micro_batches": 1, "reference.mode": "in_step"})
    two = small_config(tiny_sft_dir, task_files, **{"train.micro_batches": 2, "reference.mode": "in_step"})
    run(one, str(tmp_path / "one"))
    run(two, str(tmp_path / "two"))
    a, b = losses_of(str(tmp_path / "one")), losses_of(str(tmp_path / "two"))
    np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(a)], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["packed", "shared_prompt"])
def test_layouts_train_like_the_padded_layout(tmp_path, tiny_sft_dir, task_files, layout):
    padded = small_config(tiny_sft_dir, task_files, **{"train.steps": 2})
    other = small_config(tiny_sft_dir, task_files, **{"train.steps": 2, "data.layout": layout, "data.seq_len": 128})
    run(padded, str(tmp_path / "padded"))
    run(other, str(tmp_path / layout))
    a, b = losses_of(str(tmp_path / "padded")), losses_of(str(tmp_path / layout))
    np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(a)], rtol=1e-4, atol=1e-5)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_sft_dir, task_files):
    config = small_config(tiny_sft_dir, task_files, **{"optim.lr": 1e30, "optim.clip_norm": 0.0,
                                                       "train.checkpoint_every": 1, "train.steps": 6})
    workdir = str(tmp_path / "nan")
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss or gradient at step \d+.*last good checkpoint"):
        run(config, workdir)
    from lnpo.train.checkpoint import Checkpointer

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    saved = ckpt.all_steps()
    ckpt.close()
    assert saved and max(saved) < 6
    assert all(math.isfinite(v) for v in losses_of(workdir).values())


def test_sft_stage_learns(tmp_path, tiny_sft_dir, task_files):
    config = small_config(tiny_sft_dir, task_files, **{"stage": "sft", "loss.name": "nll", "data.source":
                                                       task_files["sft"], "optim.lr": 3e-3, "train.steps": 8})
    del config.loss.beta
    workdir = str(tmp_path / "sft")
    run(config, workdir)
    losses = losses_of(workdir)
    assert losses[8] < losses[1]


def test_reward_model_stage_exports_a_sequence_classifier(tmp_path, tiny_sft_dir, task_files):
    config = small_config(tiny_sft_dir, task_files, **{"stage": "rm", "loss.name": "bradley_terry",
                                                       "optim.lr": 3e-3, "train.steps": 6})
    del config.loss.beta
    workdir = str(tmp_path / "rm")
    summary = run(config, workdir)
    losses = losses_of(workdir)
    assert losses[1] == pytest.approx(math.log(2), abs=0.2)
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(summary["export"])
    assert hf.config.architectures == ["LlamaForSequenceClassification"] and hf.config.num_labels == 1


def test_malformed_rows_are_counted_or_strictly_rejected(tmp_path, tiny_sft_dir, task_files, capsys):
    rows = [json.loads(line) for line in open(task_files["train_prefs"])]
    rows[3]["rejected"] = rows[3]["chosen"]  # identical responses
    del rows[5]["chosen"]  # missing field
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = small_config(tiny_sft_dir, task_files, **{"data.source": str(path), "train.steps": 1})
    run(config, str(tmp_path / "lenient"))
    out = capsys.readouterr().out
    assert "kept 62 of 64 rows; skipped 2 (identical_responses=1, missing_field=1)" in out
    config.data.strict = True
    with pytest.raises(ValueError, match=r"prefs\.jsonl line 4: .*identical"):
        run(config, str(tmp_path / "strict"))


@pytest.mark.parametrize("changes, rtol", [({"model.remat": "full"}, 1e-5), ({"model.remat": "dots"}, 1e-5),
                                           ({"model.compute_dtype": "bfloat16"}, 2e-2),
                                           ({"model.attn_query_chunk": 16}, 1e-5)])
def test_remat_and_mixed_precision_train_like_the_default(tmp_path, tiny_sft_dir, task_files, changes, rtol):
    base = small_config(tiny_sft_dir, task_files, **{"train.steps": 2, "reference.mode": "in_step"})
    other = small_config(tiny_sft_dir, task_files, **{"train.steps": 2, "reference.mode": "in_step", **changes})
    run(base, str(tmp_path / "base"))
    run(other, str(tmp_path / "other"))
    a, b = losses_of(str(tmp_path / "base")), losses_of(str(tmp_path / "other"))
    np.testing.assert_allclose([b[k] for k in sorted(a)], [a[k] for k in sorted(a)], rtol=rtol)


def test_model_settings_reach_the_model(tiny_sft_dir, task_files):
    from lnpo import parallel

    config = small_config(tiny_sft_dir, task_files, **{"model.attn_query_chunk": 16, "model.remat": "full"})
    tokenizer, mesh = preflight.load_tokenizer(tiny_sft_dir), parallel.make_mesh((1, 1, 1))
    model = trainer.build_model(config, tiny_sft_dir, tokenizer, mesh, num_labels=0)
    assert (model.config.attn_query_chunk, model.config.remat) == (16, "full")


def test_a_half_written_checkpoint_is_ignored_on_resume(tmp_path, tiny_sft_dir, task_files):
    workdir = str(tmp_path / "run")
    config = small_config(tiny_sft_dir, task_files, **{"train.steps": 2, "optim.schedule": "constant"})
    run(config, workdir)
    partial = os.path.join(workdir, "checkpoints", "3.orbax-checkpoint-tmp-1234")
    os.makedirs(os.path.join(partial, "state"))
    open(os.path.join(partial, "state", "garbage"), "w").write("half written")
    config.train.steps = 4
    summary = run(config, workdir)
    assert summary["steps"] == 4
    assert sorted(losses_of(workdir)) == [1, 2, 3, 4]
