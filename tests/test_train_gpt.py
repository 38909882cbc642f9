"""GPT train step: structure, learning, device/backend/microbatch independence, eval sums."""

import math

import jax
import numpy as np
import pytest

from jaxgen import parallel
from jaxgen.data import DatasetInfo
from jaxgen.train import gpt
from tests.helpers import load_config

VOCAB = 29
INFO = DatasetInfo(image_shape=(), num_classes=0, num_examples={}, vocab_size=VOCAB)


def smoke_config(dropout=0.1):
    config = load_config("configs/gpt/shakespeare_char.py", "smoke")
    config.model.dropout = dropout
    config.data.seq_len = 16
    config.train.batch_size = 8
    return config


def token_batches(num, batch_size, seq_len=16, seed=0):
    rng = np.random.default_rng(seed)
    # A learnable pattern: each row counts up from a random start (mod VOCAB).
    starts = rng.integers(0, VOCAB, (num, batch_size, 1))
    tokens = (starts + np.arange(seq_len + 1)) % VOCAB
    return [{"tokens": t.astype(np.int32)} for t in tokens]


def run(config, num_steps=3, batches=None):
    parallel.check_config(config)
    placement = parallel.Placement(config.mesh)
    steps = gpt.make_steps(config, INFO, placement.axis_name)
    init_steps = gpt.make_steps(config, INFO, None)
    batches = batches or token_batches(num_steps, config.train.batch_size)
    state = placement.compile_init(init_steps.init)(jax.random.PRNGKey(0), batches[0])
    step = placement.compile_train_step(steps.train_step, state)
    state = placement.put_state(state)
    history = []
    for batch in batches:
        state, metrics = step(state, placement.put_batch(batch))
        history.append(jax.device_get(placement.first_metrics(metrics)))
    return jax.device_get(placement.get_state(state)), history


def test_step_keeps_structure_and_gives_finite_metrics():
    config = smoke_config()
    state, history = run(config, num_steps=1)
    assert int(state.step) == 1  # (warmup: the first update has lr 0)
    assert {"loss", "nll", "grad_norm", "lr"} <= set(history[0])
    assert all(np.isfinite(float(v)) for v in history[0].values())
    assert abs(float(history[0]["loss"]) - math.log(VOCAB)) < 0.3  # fresh model: ~log V


def test_loss_falls_on_a_learnable_pattern():
    config = smoke_config(dropout=0.0)
    config.optim.warmup_steps, config.optim.schedule, config.optim.lr = 0, "constant", 3e-3
    batch = token_batches(1, 8)[0]
    _, history = run(config, batches=[batch] * 30)
    assert float(history[-1]["loss"]) < 0.5 * float(history[0]["loss"])


@pytest.mark.parametrize(
    "backend,devices,microbatches,fsdp",
    [("jit", 4, 1, 1), ("jit", 2, 1, 1), ("pmap", 4, 1, 1), ("jit", 1, 4, 1), ("jit", 4, 1, 2)],
)
def test_split_does_not_change_the_update(backend, devices, microbatches, fsdp):
    """Dropout keys come per example, so even with dropout every split gives one update."""
    reference_config = smoke_config()
    reference_config.mesh.data = 1
    reference, reference_history = run(reference_config)
    config = smoke_config()
    config.mesh.backend, config.mesh.data, config.mesh.fsdp = backend, devices // fsdp, fsdp
    config.train.microbatches = microbatches
    state, history = run(config)
    np.testing.assert_allclose(
        [float(h["loss"]) for h in history],
        [float(h["loss"]) for h in reference_history],
        rtol=1e-5,
    )
    for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(reference.params), strict=True):
        np.testing.assert_allclose(x, y, atol=3e-6, rtol=1e-4)


def test_dropout_changes_the_update():
    # Guards the test above: with dropout on, different keys would give different losses.
    with_dropout, _ = run(smoke_config(dropout=0.3))
    without, _ = run(smoke_config(dropout=0.0))
    difference = max(
        float(np.abs(x - y).max())
        for x, y in zip(
            jax.tree.leaves(with_dropout.params), jax.tree.leaves(without.params), strict=True
        )
    )
    assert difference > 1e-6


def test_loss_eval_sums_match_a_direct_computation():
    config = smoke_config(dropout=0.0)
    steps = gpt.make_steps(config, INFO)
    batch = token_batches(1, 4)[0]
    batch["mask"] = np.array([1, 1, 1, 0], np.float32)  # the last window is padding
    state = steps.init(jax.random.PRNGKey(0), batch)
    eval_step = steps.eval_steps["loss"](config.evals.val)
    sums = jax.device_get(eval_step(state, batch, jax.random.PRNGKey(1)))
    model = gpt.models.make_model(config.model, VOCAB)
    logits = np.asarray(model.apply({"params": state.params}, batch["tokens"][:3, :-1]), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, batch["tokens"][:3, 1:, None], -1).sum()
    assert float(sums["count"]) == 3 * 16
    np.testing.assert_allclose(float(sums["loss"]), nll, rtol=1e-5)
    np.testing.assert_allclose(float(sums["bits_per_token"]), nll / math.log(2), rtol=1e-5)
    means = steps.finalize["loss"]({"loss": nll / 48, "bits_per_token": 0.0})
    np.testing.assert_allclose(means["perplexity"], math.exp(nll / 48))


def test_only_the_sample_function_reads_the_tokenizer(monkeypatch):
    """The prompt is encoded when the sample function is traced, not when the steps are built."""

    def no_tokenizer(data_config):
        raise RuntimeError("tokenizer read")

    monkeypatch.setattr(gpt.data, "load_tokenizer", no_tokenizer)
    config = smoke_config()
    steps = gpt.make_steps(config, INFO)
    batch = token_batches(1, 8)[0]
    state = steps.init(jax.random.PRNGKey(0), batch)
    state, metrics = jax.jit(steps.train_step)(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    with pytest.raises(RuntimeError, match="tokenizer read"):
        jax.eval_shape(steps.sample, state, batch, jax.random.PRNGKey(1))


@pytest.mark.shared_data("tinyshakespeare.txt")
@pytest.mark.parametrize("arg", ["", "cpu", "bpe", "rope"])
def test_full_shakespeare_configs_pass_every_check(arg):
    """Not only the smoke variants: what users launch must validate too (data is local here)."""
    from jaxgen.train import loop

    info = loop.check(load_config("configs/gpt/shakespeare_char.py", arg))
    assert info.vocab_size == (512 if arg == "bpe" else 65)
