"""GPT family: pure init / train / eval / sample steps for the generic loop.

A batch is {"tokens": int32 [B, T + 1]} (random windows of the training text, data/); the model
reads tokens[:, :-1] and predicts tokens[:, 1:]. Dropout masks are drawn per example from the
example's index in the global batch (parallel.example_rngs), so an update does not depend on the
device count, the backend or the number of microbatches. Evaluation sums the token NLL over
non-overlapping windows of the eval split and reports nats, bits and perplexity per token.
Sampling (sampling/gpt.py) runs the whole decode loop inside the one compiled sample function.
The pieces are module-level pure functions (train_inputs, gpt_loss, loss_sums, sample_text);
make_steps only binds them with functools.partial, the train step being train_state.train_step
over train_inputs and gpt_loss.
"""

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import data, samples
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.family import FAMILIES, Family, Steps
from jaxgen.losses import gpt as losses
from jaxgen.models import gpt as models
from jaxgen.parallel import example_rngs
from jaxgen.sampling import decoding
from jaxgen.sampling import gpt as sampling
from jaxgen.train import state as train_state

PyTree = Any


def validate(config: ConfigDict, info: Any) -> None:
    if not info.vocab_size:
        raise ConfigError(
            f"config.data.name: {config.data.name!r} is not a text dataset "
            "(the gpt family needs tokens: tiny_shakespeare or text_file)"
        )
    models.check_config(config.model, info.vocab_size, config.data.seq_len)
    losses.LOSSES.get(config.loss.name)
    settings = sampling.read_settings(config.sample)
    (prompt, _), _ = prompt_tokens(config)
    sampling.check_length(config.model, prompt.shape[1], settings.max_new_tokens)


def prompt_tokens(config: ConfigDict):
    """(prompt [P, L] int32 left-padded, lengths [P]) for config.sample.prompt, split on
    config.sample.prompt_separator into several prompts (each sampled num_samples times)."""
    tokenizer = data.load_tokenizer(config.data)
    sample = config.sample
    prompts = sample.prompt.split(sample.prompt_separator) if sample.prompt_separator else None
    prompts = prompts or [sample.prompt]
    try:
        return sampling.encode_prompts(tokenizer, prompts), tokenizer
    except ValueError as error:
        raise ConfigError(f"config.sample.prompt: {error}") from None


def logits_of(params, inputs, dropout_rngs=None, *, model):
    """Training-mode logits [B, T, V]; with dropout, each example uses its own key."""
    if dropout_rngs is None:
        return model.apply({"params": params}, inputs, train=True)

    def one(tokens, rng):
        return model.apply({"params": params}, tokens[None], train=True, rngs={"dropout": rng})

    return jax.vmap(one)(inputs, dropout_rngs)[:, 0]


def train_inputs(state, batch, rng, *, dropout, axis_name=None):
    """{"inputs": tokens[:, :-1], "targets": tokens[:, 1:]} and, with dropout, "dropout_rngs":
    one key per example from its index in the global batch (state unused)."""
    del state
    tokens = batch["tokens"]
    inputs = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    if dropout:
        inputs["dropout_rngs"] = example_rngs(rng, tokens.shape[0], axis_name)
    return inputs


def gpt_loss(params, batch, *, model, loss_fn, loss_kw):
    """(loss, metrics) of `loss_fn` on {"inputs", "targets"[, "dropout_rngs"]}."""
    logits = logits_of(params, batch["inputs"], batch.get("dropout_rngs"), model=model)
    return loss_fn(logits, batch["targets"], **loss_kw)


def init(rng, batch, *, model, optimizer):
    params_rng, state_rng = jax.random.split(rng)
    params = model.init(params_rng, batch["tokens"][:1, :-1])["params"]
    return train_state.create(params, optimizer, state_rng)


