"""Shared base config: every method file starts from ``get_base()``.

Run with ``python -m lnpo.main --config=configs/lndpo.py`` and override any
field from the command line, e.g. ``--config.loss.beta=0.05``.
"""

import ml_collections

from lnpo.eval_settings import EvalSettings


def get_base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "base"
    c.stage = "po"  # "sft" | "po" | "rm"
    c.seed = 0
    # What runs share (the embedded task and SFT model, the reference cache) lives here; the
    # default workdir is <runs_root>/<name>. Relative paths are relative to the current directory.
    c.runs_root = "runs"

    # The policy's starting point. path="" means the embedded tiny model: an SFT
    # model is trained on the embedded task first (cached under runs/) and used as
    # the policy and the reference.
    c.model = ml_collections.ConfigDict()
    c.model.path = ""  # a local Hugging Face directory (config.json + safetensors)
    c.model.param_dtype = "float32"  # master weights
    c.model.compute_dtype = "float32"  # "bfloat16" for mixed precision
    c.model.remat = "none"  # "none" | "full" | "dots" (lnpo.models.config.REMAT_POLICIES lists the rest)
    # > 0: attention over this many query positions at a time (recomputed in the backward
    # pass): less activation memory, a slower step (docs/performance.md). 0 = all at once.
    c.model.attn_query_chunk = 0
    # Attention kernel of the training forward pass: "xla" (lnpo's einsum, any backend) or
    # "cudnn" (cuDNN flash attention on NVIDIA GPUs; needs compute_dtype "bfloat16").
    c.model.attn_implementation = "xla"
    # Architecture of the embedded tiny model (used only when path == "").
    c.model.tiny = ml_collections.ConfigDict()
    c.model.tiny.hidden_size = 128
    c.model.tiny.intermediate_size = 384
    c.model.tiny.num_layers = 4
    c.model.tiny.num_heads = 4
    c.model.tiny.num_kv_heads = 2

    # LoRA (lnpo.models.lora, docs/lora.md): rank > 0 trains adapters on the frozen base (stages sft, po).
    c.model.lora = ml_collections.ConfigDict()
    c.model.lora.rank = 0  # 0 = full fine-tuning
    c.model.lora.alpha = 16.0  # scale alpha / rank (rslora: alpha / sqrt(rank)), as PEFT
    c.model.lora.dropout = 0.0  # on the adapters' input, as PEFT's lora_dropout
    c.model.lora.targets = "all-linear"  # or PEFT module names, e.g. "q_proj,v_proj"
    c.model.lora.rslora = False
    c.model.lora.base_dtype = "float32"  # the frozen base: "float32" | "bfloat16" | "int8" (per-channel scales)
    c.model.lora.init_from = ""  # a PEFT adapter directory to continue training

    # Reference log-probs: "cache" (one pass over the training set before
    # training, reused by every run with the same fingerprint) or "in_step"
    # (frozen reference parameters evaluated inside the train step) or, with LoRA, "base" (the
    # frozen base with the adapters off, inside the step: no copy, no cache).
    c.reference = ml_collections.ConfigDict()
    c.reference.mode = "cache"
    c.reference.dtype = "float32"  # in_step reference weights may be held in bfloat16
    c.reference.cache_dir = ""  # default: <runs root>/reference_cache

    c.data = ml_collections.ConfigDict()
    c.data.source = "embedded"  # "embedded", a local file/directory, or a hub name
    # The embedded task's version (docs/embedded_task.md): 2 = noisy SFT data, pairs that prefer correct and
    # longer answers, explanations of 5-176 tokens (the default job's and the study's sweep's); 1 = the first
    # task's short answers, kept for the record (with --config.data.max_len=64 --config.eval.max_new_tokens=48).
    c.data.embedded_version = 2
    c.data.embedded_seed = -1  # seed of the embedded task's data and SFT model; -1 = config.seed
    c.data.schema = "auto"
    c.data.split = "train"
    c.data.eval_source = ""  # held-out preference data; "" = the embedded task's
    c.data.eval_split = "train"
    c.data.ood_prompts = ""  # evaluation prompts (a preference file whose chosen is the reference); "" = embedded
    # Column mapping: the source column that holds each canonical input column, e.g.
    # --config.data.columns.prompt=question --config.data.columns.rejected=answer_b; "" = the
    # column of that name (lnpo.data.sources lists the schemas and their columns).
    c.data.columns = ml_collections.ConfigDict()
    for column in ("prompt", "chosen", "rejected", "system", "completion", "messages", "response_0", "response_1",
                   "better_response_id", "safer_response_id", "score_chosen", "score_rejected"):
        c.data.columns[column] = ""
    c.data.pku_preference = "better"  # PKU-SafeRLHF label: "better" (better_response_id) or "safer" (safer_response_id)
    c.data.max_prompt_len = 32
    c.data.max_len = 192  # prompt + one response, in tokens (the embedded task v2 needs 192, v1 64)
    c.data.truncation = "keep_end"  # "keep_end" | "drop"
    c.data.layout = "packed"  # "padded" | "packed" | "shared_prompt" (packed: no compute on padding)
    # Row length of a batch; 0 = max_len (padded, packed) or 2 * max_len (shared_prompt,
    # which holds the prompt and both responses in one row).
    c.data.seq_len = 0
    c.data.num_proc = 1
    c.data.strict = False  # True: a malformed row is an error naming the row, not a counted skip
    c.data.tokenizer = ""  # default: the model directory's tokenizer
    # How conversations become tokens, in training and in evaluation alike: "" = the tokenizer's
    # chat template (an error if it has none); "plain" = lnpo's plain-text template
    # ("User: {content}\nAssistant: ", for base models); or a user-turn format of your own that
    # contains "{content}" (lnpo.data.tokenize.PlainTemplate).
    c.data.chat_template = ""

    # The objective, picked by name from lnpo.losses; its other fields are the
    # objective's hyperparameters.
    c.loss = ml_collections.ConfigDict()
    c.loss.name = "ln_dpo"

    c.optim = ml_collections.ConfigDict()
    # Sized for the embedded tiny model (at 3e-5 it hardly moves in 100 steps: docs/study_embedded);
    # multi-billion-parameter models want ~5e-7.
    c.optim.lr = 1e-4
    c.optim.schedule = "cosine"  # "cosine" | "linear" | "constant"
    c.optim.warmup_steps = 10
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.clip_norm = 1.0

    c.train = ml_collections.ConfigDict()
    c.train.steps = 100
    c.train.global_batch = 32  # pairs (po, rm) or examples (sft) per optimizer step
    c.train.micro_batches = 1  # gradient accumulation
    c.train.logprob_chunk = 256  # sequence chunk of the chunked log-softmax
    c.train.log_every = 10
    c.train.eval_every = 50
    c.train.eval_batches = 4
    c.train.checkpoint_every = 50
    c.train.keep_checkpoints = 2
    c.train.export = True
    c.train.export_merged = True  # LoRA: also export the merged model (export/; the adapter is in adapter/)
    c.train.export_dtype = ""  # "" = the starting model's own dtype (config.json); "float32" | "bfloat16" | "float16"

    # The device mesh by named axes; -1 = the rest of the devices (at most one axis). Or the tuple
    # form instead (not both), mesh.shape = (data, fsdp, tensor[, context]).
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data parallelism (whole batch shards)
    c.mesh.fsdp = 1  # data parallelism with parameters, gradients and optimizer state sharded
    c.mesh.tensor = 1  # heads, MLP and vocabulary split
    c.mesh.context = 1  # each row's positions split (einsum or splash attention)
    c.mesh.shape = ()

    # Multi-process jobs (lnpo.train.distributed): bounded waits, so a dead worker stops the job.
    c.distributed = ml_collections.ConfigDict()
    c.distributed.initialization_timeout_s = 300  # every process must connect within this
    c.distributed.heartbeat_timeout_s = 100  # a process silent this long is declared dead

    # The SFT stage that makes the starting model when model.path == "".
    c.sft = ml_collections.ConfigDict()
    c.sft.steps = 1000
    c.sft.lr = 3e-3
    c.sft.global_batch = 64
    c.sft.warmup_steps = 20

    # Evaluation of the exported policy after *PO training (lnpo.evaluate): samples
    # on the out-of-distribution prompts, scored, compared with the SFT model.
    c.eval = ml_collections.ConfigDict()
    c.eval.enabled = True
    c.eval.scorer = ""  # "" = the embedded task's scorer; "jax:/rm-dir" or "torch:/rm-dir"
    # Sampling and batching: max_new_tokens, temperature, top_p, top_k, num_samples, max_prompts (0 = every
    # prompt), batch_size, seed, with lnpo.eval_settings.EvalSettings's defaults (the only ones).
    c.eval.update(EvalSettings.config_defaults())
    return c
