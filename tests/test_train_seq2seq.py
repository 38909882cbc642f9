"""Seq2seq train step and decoding: structure, learning, device independence, eval sums,
greedy/beam decoding against a reference loop over the uncached model."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import data, parallel
from jaxgen.data import pairs
from jaxgen.sampling import decoding
from jaxgen.sampling import seq2seq as sampling
from jaxgen.train import seq2seq
from tests.helpers import load_config

LENGTH = 10


@pytest.fixture(scope="module")
def tsv_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    rows = [f"v{i}\tuno dos tres {i}\tone two three {i}\n" for i in range(200)]
    (folder / "p.tsv").write_text("id\tes\ten\n" + "".join(rows), encoding="utf-8")
    config = load_config("configs/seq2seq/bible_es_en.py", "smoke")
    config.data.update(name="tsv", text_file=str(folder / "p.tsv"), tfds_dir=str(folder / "tfds"))
    config.data.source_len, config.data.target_len = LENGTH, LENGTH
    config.train.batch_size = 8
    return config


def smoke_config(base, dropout=0.1):
    config = base.copy_and_resolve_references()
    config.model.dropout = dropout
    return config


def copy_batches(config, num, batch_size, seed=0):
    """A learnable task: the target is the source's tokens, eos-started and eos-ended."""
    info = data.get_info(config.data)
    tokenizer = data.load_tokenizer(config.data)
    pad, eos = pairs.pad_id(tokenizer), tokenizer.eos_id
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(num):
        words = rng.integers(1, min(info.vocab_size - 1, 60), (batch_size, LENGTH - 2))
        source = np.concatenate(
            [words, np.full((batch_size, 1), eos), np.full((batch_size, 1), pad)], 1
        )
        target = np.concatenate(
            [
                np.full((batch_size, 1), eos),
                words,
                np.full((batch_size, 1), eos),
                np.full((batch_size, 1), pad),
            ],
            1,
        )
        batches.append({"source": source.astype(np.int32), "target": target.astype(np.int32)})
    return info, batches


def run(config, batches, info):
    parallel.check_config(config)
    placement = parallel.Placement(config.mesh)
    steps = seq2seq.make_steps(config, info, placement.axis_name)
    init_steps = seq2seq.make_steps(config, info, None)
    state = placement.compile_init(init_steps.init)(jax.random.PRNGKey(0), batches[0])
    step = placement.compile_train_step(steps.train_step, state)
    state = placement.put_state(state)
    history = []
    for batch in batches:
        state, metrics = step(state, placement.put_batch(batch))
        history.append(jax.device_get(placement.first_metrics(metrics)))
    return jax.device_get(placement.get_state(state)), history


def test_step_keeps_structure_and_gives_finite_metrics(tsv_config):
    config = smoke_config(tsv_config)
    info, batches = copy_batches(config, 1, 8)
    state, history = run(config, batches, info)
    assert int(state.step) == 1
    assert {"loss", "nll", "accuracy", "grad_norm", "lr"} <= set(history[0])
    assert all(np.isfinite(float(v)) for v in history[0].values())
    assert abs(float(history[0]["nll"]) - math.log(info.vocab_size)) < 1.0  # fresh model


def test_loss_falls_on_a_copy_task(tsv_config):
    config = smoke_config(tsv_config, dropout=0.0)
    config.optim.update(schedule="constant", warmup_steps=0, lr=3e-3)
    info, batches = copy_batches(config, 1, 8)
    _, history = run(config, batches * 30, info)
    assert float(history[-1]["loss"]) < 0.6 * float(history[0]["loss"])


