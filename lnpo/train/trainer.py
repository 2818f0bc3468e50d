"""Build everything a stage needs (mesh, model, data, reference, optimizer, jitted step) and fit.

``train_stage(config, workdir, init_path=..., paths=...)`` trains the stage named by
``config.stage`` (an entry of :data:`lnpo.train.stages.STAGES`) from ``init_path`` and
exports the result to the workdir's export directory (:mod:`lnpo.rundir`) in Hugging Face
format, with ``run.json``. :mod:`lnpo.train.run` resolves the starting model and every
path; this module never reads them from elsewhere. The jitted step is the pure
:func:`lnpo.train.steps.train_step`, built by :func:`lnpo.train.step_builder.build_stage_step`.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lnpo import losses as losses_lib
from lnpo import parallel, rundir
from lnpo.config import ConfigError, data_columns, loss_hparams
from lnpo.data.embedded import scorer_spec as embedded_scorer_spec
from lnpo.eval_settings import EvalSettings
from lnpo.implied import data_parallel, model_runtime, reference_mode, row_length, tiny_model_config
from lnpo.models import lora as lora_lib
from lnpo.models import preflight
from lnpo.train import reference_cache, stages, steps
from lnpo.train.flops import device_peak_flops, forward_flops_per_token
from lnpo.train.loop import LoopSpec, fit, real_tokens
from lnpo.train.step_builder import build_stage_step
from lnpo.train.steps import BATCH_SPEC

# ----------------------------------------------------------------------------- data


def prepare_data(config, tokenizer, *, embedded_paths: dict | None):
    """``(train, eval or None)`` tokenized datasets for ``config.stage``; prints the load reports."""
    from lnpo import data
    from lnpo.data.tokenize import template_for

    stage, d = stages.get(config.stage), config.data
    tok_kwargs = dict(max_len=d.max_len, max_prompt_len=d.max_prompt_len, truncation=d.truncation,
                      num_proc=d.num_proc if d.num_proc > 1 else None, strict=d.strict,
                      plain_template=template_for(tokenizer, d.chat_template))
    columns = data_columns(config)
    if stage.examples == "sft":
        source = embedded_paths["sft"] if d.source == "embedded" else d.source
        raw, report = data.load_sft(source, schema=d.schema, split=d.split, strict=d.strict, **columns)
        tokenized, tok_report = data.tokenize_sft(raw, tokenizer, source=str(source), **tok_kwargs)
        _print_reports(report, tok_report)
        return tokenized, None
    if stage.objective and "label" in losses_lib.needs(config.loss.name):  # KTO: unpaired data, as pairs
        return _prepare_unpaired(config, tokenizer, embedded_paths, tok_kwargs)
    source = embedded_paths["train_prefs"] if d.source == "embedded" else d.source
    raw, report = data.load_preferences(source, schema=d.schema, split=d.split, strict=d.strict,
                                        pku_preference=d.pku_preference, **columns)
    tokenized, tok_report = data.tokenize_preferences(raw, tokenizer, source=str(source), **tok_kwargs)
    _print_reports(report, tok_report)
    eval_tokenized = None
    eval_source = d.eval_source or (embedded_paths["eval_prefs"] if d.source == "embedded" else "")
    if eval_source and config.train.eval_batches > 0 and stage.held_out_loss:
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


def to_global(local: dict, mesh, groups: int) -> dict:
    """Assemble host-local ``[A, n_local, ...]`` arrays into global arrays split along axis 1: each of
    the mesh's ``groups`` batch groups (:func:`lnpo.parallel.batch_group`; one per process unless a
    tensor or context axis spans processes) holds ``n_local`` of the global rows."""
    sharding = NamedSharding(mesh, BATCH_SPEC)
    out = {}
    for key, value in local.items():
        value = np.asarray(value)
        global_shape = (value.shape[0], value.shape[1] * groups) + value.shape[2:]
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out


# ----------------------------------------------------------------------------- model
def build_model(config, init_path: str | None, tokenizer, mesh, *, num_labels: int = 0):
    """The policy (or reward model) as an NNX module with parameters placed on ``mesh``; with LoRA
    (``config.model.lora.rank`` > 0) the base in ``lora.base_dtype`` with adapters (:func:`add_lora`)."""
    spec = lora_lib.spec_from_config(config.model.lora) if not num_labels else None
    model = _build_base(config, init_path, tokenizer, mesh, num_labels=num_labels, lora_spec=spec)
    if spec is not None:
        add_lora(model, spec, config, mesh)
    return model


def add_lora(model, spec, config, mesh) -> None:
    """Adapters (PEFT init from ``config.seed``, or ``model.lora.init_from``'s) on ``model``; an int8 base is
    quantized after the adapters exist."""
    from lnpo.models import peft_io

    lora_lib.add_adapters(model, spec, jax.random.fold_in(jax.random.key(config.seed), 0x10AA), mesh=mesh)
    if config.model.lora.init_from:
        found = peft_io.read_spec(config.model.lora.init_from)
        for field in ("rank", "alpha", "targets", "rslora"):
            if getattr(found, field) != getattr(spec, field):
                raise ConfigError(f"config.model.lora.{field}: {getattr(spec, field)!r} differs from the adapter "
                                  f"config.model.lora.init_from={config.model.lora.init_from!r} "
                                  f"({getattr(found, field)!r})")
        peft_io.load_adapter(model, config.model.lora.init_from)
    if config.model.lora.base_dtype == "int8":
        lora_lib.quantize_base(model)


def _build_base(config, init_path: str | None, tokenizer, mesh, *, num_labels: int = 0, lora_spec=None):
    from lnpo.models import from_pretrained, init_sharded

    runtime = model_runtime(config)
    if lora_spec is not None:  # the frozen base's storage dtype (int8: bfloat16, quantized after)
        runtime["param_dtype"] = {"int8": "bfloat16"}.get(config.model.lora.base_dtype, config.model.lora.base_dtype)
    if init_path is None:
        cfg = tiny_model_config(config, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                num_labels=num_labels)
        cfg = cfg.replace(param_dtype=runtime["param_dtype"])  # LoRA: the base's dtype
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

    group, groups = parallel.process_batch_group(mesh)
    iterator = EvalIterator(dataset, global_batch=batch_pairs, layout="padded", seq_len=config.data.max_len,
                            process_index=group, process_count=groups, row_multiple=_row_multiple(mesh))
    fn = make_reference_logps_fn(graphdef, mesh, num_pairs=batch_pairs, chunk_size=config.train.logprob_chunk,
                                 needs=needs)
    names = steps.cached_reference_names(needs)
    n = len(dataset)
    out = {name: np.zeros(n, np.float32) for name in names}
    for b, local in enumerate(iterator):
        local = {k: v for k, v in local.items() if k != "example_valid"}
        values = jax.device_get(_replicated(fn(ref_params, to_global(local, mesh, groups)), mesh))
        start = b * batch_pairs
        count = min(batch_pairs, n - start)
        for name in names:
            out[name][start:start + count] = np.asarray(values[name])[0][:count]
    return tuple(out[name] for name in names)


def _replicated(x, mesh):
    return jax.jit(lambda a: a, out_shardings=NamedSharding(mesh, P()))(x)


# ----------------------------------------------------------------------------- the stage
@dataclasses.dataclass
class StageInputs:
    """What a stage reads before its model is built: the tokenizer, the tokenized train and held-out
    datasets (eval None: no held-out loss) and the embedded task's files (None: not used)."""

    tokenizer: object
    tokenizer_dir: str
    train: object
    eval: object
    embedded_paths: dict | None


def load_inputs(config, init_path: str | None, paths: rundir.StagePaths) -> StageInputs:
    """The tokenizer and data of ``config``'s stage; an unusable model config.json fails before any data is read."""
    embedded_paths = None
    if config.data.source == "embedded" or init_path is None:
        from lnpo.data.embedded import materialize

        embedded_paths = materialize(paths.embedded_task, seed=rundir.embedded_seed(config),
                                     version=config.data.get("embedded_version", 1))
    if init_path is not None:
        preflight.model_config(init_path, **model_runtime(config))
    tokenizer_dir = config.data.tokenizer or init_path or embedded_paths["tokenizer"]
    tokenizer = preflight.load_tokenizer(tokenizer_dir)
    train_ds, eval_ds = prepare_data(config, tokenizer, embedded_paths=embedded_paths)
    if len(train_ds) < config.train.global_batch:
        raise ConfigError(f"config.train.global_batch: {config.train.global_batch} is larger than the "
                          f"{len(train_ds)} usable training examples")
    return StageInputs(tokenizer, tokenizer_dir, train_ds, eval_ds, embedded_paths)


def make_stage_step(config, params, graphdef, mesh, *, num_pairs: int, ref_params=None, ref_graphdef=None,
                    frozen=None):
    """The trainer's :func:`~lnpo.train.step_builder.build_stage_step` call for ``config``: its stage,
    objective, optimizer, log-prob chunk and seed (``tests/benchmarks`` lowers it beside the benchmark's)."""
    objective, hparams = None, {}
    if stages.get(config.stage).objective:
        objective = losses_lib.get(config.loss.name)
        hparams = losses_lib.validate(config.loss.name, loss_hparams(config))
    return build_stage_step(params, graphdef, mesh, stage=config.stage, optim=config.optim,
                            total_steps=config.train.steps, learning_rate=config.optim.lr, num_pairs=num_pairs,
                            chunk_size=config.train.logprob_chunk, objective=objective, loss_hparams=hparams,
                            seed=config.seed, ref_params=ref_params, ref_graphdef=ref_graphdef, frozen=frozen,
                            dropout_seed=config.seed if frozen is not None and config.model.lora.dropout > 0
                            else None)


def train_stage(config, workdir: str, *, init_path: str | None, paths: rundir.StagePaths | None = None) -> dict:
    """Train ``config.stage`` in ``workdir`` starting from ``init_path`` (None: a fresh tiny model).

    ``paths``: the embedded task, reference cache and runs root (:mod:`lnpo.train.run` resolves them;
    default: :meth:`lnpo.rundir.StagePaths.for_config`). Returns ``{"step", "preempted", "last_metrics"}``
    and ``"export"`` (the exported model directory) when exported."""
    paths = paths or rundir.StagePaths.for_config(config)
    stage = stages.get(config.stage)
    mesh = parallel.make_mesh(parallel.mesh_shape_of(config.mesh))
    inputs = load_inputs(config, init_path, paths)
    model = build_model(config, init_path, inputs.tokenizer, mesh, num_labels=stage.num_labels)
    if lora_lib.has_adapters(model):  # params: the adapters (what trains); frozen: the base (never donated)
        graphdef, params, frozen = lora_lib.split(model)
    else:
        (graphdef, params), frozen = nnx.split(model, nnx.Param), None
    model_cfg = model.config
    del model
    preflight.check_token_ids(inputs.tokenizer, model_cfg.vocab_size, [inputs.train, inputs.eval],
                              tokenizer_dir=inputs.tokenizer_dir, model_dir=init_path or "(the tiny model)")
    A = config.train.micro_batches
    M = config.train.global_batch // A  # pairs (examples) per micro-batch

    ref_params = ref_graphdef = ref_train = ref_eval = None
    if reference_mode(config) == "base":  # LoRA: the frozen base with the adapters off, no copy
        ref_graphdef = lora_lib.base_graphdef(graphdef, params, frozen)
    elif reference_mode(config) == "in_step":
        ref_graphdef, ref_params = graphdef, steps.reference_copy(params, jnp.dtype(config.reference.dtype))
    elif reference_mode(config) == "cache":
        ref_train, ref_eval = _reference_from_cache(config, paths, init_path, params, graphdef, mesh,
                                                    inputs.train, inputs.eval, batch_pairs=M)
    built = make_stage_step(config, params, graphdef, mesh, num_pairs=M, ref_params=ref_params,
                            ref_graphdef=ref_graphdef, frozen=frozen)
    iterator = _train_iterator(config, stage, inputs.train, mesh)
    held_out = None
    if inputs.eval is not None and stage.held_out_loss:
        held_out = make_held_out_loss(config, inputs.eval, graphdef, ref_graphdef, ref_params, ref_eval, mesh,
                                      sums_fn=built.sums_fn, loss_hparams=built.hparams["loss"], pairs=M,
                                      frozen=frozen)
    flops_per_token = forward_flops_per_token(model_cfg, row_length(config)) * (3 + (ref_graphdef is not None))
    spec = LoopSpec(
        step_fn=lambda s, b: built.jitted(s, b, ref_params, built.hparams),
        batches=_global_batches(iterator, ref_train, A, mesh), iterator_state=iterator.state,
        restore_iterator=iterator.restore, held_out_loss=held_out, total_steps=config.train.steps,
        log_every=config.train.log_every, eval_every=config.train.eval_every,
        checkpoint_every=config.train.checkpoint_every, keep_checkpoints=config.train.keep_checkpoints,
        flops_per_token=flops_per_token, peak_flops=device_peak_flops() * jax.device_count(),
        learning_rate=lambda s: float(built.schedule(s)), items_per_step=config.train.global_batch)
    result = fit(built.state, spec, workdir=workdir, desc=f"{config.stage} {config.name}")

    out = {"step": result.step, "preempted": result.preempted, "last_metrics": result.last_metrics}
    if not result.preempted and config.train.export:
        out["export"] = export(config, workdir, steps.merge_model(graphdef, result.state.params, frozen),
                               inputs.tokenizer,
                               init_path=init_path, embedded_paths=inputs.embedded_paths)
    return out


def _train_iterator(config, stage: stages.Stage, train_ds, mesh):
    from lnpo.data import PairIterator, SFTIterator

    iterator_cls = SFTIterator if stage.examples == "sft" else PairIterator
    group, groups = parallel.process_batch_group(mesh)
    return iterator_cls(train_ds, global_batch=config.train.global_batch, micro_batches=config.train.micro_batches,
                        layout=config.data.layout, seq_len=row_length(config), seed=config.seed,
                        process_index=group, process_count=groups, row_multiple=_row_multiple(mesh))


def _global_batches(iterator, ref_train: dict | None, A: int, mesh):
    """``(global batch, its real token count)`` forever: the iterator's next host-local batch, with its
    cached reference values (``ref_train``) sliced in, assembled into global arrays."""
    group, groups = parallel.process_batch_group(mesh)
    while True:
        indices = iterator.next_indices()
        local = iterator.build(indices)
        tokens = real_tokens(local, groups)
        if ref_train is not None:
            local.update(_cached_reference_slice(ref_train, indices, A, (group, groups)))
        yield to_global(local, mesh, groups), tokens


def _row_multiple(mesh) -> int:
    """The batch shards of this process's batch group: its rows per micro-batch are a multiple of it."""
    return max(data_parallel(mesh.shape) // parallel.process_batch_group(mesh)[1], 1)


def _cached_reference_slice(ref: dict, indices: np.ndarray, A: int, group: tuple[int, int]) -> dict:
    """Batch group ``group = (g, G)``'s ``ref_<name>`` ``[A, L]`` (``ref_chosen``, ``ref_rejected``, ...) for
    global batch ``indices`` (-1 = dummy); ``ref`` maps the cached names to ``[N]`` arrays."""
    h, H = group
    own = indices.reshape(A, H, -1)[:, h, :]
    safe = np.where(own >= 0, own, 0)
    return {f"ref_{name}": np.where(own >= 0, values[safe], 0.0).astype(np.float32) for name, values in ref.items()}


def _reference_from_cache(config, paths: rundir.StagePaths, init_path, params, graphdef, mesh, train_ds, eval_ds, *,
                          batch_pairs):
    cache_dir = paths.reference_cache
    weights = reference_cache.weights_fingerprint(init_path, paths.runs_root)
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


def make_held_out_loss(config, eval_ds, graphdef, ref_graphdef, ref_params, ref_eval, mesh, *, sums_fn,
                       loss_hparams, pairs, frozen=None):
    """``held_out_loss(state) -> {"eval/<metric>": mean}``: the training loss and its metrics on the eval split
    (at most ``config.train.eval_batches`` batches of ``pairs``), summed as :class:`~lnpo.train.steps.WeightedSums`
    over every batch, then divided once. (Not the generation-based evaluation of :mod:`lnpo.evaluate`.)"""
    from lnpo.data import EvalIterator

    group, groups = parallel.process_batch_group(mesh)
    iterator = EvalIterator(eval_ds, global_batch=pairs, layout=config.data.layout, seq_len=row_length(config),
                            process_index=group, process_count=groups, row_multiple=_row_multiple(mesh),
                            max_batches=config.train.eval_batches)

    def eval_fn(params, batch, ref_params, loss_hparams, frozen):
        with parallel.use_rules(mesh):
            return steps.eval_step(params, batch, ref_params, loss_hparams, frozen, graphdef=graphdef,
                                   ref_graphdef=ref_graphdef, sums_fn=sums_fn)

    jitted = jax.jit(eval_fn, out_shardings=NamedSharding(mesh, P()))

    def held_out_loss(state) -> dict:
        total = None
        for b, local in enumerate(iterator):
            if ref_eval is not None:
                indices = np.arange(b * pairs, (b + 1) * pairs)
                indices[indices >= len(eval_ds)] = -1
                local.update(_cached_reference_slice(ref_eval, indices, 1, (group, groups)))
            batch = to_global(local, mesh, groups)
            sums = jax.device_get(jitted(state.params, batch, ref_params, loss_hparams, frozen))
            sums = jax.tree.map(np.float64, sums)  # summed over batches on the host in float64
            total = sums if total is None else jax.tree.map(np.add, total, sums)
        if total is None:
            return {}
        count = max(float(total.count), 1.0)
        return {f"eval/{k}": float(v) / count for k, v in total.sums.items()}

    return held_out_loss


# ----------------------------------------------------------------------------- export
def export(config, workdir: str, model, tokenizer, *, init_path, embedded_paths) -> str:
    """Write the trained model (HF format) and ``run.json`` (:class:`lnpo.rundir.RunInfo`: what evaluation and
    sweeps read); returns the export directory."""
    from lnpo.models import peft_io, save_pretrained

    path = rundir.export_dir(workdir)
    dtype = config.train.export_dtype or preflight.own_dtype(init_path) or config.model.param_dtype
    adapter = None
    if lora_lib.has_adapters(model):  # LoRA: the PEFT adapter in adapter/, the merged model in export/
        adapter = rundir.adapter_dir(workdir)
        peft_io.save_adapter(model, lora_lib.spec_from_config(config.model.lora), adapter,
                             base_model_name_or_path=os.path.abspath(init_path) if init_path else None)
        if tokenizer is not None and jax.process_index() == 0:
            tokenizer.save_pretrained(adapter)
        model = peft_io.merged_model(model) if config.train.export_merged else None
    if model is not None:
        save_pretrained(model, path, tokenizer=tokenizer, dtype=dtype)
    else:
        path = adapter
    if jax.process_index() == 0:
        rundir.write_run_info(workdir, rundir.RunInfo(
            name=config.name, stage=config.stage, method=config.loss.name, loss=loss_hparams(config),
            lr=config.optim.lr, seed=config.seed, steps=config.train.steps, export=os.path.abspath(path),
            sft_path=os.path.abspath(init_path) if init_path else None, chat_template=config.data.chat_template,
            eval_prompts=config.data.ood_prompts or (embedded_paths or {}).get("ood_prompts", ""),
            scorer=config.eval.scorer or (embedded_scorer_spec(config.data.get("embedded_version", 1))
                                          if config.data.source == "embedded" else ""),
            eval=EvalSettings.from_config(config), adapter=os.path.abspath(adapter) if adapter else None))
    return path
