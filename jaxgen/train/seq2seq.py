"""Seq2seq family (translation): pure init / train / eval / sample steps for the generic loop.

A batch is {"source": int32 [B, S], "target": int32 [B, T + 1]} (data/pairs_kind.py); the model
reads (source, target[:, :-1]) and predicts target[:, 1:], the loss counting only non-padding
target tokens. Train rows packed with several pairs (config.data.pack) add segment ids and
positions (PACKING) that the model's masks and positional embeddings use. Dropout masks are
drawn per example (row) from its index in the global batch (parallel.example_rngs, as
train/gpt.py), so an update does not depend on the device count or the number of microbatches.
The "loss" eval sums the token NLL and correct argmaxes over the real target tokens of the eval
split (nats, accuracy, and perplexity by finalize). Sampling translates config.sample.source
("|"-separated) or the lines of config.sample.source_file if set, config.sample.batch_size at a
time (Steps.sample_batches; experiments.sample shows a progress bar and names its files by a
digest of the sources and settings, sample_tag), else the sources of the fixed eval batch beside
their references; each batch's decode is one compiled call (sampling/seq2seq.py).
The pieces are module-level pure functions (train_inputs, loss_of, eval_sums,
sample_translations); make_steps only binds them with functools.partial, the train step being
train_state.train_step over train_inputs and loss_of. BLEU/chrF evaluators live in
jaxgen/metrics/text.py.
"""

import dataclasses
import functools
import hashlib
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import data, samples
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.data import pairs
from jaxgen.family import FAMILIES, Family, Steps
from jaxgen.losses import gpt as gpt_losses
from jaxgen.losses import seq2seq as losses
from jaxgen.models import seq2seq as models
from jaxgen.parallel import example_rngs
from jaxgen.sampling import decoding
from jaxgen.sampling import seq2seq as sampling
from jaxgen.train import state as train_state


def pad_id_of(config: ConfigDict) -> tuple[int, Any]:
    """(the padding id, the tokenizer) of the run's pairs data."""
    tokenizer = data.load_tokenizer(config.data)
    try:
        return pairs.pad_id(tokenizer), tokenizer
    except data.DataError as error:
        raise ConfigError(f"config.data.tokenizer: {error}") from None


def validate(config: ConfigDict, info: Any) -> None:
    if data.kind_of(config.data.name).name != "pairs":
        raise ConfigError(
            f"config.data.name: {config.data.name!r} is not a pairs dataset (the seq2seq family "
            "needs source/target pairs: bible_es_en, tsv or a TFDS translation dataset)"
        )
    models.check_config(config.model, config.data.source_len, config.data.target_len)
    losses.LOSSES.get(config.loss.name)
    settings = decoding.read_settings(config.sample)
    sampling.check_length(config.model, settings.max_new_tokens)
    del info
    pad_id_of(config)
    sample_sources(config.sample)