@pytest.mark.parametrize(
    "backend,devices,microbatches,fsdp", [("jit", 4, 1, 1), ("pmap", 4, 1, 1), ("jit", 1, 2, 1)]
)
def test_split_does_not_change_the_update(tsv_config, backend, devices, microbatches, fsdp):
    """Dropout keys come per example, so every split gives one update (microbatches: the mean
    of equal-size microbatch means, equal here as every row has the same number of tokens).
    SGD: Adam with the paper's eps 1e-9 turns float noise in near-zero gradients into full
    steps, which would hide what this test checks."""
    tsv_config = smoke_config(tsv_config)
    tsv_config.optim.update(name="sgd", b1=0.9, lr=0.5, schedule="constant", warmup_steps=0)
    reference_config = smoke_config(tsv_config)
    reference_config.mesh.data = 1
    info, batches = copy_batches(reference_config, 3, 8)
    reference, reference_history = run(reference_config, batches, info)
    config = smoke_config(tsv_config)
    config.mesh.backend, config.mesh.data, config.mesh.fsdp = backend, devices // fsdp, fsdp
    config.train.microbatches = microbatches
    state, history = run(config, batches, info)
    np.testing.assert_allclose(
        [float(h["loss"]) for h in history],
        [float(h["loss"]) for h in reference_history],
        rtol=1e-5,
    )
    for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(reference.params), strict=True):
        np.testing.assert_allclose(x, y, atol=3e-6, rtol=1e-4)