def loss_sums(params, batch, rng, *, model):
    """Sums of the token NLL (nats) over the real windows of an eval batch."""
    del rng  # evaluation is deterministic
    tokens, mask = batch["tokens"], batch["mask"]
    logits = model.apply({"params": params}, tokens[:, :-1])
    nll = jnp.sum(losses.token_nll(logits, tokens[:, 1:]), axis=1)  # [B]
    total = jnp.sum(nll * mask)
    return {
        "loss": total,
        "bits_per_token": total / math.log(2.0),
        "count": jnp.sum(mask) * (tokens.shape[1] - 1),
    }


def sample_text(state, batch, rng, *, prompts_of, model, model_config, settings, copies):
    """{"text": int32 [prompts x copies (x num_return_sequences), L]}: each prompt then its
    continuation, -1 where there is no token (left padding, after EOS).

    `prompts_of()` -> ((prompt, lengths), tokenizer) (prompt_tokens) is called here, when the
    sample function is traced, so building the train step alone needs no tokenizer.
    """
    del batch  # prompts come from config.sample.prompt
    (prompt, prompt_lengths), tokenizer = prompts_of()
    generate = sampling.make_generate(
        model, model_config, settings, tokenizer.eos_id, vocab_size=tokenizer.vocab_size
    )
    rows = jnp.repeat(jnp.asarray(prompt), copies, axis=0)
    lengths = jnp.repeat(jnp.asarray(prompt_lengths), copies, axis=0)
    out = generate(state.eval_params, rows, lengths, rng)
    returned = out.tokens.shape[0] // rows.shape[0]  # num_return_sequences
    rows, lengths = (jnp.repeat(x, returned, axis=0) for x in (rows, lengths))
    width = rows.shape[1]
    left_pad = jnp.arange(width)[None] < (width - lengths)[:, None]
    new = jnp.arange(out.tokens.shape[1])[None] < out.lengths[:, None]
    return {
        "text": jnp.concatenate(
            [jnp.where(left_pad, -1, rows), jnp.where(new, out.tokens, -1)], axis=1
        )
    }


def make_steps(config: ConfigDict, info: Any, axis_name: str | None = None) -> Steps:
    model = models.make_model(config.model, info.vocab_size)
    optimizer = train_state.from_config(config)
    loss_eval = train_state.on_eval_params(functools.partial(loss_sums, model=model))
    # A deterministic decoder (greedy, beams) gives num_samples identical copies: decode each
    # prompt once; beams return num_return_sequences distinct rows per prompt instead.
    deterministic = decoding.is_deterministic(decoding.read_settings(config.sample))
    return Steps(
        init=functools.partial(init, model=model, optimizer=optimizer),
        train_step=functools.partial(
            train_state.train_step,
            inputs_of=functools.partial(
                train_inputs, dropout=config.model.dropout > 0, axis_name=axis_name
            ),
            loss_of=functools.partial(
                gpt_loss,
                model=model,
                loss_fn=losses.LOSSES.get(config.loss.name),
                loss_kw=config.loss.kw.to_dict(),
            ),
            optimizer=optimizer,
            microbatches=config.train.microbatches,
            axis_name=axis_name,
        ),
        eval_steps={"loss": lambda entry: loss_eval},
        sample=functools.partial(
            sample_text,
            prompts_of=functools.partial(prompt_tokens, config),
            model=model,
            model_config=config.model,
            settings=config.sample,
            copies=1 if deterministic else config.sample.num_samples,
        ),
        batch_spec={"tokens": jax.ShapeDtypeStruct((1, config.data.seq_len + 1), jnp.int32)},
        finalize={"loss": losses.add_perplexity},
    )


def write_sample(config: ConfigDict, name: str, tokens: np.ndarray, stem: str) -> str:
    """Token rows [N, L] (-1 where there is no token) -> `stem`.txt of the decoded texts."""
    del name
    return samples.write_text(
        samples.decode_rows(data.load_tokenizer(config.data), tokens), stem + ".txt"
    )


FAMILIES.register("gpt")(
    Family(validate, make_steps, losses=losses.LOSSES, write_sample=write_sample)
)
