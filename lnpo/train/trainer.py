"""Build everything a stage needs (mesh, model, data, reference, optimizer, jitted step) and fit.

``train_stage(config, workdir, init_path=...)`` trains the stage named by
``config.stage`` ("sft", "po" or "rm") and exports the result to
``workdir/export`` in Hugging Face format. The jitted step is the pure
:func:`lnpo.train.steps.train_step`; this module only wires it up.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lnpo import losses as losses_lib
from lnpo import parallel
from lnpo.config import ConfigError, data_columns, loss_hparams, model_runtime
from lnpo.data.embedded import scorer_spec as embedded_scorer_spec
from lnpo.models import preflight
from lnpo.train import reference_cache, steps
from lnpo.train.flops import device_peak_flops, forward_flops_per_token
from lnpo.train.loop import LoopSpec, fit, real_tokens
from lnpo.train.optim import make_optimizer
from lnpo.train.step_builder import build_train_step
from lnpo.train.steps import BATCH_SPEC


# ----------------------------------------------------------------------------- data
load_tokenizer = preflight.load_tokenizer


def prepare_data(config, tokenizer, *, embedded_paths: dict | None):
    """``(train, eval or None)`` tokenized datasets for ``config.stage``; prints the load reports."""
    from lnpo import data
    from lnpo.data.tokenize import template_for

    stage, d = config.stage, config.data
    tok_kwargs = dict(max_len=d.max_len, max_prompt_len=d.max_prompt_len, truncation=d.truncation,
                      num_proc=d.num_proc if d.num_proc > 1 else None, strict=d.strict,
                      plain_template=template_for(tokenizer, d.chat_template))
    columns = data_columns(config)
    if stage == "sft":
        source = embedded_paths["sft"] if d.source == "embedded" else d.source
        raw, report = data.load_sft(source, schema=d.schema, split=d.split, strict=d.strict, **columns)
        tokenized, tok_report = data.tokenize_sft(raw, tokenizer, source=str(source), **tok_kwargs)
        _print_reports(report, tok_report)
        return tokenized, None
    if stage == "po" and "label" in losses_lib.needs(config.loss.name):  # KTO: unpaired data, as pairs
        return _prepare_unpaired(config, tokenizer, embedded_paths, tok_kwargs)
    source = embedded_paths["train_prefs"] if d.source == "embedded" else d.source
    raw, report = data.load_preferences(source, schema=d.schema, split=d.split, strict=d.strict,
                                        pku_preference=d.pku_preference, **columns)
    tokenized, tok_report = data.tokenize_preferences(raw, tokenizer, source=str(source), **tok_kwargs)
    _print_reports(report, tok_report)
    eval_tokenized = None
    eval_source = d.eval_source or (embedded_paths["eval_prefs"] if d.source == "embedded" else "")
    if eval_source and config.train.eval_batches > 0:
        raw_eval, eval_report = data.load_preferences(eval_source, schema=d.schema, split=d.eval_split,
                                                      strict=d.strict, pku_preference=d.pku_preference, **columns)
        eval_tokenized, eval_tok_report = data.tokenize_preferences(raw_eval, tokenizer, source=str(eval_source),
                                                                    **tok_kwargs)
        _print_reports(eval_report, eval_tok_report)
    return tokenized, eval_tokenized


def _prepare_unpaired(config, tokenizer, embedded_paths, tok_kwargs):
    """``(train, eval or None)`` for an objective on unpaired data: ``data.schema == "unpaired"`` reads
    prompt / completion / label rows, any other schema reads preference pairs and unpairs them."""
    from lnpo import data
    from lnpo.data import unpaired

    d = config.data

    def one(source, split):
        if d.schema == "unpaired":
            rows, report = unpaired.load_unpaired(source, split=split, strict=d.strict, **data_columns(config))
        else:
            pairs, report = data.load_preferences(source, schema=d.schema, split=split, strict=d.strict,
                                                  pku_preference=d.pku_preference, **data_columns(config))
            rows = unpaired.unpair_preferences(pairs)
        tokens, tok_report = unpaired.tokenize_unpaired(rows, tokenizer, source=str(source), **tok_kwargs)
        _print_reports(report, tok_report)
        return unpaired.kto_pairs(tokens, max_len=d.max_len)

    train = one(embedded_paths["train_prefs"] if d.source == "embedded" else d.source, d.split)
    eval_source = d.eval_source or (embedded_paths["eval_prefs"] if d.source == "embedded" else "")
    evaluation = one(eval_source, d.eval_split) if eval_source and config.train.eval_batches > 0 else None
    return train, evaluation


def _print_reports(loaded, tokenized) -> None:
    if jax.process_index() == 0:
        print(f"lnpo: loaded {loaded.summary()}", flush=True)
        print(f"lnpo: tokenized {tokenized.summary()}", flush=True)


def to_global(local: dict, mesh) -> dict:
    """Assemble host-local ``[A, n_local, ...]`` arrays into global arrays split along axis 1."""
    sharding = NamedSharding(mesh, BATCH_SPEC)
    out = {}
    for key, value in local.items():
        value = np.asarray(value)
        global_shape = (value.shape[0], value.shape[1] * jax.process_count()) + value.shape[2:]
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out


# ----------------------------------------------------------------------------- model
def build_model(config, init_path: str | None, tokenizer, mesh, *, num_labels: int = 0):
    """The policy (or reward model) as an NNX module with parameters placed on ``mesh``."""
    from lnpo.models import ModelConfig, from_pretrained, init_sharded

    runtime = model_runtime(config)
    if init_path is None:
        t = config.model.tiny
        cfg = ModelConfig.tiny(
            vocab_size=len(tokenizer), hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
            num_layers=t.num_layers, num_heads=t.num_heads, num_kv_heads=t.num_kv_heads,
            max_position_embeddings=max(config.data.max_len * 2, 256),
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, num_labels=num_labels, **runtime)
        return init_sharded(cfg, config.seed, mesh)
    load = functools.partial(from_pretrained, init_path, dtype=runtime.pop("param_dtype"),
                             compute_dtype=runtime.pop("compute_dtype"), mesh=mesh, **runtime)
    if not num_labels:
        return load()
    try:
        return load(num_labels=num_labels)
    except ValueError as e:
        if "score" not in str(e):
            raise
    # A reward model started from a causal LM: its decoder weights, a fresh score head.
    lm = load()
    lm_params = dict(nnx.state(lm, nnx.Param).flat_state())
    rm = init_sharded(lm.config.replace(num_labels=num_labels, tie_embeddings=False), config.seed, mesh)
    flat = nnx.state(rm, nnx.Param).flat_state()
    for path, var in flat:
        if path in lm_params:
            var.value = lm_params[path].value
    nnx.update(rm, nnx.State.from_flat_path(flat))
    return rm


# ----------------------------------------------------------------------------- reference
def make_reference_logps_fn(graphdef, mesh, *, num_pairs: int, chunk_size: int, needs: tuple = ()):
    """Jitted ``(params, batch) -> {name: [A, num_pairs]}``: what the cache stores (steps.cached_reference_names)."""

    def fn(params, batch):
        with parallel.use_rules(mesh):
            model = nnx.merge(graphdef, params)
            return jax.lax.map(lambda mb: steps.reference_sums(model, mb, num_pairs=num_pairs, chunk_size=chunk_size,
                                                               needs=needs), batch)

    return jax.jit(fn)


def compute_reference(ref_params, graphdef, dataset, config, mesh, *, batch_pairs: int, needs: tuple = ()):
    """Reference values of every pair of ``dataset`` in dataset order: a tuple of ``[N]`` arrays, one per
    ``steps.cached_reference_names(needs)`` (``chosen``, ``rejected``, ...)."""
    from lnpo.data import EvalIterator

    dp = _data_parallel(mesh)
    iterator = EvalIterator(dataset, global_batch=batch_pairs, layout="padded", seq_len=config.data.max_len,
                            process_index=jax.process_index(), process_count=jax.process_count(),
                            row_multiple=max(dp // jax.process_count(), 1))
    fn = make_reference_logps_fn(graphdef, mesh, num_pairs=batch_pairs, chunk_size=config.train.logprob_chunk,
                                 needs=needs)
    names = steps.cached_reference_names(needs)
    n = len(dataset)
    out = {name: np.zeros(n, np.float32) for name in names}
    for b, local in enumerate(iterator):
        local = {k: v for k, v in local.items() if k != "pair_valid"}
        values = jax.device_get(_replicated(fn(ref_params, to_global(local, mesh)), mesh))
        start = b * batch_pairs
        count = min(batch_pairs, n - start)
        for name in names:
            out[name][start:start + count] = np.asarray(values[name])[0][:count]
    return tuple(out[name] for name in names)


def _replicated(x, mesh):
    return jax.jit(lambda a: a, out_shardings=NamedSharding(mesh, P()))(x)


def row_length(config) -> int:
    """Row length T of the configured layout (``data.seq_len``, or its default)."""
    if config.data.seq_len:
        return config.data.seq_len
    return 2 * config.data.max_len if config.data.layout == "shared_prompt" else config.data.max_len


def _data_parallel(mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


# ----------------------------------------------------------------------------- the stage
def train_stage(config, workdir: str, *, init_path: str | None) -> dict:
    """Train ``config.stage`` in ``workdir`` starting from ``init_path`` (None: a fresh tiny model)."""
    from lnpo.data import PairIterator, SFTIterator

    stage = config.stage
    mesh = parallel.make_mesh(config.mesh.shape)
    embedded_paths = None
    if config.data.source == "embedded" or init_path is None:
        from lnpo.data.embedded import materialize
        from lnpo.train.run import embedded_seed, embedded_task_dir

        embedded_paths = materialize(embedded_task_dir(config, workdir), seed=embedded_seed(config),
                                     version=config.data.embedded_version)
    if init_path is not None:  # the model first: an unusable config.json fails before any data is read
        preflight.model_config(init_path, **model_runtime(config))
    tokenizer_dir = config.data.tokenizer or init_path or embedded_paths["tokenizer"]
    tokenizer = load_tokenizer(tokenizer_dir)
    train_ds, eval_ds = prepare_data(config, tokenizer, embedded_paths=embedded_paths)
    if len(train_ds) < config.train.global_batch:
        raise ConfigError(f"config.train.global_batch: {config.train.global_batch} is larger than the "
                          f"{len(train_ds)} usable training examples")

    model = build_model(config, init_path, tokenizer, mesh, num_labels=1 if stage == "rm" else 0)
    graphdef, params = nnx.split(model, nnx.Param)
    model_cfg = model.config
    del model
    preflight.check_token_ids(tokenizer, model_cfg.vocab_size, [train_ds, eval_ds], tokenizer_dir=tokenizer_dir,
                              model_dir=init_path or "(the tiny model)")

    # objective and reference
    objective, hparams, uses_reference = None, {}, False
    if stage == "po":
        objective = losses_lib.get(config.loss.name)
        hparams = losses_lib.validate(config.loss.name, loss_hparams(config))
        uses_reference = losses_lib.requires_reference(config.loss.name)
    A = config.train.micro_batches
    M = config.train.global_batch // A  # pairs (examples) per micro-batch
    dp = _data_parallel(mesh)
    row_multiple = max(dp // jax.process_count(), 1)
    chunk = config.train.logprob_chunk

    ref_params = ref_graphdef = None
    ref_train = ref_eval = None
    if uses_reference and config.reference.mode == "in_step":
        ref_dtype = jnp.dtype(config.reference.dtype)
        ref_graphdef = graphdef
        ref_params = steps.reference_copy(params, ref_dtype)
    elif uses_reference:
        ref_train, ref_eval = _reference_from_cache(config, workdir, init_path, params, graphdef, mesh,
                                                    train_ds, eval_ds, batch_pairs=M)

    tx, schedule = make_optimizer(config.optim, steps=config.train.steps)
    replicated = NamedSharding(mesh, P())
    sums_fn = steps.micro_sums_fn(stage, objective=objective, num_pairs=M, chunk_size=chunk, seed=config.seed)
    # Step inputs, not compile-time constants: a sweep's grid points share one compiled step.
    step_hparams = jax.device_put(steps.step_hparams(config.optim.lr, hparams), replicated)
    built = build_train_step(params, graphdef, tx, mesh, stage=stage, sums_fn=sums_fn, ref_params=ref_params,
                             ref_graphdef=ref_graphdef)
    state, jitted = built.state, built.jitted
    train_step = lambda s, b: jitted(s, b, ref_params, step_hparams)  # noqa: E731

    iterator_cls = SFTIterator if stage == "sft" else PairIterator
    iterator = iterator_cls(train_ds, global_batch=config.train.global_batch, micro_batches=A,
                            layout=config.data.layout, seq_len=row_length(config), seed=config.seed,
                            process_index=jax.process_index(), process_count=jax.process_count(),
                            row_multiple=row_multiple)

    def batches():
        while True:
            indices = iterator.next_indices()
            local = iterator.build(indices)
            tokens = real_tokens(local)
            if ref_train is not None:
                local.update(_cached_reference_slice(ref_train, indices, A))
            yield to_global(local, mesh), tokens

    evaluate = None
    if eval_ds is not None and stage != "sft":
        evaluate = _make_evaluator(config, eval_ds, graphdef, ref_graphdef, ref_params, ref_eval, mesh,
                                   stage=stage, sums_fn=sums_fn, loss_hparams=step_hparams["loss"], pairs=M,
                                   row_multiple=row_multiple)

    flops_per_token = forward_flops_per_token(model_cfg, row_length(config)) * (3 + (1 if ref_params is not None else 0))
    spec = LoopSpec(
        step_fn=train_step, batches=batches(), iterator_state=iterator.state, restore_iterator=iterator.restore,
        evaluate=evaluate, total_steps=config.train.steps, log_every=config.train.log_every,
        eval_every=config.train.eval_every, checkpoint_every=config.train.checkpoint_every,
        keep_checkpoints=config.train.keep_checkpoints, flops_per_token=flops_per_token,
        peak_flops=device_peak_flops() * jax.device_count(), learning_rate=lambda s: float(schedule(s)),
        items_per_step=config.train.global_batch)
    result = fit(state, spec, workdir=workdir, desc=f"{stage} {config.name}")

    out = {"step": result.step, "preempted": result.preempted, "last_metrics": result.last_metrics}
    if not result.preempted and config.train.export:
        out["export"] = export(config, workdir, nnx.merge(graphdef, result.state.params), tokenizer,
                               init_path=init_path, embedded_paths=embedded_paths)
    return out


def _cached_reference_slice(ref: dict, indices: np.ndarray, A: int) -> dict:
    """This host's ``ref_<name>`` ``[A, L]`` (``ref_chosen``, ``ref_rejected``, ...) for global batch
    ``indices`` (-1 = dummy); ``ref`` maps the cached names to ``[N]`` arrays."""
    h, H = jax.process_index(), jax.process_count()
    own = indices.reshape(A, H, -1)[:, h, :]
    safe = np.where(own >= 0, own, 0)
    return {f"ref_{name}": np.where(own >= 0, values[safe], 0.0).astype(np.float32) for name, values in ref.items()}


def _reference_from_cache(config, workdir, init_path, params, graphdef, mesh, train_ds, eval_ds, *, batch_pairs):
    from lnpo.train.run import reference_cache_dir, runs_root

    cache_dir = reference_cache_dir(config)
    weights = reference_cache.weights_fingerprint(init_path, runs_root(config))
    needs = losses_lib.needs(config.loss.name)
    names = steps.cached_reference_names(needs)
    numerics = {"dtype": config.model.compute_dtype, "seq_len": config.data.max_len,
                "chunk": config.train.logprob_chunk, "version": 1}
    if names[2:]:  # more than the sums: the key says so (a sums-only key, and its file, stay as they were)
        numerics["stored"] = list(names)
    results = []
    for dataset in (train_ds, eval_ds):
        if dataset is None:
            results.append(None)
            continue
        key = reference_cache.cache_key(weights=weights, data=dataset._fingerprint, numerics=numerics)
        *arrays, computed = reference_cache.load_or_compute(
            cache_dir, key, len(dataset),
            lambda d=dataset: compute_reference(params, graphdef, d, config, mesh, batch_pairs=batch_pairs,
                                                needs=needs),
            is_writer=jax.process_index() == 0, names=names)
        if jax.process_index() == 0:
            verb = "computed" if computed else "reused"
            print(f"lnpo: reference log-probs {verb}: {reference_cache.cache_path(cache_dir, key)}", flush=True)
        results.append(dict(zip(names, arrays)))
    return results[0], results[1]


def _make_evaluator(config, eval_ds, graphdef, ref_graphdef, ref_params, ref_eval, mesh, *, stage, sums_fn,
                    loss_hparams, pairs, row_multiple):
    from lnpo.data import EvalIterator

    iterator = EvalIterator(eval_ds, global_batch=pairs, layout=config.data.layout, seq_len=row_length(config),
                            process_index=jax.process_index(), process_count=jax.process_count(),
                            row_multiple=row_multiple, max_batches=config.train.eval_batches)

    def eval_fn(params, batch, ref_params, loss_hparams):
        with parallel.use_rules(mesh):
            return steps.eval_step(params, batch, ref_params, loss_hparams, graphdef=graphdef,
                                   ref_graphdef=ref_graphdef, stage=stage, sums_fn=sums_fn)

    jitted = jax.jit(eval_fn, out_shardings=NamedSharding(mesh, P()))

    def evaluate(state) -> dict:
        totals: dict[str, float] = {}
        for b, local in enumerate(iterator):
            if ref_eval is not None:
                indices = np.arange(b * pairs, (b + 1) * pairs)
                indices[indices >= len(eval_ds)] = -1
                local.update(_cached_reference_slice(ref_eval, indices, 1))
            sums = jax.device_get(jitted(state.params, to_global(local, mesh), ref_params, loss_hparams))
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        count = max(totals.pop("count", 0.0), 1.0)
        return {f"eval/{k}": v / count for k, v in totals.items()}

    return evaluate


# ----------------------------------------------------------------------------- export
def export(config, workdir: str, model, tokenizer, *, init_path, embedded_paths) -> str:
    """Write the trained model (HF format) and ``run.json`` (what evaluation and sweeps read)."""
    from lnpo.models import save_pretrained

    path = os.path.join(workdir, "export")
    dtype = config.train.export_dtype or preflight.own_dtype(init_path) or config.model.param_dtype
    save_pretrained(model, path, tokenizer=tokenizer, dtype=dtype)
    if jax.process_index() == 0:
        info = {
            "name": config.name, "stage": config.stage, "method": config.loss.name,
            "loss": loss_hparams(config), "lr": config.optim.lr, "seed": config.seed,
            "steps": config.train.steps, "export": os.path.abspath(path),
            "sft_path": os.path.abspath(init_path) if init_path else None,
            "chat_template": config.data.chat_template,
            "eval_prompts": config.data.ood_prompts or (embedded_paths or {}).get("ood_prompts", ""),
            "scorer": config.eval.scorer or (embedded_scorer_spec(config.data.embedded_version)
                                              if config.data.source == "embedded" else ""),
            "eval": {k: config.eval[k] for k in ("max_new_tokens", "temperature", "top_p", "top_k", "num_samples",
                                                  "batch_size", "seed")}
            | {"max_prompts": config.eval.max_prompts or None, "max_prompt_len": config.data.max_prompt_len},
            "status": "trained",
        }
        with open(os.path.join(workdir, "run.json"), "w") as f:
            json.dump(info, f, indent=2)
    return path
