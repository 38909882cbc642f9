"""A new family is one file under jaxgen/train/ plus its model, loss and config, and no edit
elsewhere: this test adds one to a copy of the repository and runs the scripts on it.

The family, "pixel_mean", learns one image: the param that minimises the mean squared error to
the training images, i.e. their mean (a closed form the test checks). Its files are written into
a copy of jaxgen/, experiments/ and configs/; nothing in that copy is edited. experiments.train,
sample and evaluate find the family by its config's name (jaxgen.family.get_family), and the
layering test (tests/test_layers.py) holds for the copy with the family in it.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxgen import data
from jaxgen.config import base_config
from tests.e2e import script_env
from tests.helpers import ROOT

pytestmark = pytest.mark.slow

FILES = {
    "jaxgen/models/pixel_mean.py": '''
"""One learned image, the same for every input: the pixel_mean family's model."""

import flax.linen as nn
import jax.numpy as jnp


class PixelMean(nn.Module):
    image_shape: tuple[int, ...]

    @nn.compact
    def __call__(self, batch_size: int):
        mean = self.param("mean", nn.initializers.zeros, self.image_shape)
        return jnp.broadcast_to(mean, (batch_size, *self.image_shape))  # [B, H, W, C]
''',
    "jaxgen/losses/pixel_mean.py": '''
"""Losses of the pixel_mean family."""

import jax.numpy as jnp

from jaxgen.registry import Registry

LOSSES = Registry("loss", "config.loss.name")


@LOSSES.register("mse")
def mse(prediction, image, scale=1.0):
    """scale * mean squared error; its minimiser over a constant image is the data mean."""
    loss = scale * jnp.mean(jnp.square(prediction - image))
    return loss, {"mse": jnp.mean(jnp.square(prediction - image))}
''',
    "jaxgen/train/pixel_mean.py": '''
"""The pixel_mean family: fits one image to the training images (their mean)."""

import functools

import jax
import jax.numpy as jnp

from jaxgen.family import FAMILIES, Family, Steps
from jaxgen.losses import pixel_mean as losses
from jaxgen.models.pixel_mean import PixelMean
from jaxgen.train import state as train_state


def validate(config, info):
    losses.LOSSES.get(config.loss.name)


def init(rng, batch, *, model, optimizer):
    params = model.init(rng, 1)["params"]
    return train_state.create(params, optimizer, rng)


def mse_loss(params, batch, *, model, loss_fn, loss_kw):
    prediction = model.apply({"params": params}, batch["image"].shape[0])
    return loss_fn(prediction, batch["image"], **loss_kw)


def mse_sums(params, batch, rng, *, model):
    del rng
    error = model.apply({"params": params}, batch["image"].shape[0]) - batch["image"]
    per_example = jnp.mean(jnp.square(error), axis=(1, 2, 3))
    return {"mse": jnp.sum(per_example * batch["mask"]), "count": jnp.sum(batch["mask"])}


def sample_grid(state, batch, rng, *, model, num):
    del batch, rng
    return {"mean": model.apply({"params": state.eval_params}, num)}


def make_steps(config, info, axis_name=None):
    model = PixelMean(tuple(info.image_shape))
    optimizer = train_state.from_config(config)
    loss_of = functools.partial(
        mse_loss, model=model, loss_fn=losses.LOSSES.get(config.loss.name),
        loss_kw=config.loss.kw.to_dict(),
    )
    step = functools.partial(
        train_state.gradient_step, loss_fn=loss_of, optimizer=optimizer, axis_name=axis_name
    )
    mse = train_state.on_eval_params(functools.partial(mse_sums, model=model))
    return Steps(
        init=functools.partial(init, model=model, optimizer=optimizer),
        train_step=lambda state, batch: step(state, {"image": batch["image"]}),
        eval_steps={"mse": lambda entry: mse},
        sample=functools.partial(sample_grid, model=model, num=config.sample.num_samples),
        batch_spec={"image": jax.ShapeDtypeStruct((1, *info.image_shape), jnp.float32)},
    )


FAMILIES.register("pixel_mean")(Family(validate, make_steps, losses=losses.LOSSES))
''',
    "configs/pixel_mean/mnist.py": '''
"""The mean MNIST image, learned.

    python -m experiments.train --config=configs/pixel_mean/mnist.py:smoke --workdir=/tmp/pm
"""

from jaxgen.config import ConfigDict, base_config, smoke


def get_config(arg: str = "") -> ConfigDict:
    config = base_config()
    config.family = "pixel_mean"
    config.data.name = "mnist"
    config.loss.name = "mse"
    config.loss.kw = ConfigDict({"scale": 1.0})
    config.optim.lr = 0.05
    config.train.num_steps = 500
    config.evals = ConfigDict({"mse": {"type": "mse", "batch_size": 500, "num_examples": 2000}})
    config.sample.num_samples = 8
    if "smoke" in arg:
        smoke(config, num_steps=150, batch_size=64, every=150)
    return config
''',
}


def run(copy, *command):
    """`python *command` in the copy, as a user runs it there."""
    result = subprocess.run(
        [sys.executable, *command],
        cwd=copy,
        env=script_env() | {"PYTHONPATH": str(copy)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_a_family_added_as_its_own_files_trains_samples_and_evaluates(tmp_path):
    copy = tmp_path / "repo"
    for folder in ("jaxgen", "experiments", "configs", "tests"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for path, text in FILES.items():
        assert not (copy / path).exists()  # added, not edited
        (copy / path).parent.mkdir(parents=True, exist_ok=True)
        (copy / path).write_text(text.lstrip())
    workdir = tmp_path / "run"
    config = "--config=configs/pixel_mean/mnist.py:smoke"
    run(copy, "-m", "experiments.train", config, f"--workdir={workdir}")
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    train = [row for row in rows if row["split"] == "train"]
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]

    # The learned image is the mean of the training images, the minimiser of the MSE: on 2,000
    # test images its MSE is at most a little above that of their own mean (the floor).
    result = run(copy, "-m", "experiments.evaluate", f"--workdir={workdir}")
    evaluated = json.loads((workdir / "eval_150.json").read_text())
    assert str(evaluated["mse/mse"])[:6] in result.stdout
    batches = data.make_iterator(base_config().data, "test", 500, 0, train=False)
    images = np.concatenate([batch["image"] for _, batch in zip(range(4), batches, strict=False)])
    floor = float(np.mean(np.square(images - images.mean(0))))
    assert floor <= evaluated["mse/mse"] < 1.1 * floor

    run(copy, "-m", "experiments.sample", f"--workdir={workdir}", "--config.sample.seed=3")
    assert (workdir / "samples" / "mean_0000150_seed3.png").is_file()
    # The copy keeps jaxgen's floors with the family in it: jaxgen/train/pixel_mean.py is on
    # the families' floor, jaxgen/models/pixel_mean.py on the models', with no edit of LAYERS.
    run(copy, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_layers.py")
