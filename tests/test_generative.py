"""Sample evaluators end to end: a tiny domain network, a VAE smoke run scored by fid/kid/is.

The domain network is the classifier smoke config, built into a temporary
$JAXGEN_CACHE_DIR by experiments/build_domain_network (as a user would).
"""

import json

import numpy as np
import pytest

from jaxgen.config import ConfigDict, ConfigError
from jaxgen.family import Steps
from jaxgen.train import loop
from tests.e2e import run_script
from tests.helpers import vae_smoke_config

pytestmark = pytest.mark.slow

SAMPLE_EVALS = {
    "fid": {"type": "fid", "network": "domain", "num_samples": 256, "num_examples": 512},
    "kid": {"type": "kid", "num_samples": 256, "num_examples": 512, "subset_size": 100},
    "is": {"type": "is", "num_samples": 256, "splits": 4},
    "digits": {"type": "class_accuracy", "num_samples": 256},
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JAXGEN_CACHE_DIR", str(path))
        result = run_script(
            "build_domain_network",
            "--dataset=mnist",
            "--smoke",
            "--num_examples=512",
            env={"JAXGEN_CACHE_DIR": str(path)},
        )
        yield path, result


def test_build_prints_floor_below_ceiling_and_reuses(cache_dir):
    path, result = cache_dir
    summary = json.loads((path / "domain" / "mnist" / "summary.json").read_text())
    assert 0 <= summary["fid_eval_vs_train"] < summary["fid_noise_vs_train"]
    assert summary["feature_dim"] == 16
    # Chance is 0.1; the 20-step smoke network reaches ~0.58 on the 256 test images it is
    # scored on (it stayed at ~0.13 with the full config's rate 2e-3, features of an untrained net).
    assert summary["test_accuracy"] >= 0.3, summary
    stats = sorted(p.name for p in (path / "domain" / "mnist" / "stats").iterdir())
    assert stats == ["mnist_test_first512_domain16.npz", "mnist_train_first512_domain16.npz"]
    again = run_script(
        "build_domain_network",
        "--dataset=mnist",
        "--smoke",
        "--num_examples=512",
        env={"JAXGEN_CACHE_DIR": str(path)},
    )
    assert "reusing" in again.stdout


def test_vae_run_scores_fid_kid_is_during_training_and_in_evaluate(cache_dir, tmp_path):
    config = vae_smoke_config()
    config.evals.update(ConfigDict(SAMPLE_EVALS))
    loop.check(config, str(tmp_path))
    loop.train(config, str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if row["split"] == "eval"]
    assert [row["step"] for row in evals] == [10, 20]
    for row in evals:
        assert row["fid/fid"] > 0 and np.isfinite(row["fid/fid"])
        assert np.isfinite(row["kid/kid"]) and 1 <= row["is/is"] <= 10
        assert 0 <= row["digits/accuracy"] <= 1  # an unconditional VAE ignores the labels
    run_script("evaluate", f"--workdir={tmp_path}", "--config.evals.nll.num_samples=8")
    result = json.loads((tmp_path / "eval_20.json").read_text())
    # The same EMA params and the same noise as the in-training evaluation at step 20.
    np.testing.assert_allclose(result["fid/fid"], evals[-1]["fid/fid"], rtol=1e-3)


def test_missing_network_and_bad_entries_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXGEN_CACHE_DIR", str(tmp_path))
    from jaxgen import metrics, parallel
    from jaxgen.train import vae

    config = vae_smoke_config()
    config.evals.q = {"type": "kid"}
    info = loop.check(config)  # builds nothing: the network is looked for when evaluating
    steps = vae.make_steps(config, info)
    with pytest.raises(
        ConfigError,
        match=r"^config\.evals\.q\.network: no domain network .*"
        r"build_domain_network --dataset=mnist",
    ):
        metrics.build(config, steps, parallel.Placement(config.mesh))
    for entry, field in [
        ({"type": "fid", "network": "resnet"}, "config.evals.q.network"),
        ({"type": "fid", "num_samples": 6}, "config.evals.q.num_samples"),  # 4 devices
        ({"type": "fid", "network": "inception", "weights": ""}, "config.evals.q.weights"),
        ({"type": "is", "sample_count": 6}, "config.evals.q.sample_count"),
    ]:
        config = vae_smoke_config()
        config.evals.q = entry
        monkeypatch.delenv("JAXGEN_INCEPTION_WEIGHTS", raising=False)
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            loop.check(config)


def test_family_without_generate_is_a_config_error_naming_the_type():
    from jaxgen import metrics

    config = vae_smoke_config()
    config.evals.q = {"type": "fid"}
    steps = Steps(None, None, {"elbo": None, "nll": None}, None, {}, generate=None)
    with pytest.raises(ConfigError, match=r"config\.evals\.q\.type: 'fid' draws samples"):
        metrics.check_config(config, steps, 4)
    config.evals.q = {"type": "bleu"}  # needs the "translate" function of a family
    with pytest.raises(ConfigError, match=r"config\.evals\.q\.type: 'bleu' needs the 'translate'"):
        metrics.check_config(config, steps, 4)


def test_evaluate_adds_standard_evaluators_without_touching_config_json(cache_dir, tmp_path):
    path, _ = cache_dir
    loop.train(vae_smoke_config(), str(tmp_path))  # a run without sample evaluators
    saved = (tmp_path / "config.json").read_bytes()
    small = []
    for name in ("fid", "kid", "inception_score"):  # "is" is a Python keyword
        small += [f"--config.evals.{name}.num_samples=256", f"--config.evals.{name}.batch_size=128"]
    small += ["--config.evals.fid.num_examples=512", "--config.evals.kid.num_examples=512"]
    small += ["--config.evals.kid.subset_size=100", "--config.evals.inception_score.splits=4"]
    result = run_script(
        "evaluate",
        f"--workdir={tmp_path}",
        "--evals=fid,kid,is",
        *small,
        env={"JAXGEN_CACHE_DIR": str(path)},
    )
    assert (tmp_path / "config.json").read_bytes() == saved
    scores = json.loads((tmp_path / "eval_20.json").read_text())
    assert scores["fid/fid"] > 0 and np.isfinite(scores["kid/kid"]), result.stdout
    assert 1 <= scores["inception_score/is"] <= 10  # at most the 10 classes of the network
    assert {"elbo/neg_elbo", "nll/nll"} <= set(scores)  # the run's own entries still run