def test_loss_eval_sums_match_a_direct_computation(tsv_config):
    config = smoke_config(tsv_config, dropout=0.0)
    info, batches = copy_batches(config, 1, 4)
    batch = batches[0] | {"mask": np.array([1, 1, 1, 0], np.float32)}
    steps = seq2seq.make_steps(config, info)
    state = steps.init(jax.random.PRNGKey(0), batch)
    sums = jax.device_get(steps.eval_steps["loss"](config.evals.val)(state, batch, None))
    pad = pairs.pad_id(data.load_tokenizer(config.data))
    model = seq2seq.models.make_model(config.model, info.vocab_size, pad)
    logits = model.apply({"params": state.params}, batch["source"][:3], batch["target"][:3, :-1])
    logits = np.asarray(logits, np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    labels = batch["target"][:3, 1:]
    real = labels != pad
    nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    assert float(sums["count"]) == real.sum() == 3 * (LENGTH - 1)
    np.testing.assert_allclose(float(sums["loss"]), nll[real].sum(), rtol=1e-5)
    np.testing.assert_allclose(float(sums["accuracy"]), (logits.argmax(-1) == labels)[real].sum())
    means = steps.finalize["loss"]({"loss": 2.0, "accuracy": 0.5})
    assert means["perplexity"] == pytest.approx(math.exp(2.0))


def _trained(tsv_config):
    config = smoke_config(tsv_config, dropout=0.0)
    config.optim.update(schedule="constant", warmup_steps=0, lr=3e-3)
    info, batches = copy_batches(config, 1, 8)
    state, _ = run(config, batches * 10, info)
    tokenizer = data.load_tokenizer(config.data)
    model = seq2seq.models.make_model(config.model, info.vocab_size, pairs.pad_id(tokenizer))
    return config, state.params, model, tokenizer, batches[0]["source"][:3]


def _reference_greedy(model, params, source, eos, pad, steps):
    """Argmax decoding by the full (uncached) forward pass on the growing target."""
    target = np.full((source.shape[0], 1), eos, np.int32)
    for _ in range(steps):
        logits = np.array(model.apply({"params": params}, source, target))[:, -1]
        logits[:, pad] = -np.inf
        target = np.concatenate([target, logits.argmax(-1)[:, None].astype(np.int32)], 1)
    return target[:, 1:]


def test_greedy_and_beam_decoding(tsv_config):
    config, params, model, tokenizer, source = _trained(tsv_config)
    eos, pad = tokenizer.eos_id, pairs.pad_id(tokenizer)
    config.sample.update(num_beams=1, max_new_tokens=6, temperature=0.0)
    greedy = jax.jit(sampling.make_translate(model, config.sample, eos, pad))
    out = greedy(params, jnp.asarray(source), jax.random.key(0))
    expected = _reference_greedy(model, params, source, eos, pad, 6)
    for row in range(3):  # up to each row's end (after it: eos padding)
        length = int(out.lengths[row])
        np.testing.assert_array_equal(np.asarray(out.tokens[row, :length]), expected[row, :length])
    # Beam search: one compiled loop; each hypothesis's score (length_penalty 0: the sum of
    # its log-probs, EOS included) is what the uncached model gives its tokens.
    config.sample.update(num_beams=3, length_penalty=0.0, early_stopping=True)
    beams = jax.jit(sampling.make_translate(model, config.sample, eos, pad))(
        params, jnp.asarray(source), jax.random.key(0)
    )
    for row in range(3):
        length = int(beams.lengths[row])
        tokens = np.asarray(beams.tokens[row, :length])
        target = np.concatenate([[eos], tokens])[None].astype(np.int32)
        logits = np.array(model.apply({"params": params}, source[row : row + 1], target[:, :-1]))
        logits = logits[0].astype(np.float64)
        logits[:, pad] = -np.inf
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        expected = logp[np.arange(length), tokens].sum()
        assert float(beams.scores[row]) == pytest.approx(expected, abs=1e-3)
    # The beams share their source's cross-attention keys and values (take_rows leaves them):
    # the same output as a decoder that copies and reorders every array of its state.
    decoder = sampling.make_decoder(model, eos, pad, config.sample.max_new_tokens + 1)
    _, state = decoder.prefill(params, jnp.asarray(source))
    moved = decoder.take_rows(state, jnp.asarray([2, 2, 0, 1]))
    assert moved.keys[0].shape[0] == 4 and moved.cross_keys[0].shape[0] == 3
    copying = decoder._replace(take_rows=decoding.take_rows)
    settings = decoding.read_settings(config.sample)
    copied = jax.jit(lambda p, s: decoding.decode(copying, settings, eos, p, s, jax.random.key(0)))(
        params, jnp.asarray(source)
    )
    np.testing.assert_array_equal(beams.tokens, copied.tokens)
    np.testing.assert_array_equal(beams.lengths, copied.lengths)
    np.testing.assert_allclose(beams.scores, copied.scores, atol=1e-5)
    texts = sampling.decode_outputs(tokenizer, beams)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert decoding.is_deterministic(decoding.read_settings(config.sample))


def test_packed_rows_give_the_loss_of_the_pairs_unpacked(tsv_config):
    """loss_of over packed rows (pairs.packed_rows) == over the same pairs one a row."""
    config = smoke_config(tsv_config, dropout=0.0)
    info, (batch,) = copy_batches(config, 1, 4)
    tokenizer = data.load_tokenizer(config.data)
    pad = pairs.pad_id(tokenizer)
    batch["source"][:, 3:] = np.where(np.arange(3, LENGTH) == 3, tokenizer.eos_id, pad)
    batch["target"][:, 4:] = np.where(np.arange(4, LENGTH + 1) == 4, tokenizer.eos_id, pad)
    batch["source"][1, 5] = tokenizer.eos_id  # a longer pair
    batch["source"][1, 3:5] = 7
    packed = pairs.packed_rows(batch, [[0, 1], [2, 3]], pad)
    assert packed["source_segment"].max() == 2 and (packed["target_segment"][:, 0] == 1).all()
    steps = seq2seq.make_steps(config, info)
    params = steps.init(jax.random.PRNGKey(0), batch).params
    model = seq2seq.models.make_model(config.model, info.vocab_size, pad)
    kw = dict(model=model, loss_fn=seq2seq.losses.LOSSES.get(config.loss.name), pad_id=pad)
    kw["loss_kw"] = config.loss.kw.to_dict()
    unpacked_loss, _ = seq2seq.loss_of(params, jax.tree.map(jnp.asarray, batch), **kw)
    packed_loss, _ = seq2seq.loss_of(params, jax.tree.map(jnp.asarray, packed), **kw)
    np.testing.assert_allclose(packed_loss, unpacked_loss, rtol=1e-5)
    # With dropout each row draws its own key; the packing arrays travel with the row.
    dropout = seq2seq.logits_of(
        params,
        model,
        packed["source"],
        packed["target"][:, :-1],
        jax.random.split(jax.random.PRNGKey(1), 2),
        {key: packed[key] for key in seq2seq.PACKING},
    )
    assert dropout.shape == (2, LENGTH, info.vocab_size) and np.isfinite(dropout).all()