def sample_sources(sample_config: ConfigDict) -> list[str]:
    """The texts of config.sample.source ("|"-separated) or .source_file (one per line), or
    [] when neither is set (the eval batch's sources are translated); ConfigError naming the
    field for a source that holds no text or is not UTF-8."""
    if sample_config.get("source_file"):
        path = pathlib.Path(sample_config.source_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise ConfigError(
                f"config.sample.source_file: cannot read {path} ({error.strerror or error})"
            ) from None
        except UnicodeDecodeError as error:
            raise ConfigError(
                f"config.sample.source_file: {path} is not UTF-8 text (byte {error.start}: "
                f"{error.reason})"
            ) from None
        texts = [line.strip() for line in lines if line.strip()]
        if not texts:
            raise ConfigError(f"config.sample.source_file: {path} has no non-empty line")
        return texts
    source = sample_config.get("source", "")
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:  # bytes the command line could not decode (surrogateescape)
        raise ConfigError(f"config.sample.source: not UTF-8 text: {source!r}") from None
    texts = [text.strip() for text in source.split("|") if text.strip()]
    if source and not texts:
        raise ConfigError(
            f"config.sample.source: no text in {source!r} (sources are separated by '|')"
        )
    return texts


class SourceBatches(Sequence):
    """The sample sources in batches of config.sample.batch_size, encoded when indexed:
    {"source": int32 [B, S], "keep": bool [B]}, the last batch padded with its last text
    (Steps.sample_batches)."""

    def __init__(self, texts, batch_size, *, tokenizer, length, pad_id):
        self.texts, self.batch_size = texts, batch_size
        self.encode = functools.partial(
            sampling.encode_sources, tokenizer, length=length, pad_id=pad_id
        )

    def __len__(self) -> int:
        return -(-len(self.texts) // self.batch_size)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        texts = self.texts[index * self.batch_size : (index + 1) * self.batch_size]
        keep = np.arange(self.batch_size) < len(texts)
        texts = texts + [texts[-1]] * (self.batch_size - len(texts))
        return {"source": self.encode(texts), "keep": keep}


def sample_batch_size(sample_config: ConfigDict) -> int:
    """config.sample.batch_size; num_samples for runs saved before it existed."""
    return sample_config.get("batch_size", sample_config.num_samples)


def sample_tag(sample_config: ConfigDict) -> str:
    """The end of experiments.sample's file names: _seed<S>_<8 hex digits of the sources and
    every decoding setting>, so a call with other sources or settings never overwrites the
    output of an earlier one (the same call writes the same files again)."""
    settings = dataclasses.asdict(decoding.read_settings(sample_config))
    settings["batch_size"] = sample_batch_size(sample_config)  # rng per batch when sampling
    texts = sample_sources(sample_config)
    settings["sources"] = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return f"_seed{sample_config.seed}_{digest}"


PACKING = ("source_segment", "source_position", "target_segment", "target_position")


def logits_of(params, model, source, target_in, dropout_rngs=None, packing=None):
    """Training-mode logits [B, T, V]; with dropout, each example (row) uses its own key.
    packing: None, or the batch's PACKING arrays (rows holding several pairs)."""
    packing = packing or {}
    if dropout_rngs is None:
        return model.apply({"params": params}, source, target_in, train=True, **packing)

    def one(source_row, target_row, rng, packing_row):
        return model.apply(
            {"params": params},
            source_row[None],
            target_row[None],
            train=True,
            rngs={"dropout": rng},
            **{key: value[None] for key, value in packing_row.items()},
        )

    return jax.vmap(one)(source, target_in, dropout_rngs, packing)[:, 0]


def loss_of(params, batch, *, model, loss_fn, loss_kw, pad_id):
    """(loss, metrics) of one (micro)batch with "source", "target" (and "dropout_rngs", and the
    PACKING arrays of packed rows: the labels past each pair's eos are padding, so the loss
    still counts exactly the real target tokens)."""
    target = batch["target"]
    packing = {key: batch[key] for key in PACKING if key in batch}
    logits = logits_of(
        params, model, batch["source"], target[:, :-1], batch.get("dropout_rngs"), packing
    )
    weights = (target[:, 1:] != pad_id).astype(jnp.float32)
    return loss_fn(logits, target[:, 1:], weights, **loss_kw)


def eval_sums(params, batch, rng, *, model, pad_id):
    """Sums of the token NLL (nats) and correct argmaxes over the real target tokens."""
    del rng  # evaluation is deterministic
    target, mask = batch["target"], batch["mask"]
    logits = model.apply({"params": params}, batch["source"], target[:, :-1])
    weights = (target[:, 1:] != pad_id).astype(jnp.float32) * mask[:, None]
    nll = gpt_losses.token_nll(logits, target[:, 1:])
    correct = (jnp.argmax(logits, axis=-1) == target[:, 1:]).astype(jnp.float32)
    return {
        "loss": jnp.sum(nll * weights),
        "accuracy": jnp.sum(correct * weights),
        "count": jnp.sum(weights),
    }


def init(rng, batch, *, model, optimizer):
    params_rng, state_rng = jax.random.split(rng)
    source, target = batch["source"][:1], batch["target"][:1, :-1]
    params = model.init(params_rng, source, target)["params"]
    return train_state.create(params, optimizer, state_rng)


def train_inputs(state, batch, rng, *, dropout, axis_name=None):
    """The batch's "source", "target" (and PACKING arrays) and, with dropout, "dropout_rngs":
    one key per row from its index in the global batch (state unused)."""
    del state
    inputs = {key: batch[key] for key in ("source", "target", *PACKING) if key in batch}
    if dropout:
        inputs["dropout_rngs"] = example_rngs(rng, batch["source"].shape[0], axis_name)
    return inputs


def sample_translations(state, batch, rng, *, translate, eos_id, pad_id):
    """{"source", "translation"[, "reference"]}: int32 rows, -1 where there is no token: the
    translations of batch["source"] (eval data, or config.sample's texts), beside the
    references of eval data (batch["target"])."""
    source = batch["source"]
    output = translate(state.eval_params, source, rng)
    returned = output.tokens.shape[0] // source.shape[0]  # num_return_sequences
    source = jnp.repeat(source, returned, axis=0)
    keep = (source != pad_id) & (source != eos_id)
    out = {
        "source": jnp.where(keep, source, -1),
        "translation": sampling.output_rows(output, eos_id),
    }
    if "target" in batch:
        reference = jnp.repeat(batch["target"][:, 1:], returned, axis=0)
        keep = (reference != pad_id) & (reference != eos_id)
        out["reference"] = jnp.where(keep, reference, -1)
    return out


def make_steps(config: ConfigDict, info: Any, axis_name: str | None = None) -> Steps:
    pad_id, tokenizer = pad_id_of(config)
    model = models.make_model(config.model, info.vocab_size, pad_id)
    optimizer = train_state.from_config(config)
    texts = sample_sources(config.sample)
    batches = None
    if texts:
        batches = SourceBatches(
            texts,
            sample_batch_size(config.sample),
            tokenizer=tokenizer,
            length=config.data.source_len,
            pad_id=pad_id,
        )
    loss_eval = train_state.on_eval_params(functools.partial(eval_sums, model=model, pad_id=pad_id))
    return Steps(
        init=functools.partial(init, model=model, optimizer=optimizer),
        train_step=functools.partial(
            train_state.train_step,
            inputs_of=functools.partial(
                train_inputs, dropout=config.model.dropout > 0, axis_name=axis_name
            ),
            loss_of=functools.partial(
                loss_of,
                model=model,
                loss_fn=losses.LOSSES.get(config.loss.name),
                loss_kw=config.loss.kw.to_dict(),
                pad_id=pad_id,
            ),
            optimizer=optimizer,
            microbatches=config.train.microbatches,
            axis_name=axis_name,
        ),
        eval_steps={"loss": lambda entry: loss_eval},
        sample=functools.partial(
            sample_translations,
            translate=sampling.make_translate(model, config.sample, tokenizer.eos_id, pad_id),
            eos_id=tokenizer.eos_id,
            pad_id=pad_id,
        ),
        batch_spec={
            "source": jax.ShapeDtypeStruct((1, config.data.source_len), jnp.int32),
            "target": jax.ShapeDtypeStruct((1, config.data.target_len + 1), jnp.int32),
        },
        sample_reads_data=batches is None,  # no texts given: the eval batch's sources
        sample_batches=batches,
        finalize={"loss": gpt_losses.add_perplexity},
        # translate(params, source [B, S], rng, *, settings) -> decoding.GenerateOutput: what
        # the BLEU/ROUGE evaluators and experiments.export run (jaxgen/metrics/text.py).
        predict_fns={
            "translate": functools.partial(
                sampling.translate, model=model, eos_id=tokenizer.eos_id, pad_id=pad_id
            )
        },
    )


def write_sample(config: ConfigDict, name: str, tokens: np.ndarray, stem: str) -> str:
    """Token rows [N, L] (-1 where there is no token) -> `stem`.txt, one text a line."""
    texts = samples.decode_rows(data.load_tokenizer(config.data), tokens)
    path = pathlib.Path(stem + ".txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(text.split()) + "\n" for text in texts), encoding="utf-8")
    del name
    return str(path)


FAMILIES.register("seq2seq")(
    Family(
        validate,
        make_steps,
        losses=losses.LOSSES,
        write_sample=write_sample,
        sample_tag=sample_tag,
    )
)
