"""fid, kid and is entries with the same generator settings share one pass of samples.

A fake feature network (a fixed linear map) and a fake generator keep this fast;
the counting Placement counts executions of the compiled draw-and-embed function.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import metrics
from jaxgen.config import ConfigDict
from jaxgen.metrics import fid, networks
from jaxgen.parallel import Placement
from tests.helpers import vae_smoke_config

ENTRIES = {
    "fid": {"type": "fid", "num_samples": 64, "batch_size": 32},
    "kid": {"type": "kid", "num_samples": 64, "batch_size": 32, "subset_size": 16},
    "is": {"type": "is", "num_samples": 64, "batch_size": 32, "splits": 4},
    "other_seed": {"type": "fid", "num_samples": 64, "batch_size": 32, "seed": 7},
}


class CountingPlacement(Placement):
    calls = 0

    def compile_eval(self, fn):
        compiled = super().compile_eval(fn)

        def counted(*args):
            CountingPlacement.calls += 1
            return compiled(*args)

        return counted


class FakeSteps:
    eval_steps, finalize = {}, {}

    @staticmethod
    def generate(state, rng, num, labels):
        noise = jax.random.normal(rng, (num, 4, 4, 1))
        return jnp.tanh(noise * state["scale"] + labels[:, None, None, None] / 10)


@pytest.fixture
def fake_network(monkeypatch):
    weight = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)

    def apply(params, images):  # -> features [B, 8], logits [B, 5]
        features = images.reshape(images.shape[0], -1) @ params
        return features, features[:, :5]

    network = networks.FeatureNetwork("domain", weight, apply, (4, 4, 1), 5, "", "fake")
    features = np.random.default_rng(1).normal(size=(128, 8)).astype(np.float32)
    reference = networks.Reference(fid.gaussian_of(features), features)
    monkeypatch.setattr(networks, "get_network", lambda *args: network)
    monkeypatch.setattr(networks, "reference", lambda *args: reference)


def test_fid_kid_is_share_one_pass_and_score_as_unshared(fake_network):
    config = vae_smoke_config()
    config.evals = ConfigDict(ENTRIES)
    placement = CountingPlacement(config.mesh)
    state = {"scale": jnp.float32(0.7)}
    batches = ENTRIES["fid"]["num_samples"] // ENTRIES["fid"]["batch_size"]

    CountingPlacement.calls = 0
    shared = metrics.run(metrics.build(config, FakeSteps, placement), state)
    assert CountingPlacement.calls == 2 * batches  # fid+kid+is: one pass; other_seed: its own

    CountingPlacement.calls = 0
    unshared = {}
    for name, entry in config.evals.items():
        evaluator = metrics.EVALUATORS.get(entry.type)(config, entry, FakeSteps, placement)
        unshared |= {f"{name}/{key}": value for key, value in evaluator(state).items()}
    assert CountingPlacement.calls == 4 * batches
    assert shared == unshared
    assert shared["other_seed/fid"] != shared["fid/fid"]

    # The pass is released after run: the next evaluation (a new state) draws again.
    evaluators = metrics.build(config, FakeSteps, placement)
    CountingPlacement.calls = 0
    metrics.run(evaluators, state)
    metrics.run(evaluators, {"scale": jnp.float32(0.9)})
    assert CountingPlacement.calls == 4 * batches
