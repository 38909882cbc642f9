"""The seams other code plugs into: a new kind of data and a new family, registered here in the
test, train through loop.train with no change to jaxgen; the family contract's loss.kw check;
sample grids in TensorBoard's images tab; experiments.evaluate --evals with an unknown name.
The import floors are tests/test_layers.py's.
"""

import io
import json
import pathlib
import struct

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2

from jaxgen import data, runs
from jaxgen.config import ConfigDict, ConfigError, base_config
from jaxgen.family import FAMILIES, Family, Steps, check_loss_kw, get_family
from jaxgen.registry import Registry
from jaxgen.train import loop
from jaxgen.train import state as train_state
from jaxgen.train.writer import MetricWriter
from tests.e2e import run_script, stderr_lines
from tests.helpers import vae_smoke_config

# ----------------------------------------------------------------------------- a new kind


BLOB_MEAN = np.array([2.0, -1.0], np.float32)


def _blob_points(split: str, count: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng(0 if split == "train" else 1)
    return (BLOB_MEAN[:dim] + 0.1 * rng.standard_normal((count, dim))).astype(np.float32)


class _BlobSource:
    SIZES = {"train": 96, "test": 32}

    def __init__(self, data_config):
        self._dim = data_config.dim

    def info(self):
        return data.DatasetInfo((self._dim,), 0, dict(self.SIZES))

    def tokenizers(self):
        return {}

    def batches(self, split, local_batch, seed, *, train, process_index, process_count):
        points = _blob_points(split, self.SIZES[split], self._dim)[process_index::process_count]
        if train:

            def load(index, _):
                rows = np.random.default_rng([seed, index]).integers(0, len(points), local_batch)
                return {"x": points[rows]}

            return grain.MapDataset.range(1).repeat().map_with_index(load)

        def load_eval(step):
            rows = np.arange(step * local_batch, (step + 1) * local_batch)
            real = rows < len(points)
            x = np.zeros((local_batch, self._dim), np.float32)
            x[real] = points[rows[real]]
            return {"x": x, "mask": real.astype(np.float32)}

        return grain.MapDataset.range(-(-len(points) // local_batch)).map(load_eval)


def _register_toy_kind_and_family():
    if "vectors" in data.KINDS:
        return

    class VectorsKind(data.kinds.Kind):
        name = "vectors"
        datasets = Registry("dataset", "config.data.name")
        fields = {"dim": 2}

        def accepts(self, name):
            return name == "titanic"  # a TFDS catalog dataset (of tabular rows)

        def check_config(self, data_config):
            if data_config.dim not in (1, 2):
                raise ConfigError(f"config.data.dim: {data_config.dim!r}, must be 1 or 2")

        def open(self, data_config):
            return _BlobSource(data_config)

    VectorsKind.datasets.register("blobs")(_BlobSource)
    data.KINDS.register("vectors")(VectorsKind())

    def validate(config, info):
        del config, info

    def make_steps(config, info, axis_name=None):
        optimizer = train_state.make_optimizer(config.optim, config.train.num_steps, False)

        def init(rng, batch):
            return train_state.create({"mu": jnp.zeros(info.image_shape)}, optimizer, rng)

        def train_step(state, batch):
            def loss_of(params):
                return jnp.mean(jnp.sum(jnp.square(batch["x"] - params["mu"]), -1))

            loss, grads = jax.value_and_grad(loss_of)(state.params)
            return train_state.apply_gradients(state, grads, optimizer), {"loss": loss}

        def sample(state, batch, rng):
            del batch
            return {"points": state.params["mu"] + jax.random.normal(rng, (4, *info.image_shape))}

        spec = {"x": jax.ShapeDtypeStruct((1, *info.image_shape), jnp.float32)}
        return Steps(init, train_step, eval_steps={}, sample=sample, batch_spec=spec)

    def write_points(config, name, array, stem):
        del config, name
        np.savetxt(stem + ".csv", array, delimiter=",")
        return stem + ".csv"

    FAMILIES.register("mean_fit")(Family(validate, make_steps, write_sample=write_points))


def _toy_config():
    config = base_config()
    config.family = "mean_fit"
    config.data.name = "blobs"
    config.data.update(data.kind_fields("vectors"))
    config.optim.lr = 0.1
    config.train.update(num_steps=60, batch_size=8, log_every=20, ckpt_every=30, eval_every=60)
    config.train.sample_every = 60
    config.sample.num_samples = 4
    return config


def test_a_kind_and_a_family_registered_here_train_through_the_loop(tmp_path):
    _register_toy_kind_and_family()
    config = _toy_config()
    state = loop.train(config, str(tmp_path), loop.check(config, str(tmp_path)))
    # Adam with lr 0.1 fits the mean of the train points (the minimiser of the loss).
    expected = _blob_points("train", 96, 2).mean(0)
    np.testing.assert_allclose(np.asarray(state.params["mu"]), expected, atol=0.15)
    (written,) = (tmp_path / "samples").iterdir()
    assert written.name == "points_0000060.csv"
    assert np.loadtxt(written, delimiter=",").shape == (4, 2)
    run = runs.load_run(config, str(tmp_path))  # and the run loads back
    assert run.step == 60 and run.tokenizer is None
    np.testing.assert_allclose(run.state.params["mu"], state.params["mu"])


def test_a_kinds_own_fields_are_checked_and_named():
    _register_toy_kind_and_family()
    config = _toy_config()
    config.data.dim = 3
    with pytest.raises(ConfigError, match=r"^config\.data\.dim: 3, must be 1 or 2"):
        loop.check(config)
    del config.data["dim"]
    with pytest.raises(ConfigError, match=r"^config\.data\.dim: missing; vectors datasets"):
        loop.check(config)


def test_a_kind_claims_catalog_names_before_the_catch_all_images_kind():
    _register_toy_kind_and_family()
    assert data.KINDS.get("images").accepts("titanic")  # in the TFDS catalog
    assert data.kind_of("titanic").name == "vectors"
    assert data.kind_of("coco_captions").name == "captions"  # claimed by the captions kind


def test_text_fields_live_with_the_text_kind_only():
    assert "seq_len" not in base_config().data
    assert set(data.kind_fields("text")) == {
        "seq_len",
        "tokenizer",
        "vocab_size",
        "text_file",
        "val_fraction",
    }
    assert data.kind_of("mnist").name == "images" and data.kind_of("cifar10").name == "images"
    assert data.kind_of("tiny_shakespeare").name == "text"  # before TFDS's own tiny_shakespeare


def test_unknown_family_names_the_field():
    with pytest.raises(ConfigError, match=r"^config\.family: unknown family 'vea'; choose from"):
        get_family("vea")


# ----------------------------------------------------------------------------- loss.kw


@pytest.mark.parametrize(
    "kw, field",
    [({"beta": 1.0, "betta": 4.0}, "config.loss.kw.betta"), ({"likelihood": "x"}, "likelihood")],
)
def test_unknown_loss_keyword_is_a_config_error_before_compiling(kw, field):
    config = vae_smoke_config()
    config.loss.kw = ConfigDict(kw)
    with pytest.raises(ConfigError, match=f"^config\\.loss\\.kw\\.{field.split('.')[-1]}: "):
        loop.check(config)


def test_loss_keywords_follow_the_loss_signature():
    vae, gan = get_family("vae"), get_family("gan")
    config = vae_smoke_config()
    check_loss_kw(config, vae)  # beta: an option of "elbo"
    config.loss.name = "iwae"  # which has no beta
    with pytest.raises(ConfigError, match=r"^config\.loss\.kw\.beta: .*'iwae'; its options: none"):
        check_loss_kw(config, vae)
    config = ConfigDict({"family": "gan", "loss": {"name": "hinge", "kw": {"gp_weight": 0.0}}})
    check_loss_kw(config, gan)  # read by the family itself
    config.loss.kw.gp_wieght = 1.0
    with pytest.raises(ConfigError, match=r"^config\.loss\.kw\.gp_wieght: "):
        check_loss_kw(config, gan)


# ----------------------------------------------------------------------------- TensorBoard


def _events(folder: pathlib.Path) -> list:
    """Every Event of the TFRecord event files in `folder` (tensorboard is not installed:
    records are length u64, its crc u32, the Event proto, its crc u32)."""
    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        content = path.read_bytes()
        offset = 0
        while offset < len(content):
            (length,) = struct.unpack("<Q", content[offset : offset + 8])
            record = content[offset + 12 : offset + 12 + length]
            events.append(event_pb2.Event.FromString(record))
            offset += 12 + length + 4
    return events


def test_sample_grids_are_in_tensorboards_images_tab(tmp_path):
    pixels = np.zeros((6, 10, 3), np.uint8)
    pixels[2, 3] = (255, 0, 0)
    (tmp_path / "samples").mkdir()
    png = tmp_path / "samples" / "prior_0000020.png"
    Image.fromarray(pixels).save(png)
    writer = MetricWriter(str(tmp_path), 0)
    writer.write_images(20, [str(png), str(tmp_path / "samples" / "text_0000020.txt")])
    writer.close()
    images = [
        (event.step, value)
        for event in _events(tmp_path / "tensorboard")
        for value in event.summary.value
        if value.HasField("image")
    ]
    assert [(step, value.tag) for step, value in images] == [(20, "samples/prior")]
    image = images[0][1].image
    assert (image.width, image.height, image.colorspace) == (10, 6, 3)
    decoded = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)))
    np.testing.assert_array_equal(decoded, pixels)


# ----------------------------------------------------------------------------- evaluate --evals


@pytest.mark.parametrize(
    "flags",
    [
        ("--workdir={w}", "--evals=fid,fdi"),
        ("--workdir={w}", "--evals", "fid,fdi"),  # once silently ignored
        ("--workdir", "{w}", "--evals", "fid,fdi"),
    ],
    ids=["equals", "space", "both_space"],
)
def test_evaluate_with_an_unknown_evaluator_is_one_line_exit_2(tmp_path, flags):
    (tmp_path / "config.json").write_text(json.dumps(vae_smoke_config().to_dict()))
    result = run_script("evaluate", *(flag.format(w=tmp_path) for flag in flags), check=False)
    assert result.returncode == 2
    (line,) = stderr_lines(result)
    assert line.startswith("error: --evals: unknown evaluator 'fdi'; choose from ")
    assert "fid" in line and "kid" in line and "is" in line
