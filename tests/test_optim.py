"""Learning-rate schedules against their closed forms; weight decay only on matrices."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import optim
from jaxgen.config import ConfigError, base_config


def test_warmup_then_cosine_matches_closed_form():
    config = base_config().optim
    config.update(lr=2e-3, schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    schedule = optim.learning_rate(config, num_steps=110)
    for step in (0, 5, 10):
        assert float(schedule(step)) == pytest.approx(2e-3 * step / 10, rel=1e-6)
    for step in (10, 35, 60, 110):
        progress = (step - 10) / 100
        expected = 2e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)


def test_adamw_decays_matrices_but_not_biases():
    config = base_config().optim
    config.update(name="adamw", lr=0.1, weight_decay=0.5)
    optimizer = optim.make_optimizer(config, num_steps=10)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    zero_grads = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros((2,))}
    updates, _ = optimizer.update(zero_grads, optimizer.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_allclose(updates["bias"], np.zeros(2))


def test_clipping_bounds_the_update():
    config = base_config().optim
    config.update(name="sgd", lr=1.0, b1=0.0, grad_clip_norm=1.0)
    optimizer = optim.make_optimizer(config, num_steps=10)
    params = {"w": jnp.zeros(4)}
    updates, _ = optimizer.update({"w": jnp.full(4, 10.0)}, optimizer.init(params), params)
    assert float(jnp.linalg.norm(updates["w"])) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize(
    "field,value",
    [("lr", -1e-3), ("lr", 0.0), ("name", "adagrad"), ("schedule", "step"), ("ema_decay", 1.0)],
)
def test_bad_values_name_the_field(field, value):
    config = base_config().optim
    config[field] = value
    with pytest.raises(ConfigError, match=rf"^config\.optim\.{field}"):
        optim.check_config(config)


def test_a_second_optimizer_section_is_named_in_errors():
    # The GAN's discriminator optimizer lives in config.optim_d.
    config = base_config().optim
    config.warmup_steps = -1
    with pytest.raises(ConfigError, match=r"^config\.optim_d\.warmup_steps"):
        optim.check_config(config, "config.optim_d")


def test_rsqrt_matches_the_transformer_paper():
    config = base_config().optim
    d_model, warmup = 512, 4000
    config.update(lr=(d_model * warmup) ** -0.5, schedule="rsqrt", warmup_steps=warmup)
    schedule = optim.learning_rate(config, num_steps=100_000)
    assert float(schedule(0)) == 0.0
    for step in (1, 100, 3999, 4000, 4001, 20_000, 100_000):
        paper = d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)  # Vaswani et al., eq. 3
        assert float(schedule(step)) == pytest.approx(paper, rel=1e-5)
    assert float(schedule(4000)) == pytest.approx(7.0e-4, rel=0.01)
    config.warmup_steps = 0
    with pytest.raises(ConfigError, match="config.optim.warmup_steps"):
        optim.check_config(config)
