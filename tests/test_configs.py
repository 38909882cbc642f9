"""Every config file loads with each of its arguments, and its smoke variant validates."""

import glob
import re

import pytest
import tensorflow_datasets as tfds

from jaxgen.config import smoke
from jaxgen.data import DATASETS, sources
from jaxgen.data.kinds import own_dataset_names
from jaxgen.train import loop
from tests.helpers import ROOT, load_config, write_pngs
from tests.stages import hollow_stages

CONFIG_FILES = sorted(
    str(p.relative_to(ROOT))
    for p in map(__import__("pathlib").Path, glob.glob(str(ROOT / "configs/*/*.py")))
)


def declared_arguments(path: str) -> list[str]:
    """The arguments a config's docstring documents, in quotes: "smoke", "conv", ..."""
    doc = (ROOT / path).read_text().split('"""')[1]
    return sorted(set(re.findall(r'"([a-z0-9_]+)"', doc.split("Arguments", 1)[-1])))


def check_on_mock_catalog(config, monkeypatch):
    """loop.check of a config on a TFDS catalog dataset (cifar10), which cannot be downloaded
    here: TFDS's mock data stands in for the download, so the machine counts as online."""
    monkeypatch.setattr(sources, "_reachable", lambda host, timeout: None)
    with tfds.testing.mock_data(num_examples=64):
        loop.check(config)


def test_there_are_configs():
    assert "configs/vae/mnist.py" in CONFIG_FILES


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_config_loads_with_every_documented_argument(path):
    arguments = declared_arguments(path)
    assert "smoke" in arguments, f"{path} must accept smoke"
    for arg in arguments:
        config = load_config(path, arg)
        assert config.family and config.model.name and config.loss.name


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory):
    """Hollow autoencoder and CLIP runs per dataset, for latent diffusion configs to name."""
    made = {}

    def get(config) -> tuple[str, str]:
        dataset = "emoji" if config.data.name == "emoji" else "mnist"
        arg = "64,smoke" if dataset == "emoji" and config.data.image_size == 64 else "smoke"
        if arg not in made.setdefault(dataset, {}):
            made[dataset][arg] = hollow_stages(tmp_path_factory.mktemp(dataset), dataset, arg)
        return made[dataset][arg]

    return get


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_smoke_variant_validates(path, monkeypatch, stage_runs, tmp_path):
    for arg in declared_arguments(path):
        config = load_config(path, f"{arg},smoke" if arg != "smoke" else "smoke")
        if config.family == "latent_diffusion":  # the earlier stages it names
            config.model.autoencoder, config.model.text_encoder = stage_runs(config)
        if config.data.name == "folder":  # a folder of images the user names
            config.data.image_dir = str(write_pngs(tmp_path / "images"))
            loop.check(config)
        elif config.data.name in own_dataset_names():  # every kind's own datasets
            loop.check(config)
        else:
            check_on_mock_catalog(config, monkeypatch)


def test_unknown_argument_is_rejected():
    with pytest.raises(ValueError, match="unknown argument"):
        load_config("configs/vae/mnist.py", "cnn")


IMAGE_FAMILIES = ("vae", "gan", "ddpm", "stylegan2")
IMAGE_CONFIGS = [p for p in CONFIG_FILES if load_config(p).family in IMAGE_FAMILIES]


@pytest.mark.parametrize("path", IMAGE_CONFIGS)
def test_every_image_config_has_a_fid_variant_that_validates(path, tmp_path, monkeypatch):
    assert "fid" in declared_arguments(path), f"{path} must document its fid argument"
    config = load_config(path, "fid")
    sample_evals = {name: entry for name, entry in config.evals.items() if "network" in entry}
    assert {name: entry.type for name, entry in sample_evals.items()} == {
        "fid": "fid",
        "kid": "kid",
        "inception_score": "is",
    }
    # MNIST-like data has a domain classifier; anything else is scored with Inception-v3.
    network = "domain" if config.data.name in ("mnist", "fashion_mnist") else "inception"
    assert {entry.network for entry in sample_evals.values()} == {network}
    assert all(
        entry.split == "train" and entry.num_examples == 0 for entry in sample_evals.values()
    )
    weights = tmp_path / "inception.npz"  # the check only needs the file to exist
    weights.write_bytes(b"")
    monkeypatch.setenv("JAXGEN_INCEPTION_WEIGHTS", str(weights))
    if config.data.name == "folder":
        config.data.image_dir = str(write_pngs(tmp_path / "images"))
        loop.check(config)
    elif config.data.name in DATASETS:
        loop.check(config)
    else:
        check_on_mock_catalog(config, monkeypatch)


def test_smoke_helper_shrinks_the_schedule_and_updates_sections():
    config = load_config("configs/vae/mnist.py")
    smoke(config, num_steps=7, every=3, warmup_steps=4, model={"latent_dim": 2})
    assert (config.train.num_steps, config.train.batch_size, config.train.log_every) == (7, 32, 5)
    assert config.train.eval_every == config.train.ckpt_every == config.train.sample_every == 3
    assert config.optim.warmup_steps == 4  # capped from 500
    assert config.model.latent_dim == 2 and config.model.hidden == (500, 500)
    smoke(config, warmup_steps=10, evals={"nll": {"chunk": 4}})
    assert config.optim.warmup_steps == 4  # never raised
    assert config.evals.nll.chunk == 4 and config.evals.nll.num_samples == 1000


def _flat(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        nested = isinstance(value, dict)
        out.update(_flat(value, f"{prefix}{key}.") if nested else {prefix + key: value})
    return out


def test_wmt14_is_the_papers_base_transformer_on_the_bible_recipe():
    """configs/seq2seq/wmt14_de_en.py starts from bible_es_en.py: field by field, the base
    model of Vaswani et al. 2017 (table 3, "base"; section 5.3-5.4 and 6.1), and it differs from
    the Bible recipe only in the data, the dropout and the lengths it sets itself."""
    config = load_config("configs/seq2seq/wmt14_de_en.py")
    paper = {
        "family": "seq2seq",
        "model.name": "transformer",
        "model.num_layers": 6,  # N
        "model.num_decoder_layers": 6,
        "model.width": 512,  # d_model
        "model.ff_width": 2048,  # d_ff
        "model.num_heads": 8,  # h
        "model.dropout": 0.1,  # P_drop
        "model.norm": "post",  # LayerNorm(x + Sublayer(x))
        "loss.name": "cross_entropy",
        "loss.kw.label_smoothing": 0.1,  # eps_ls
        "optim.name": "adam",
        "optim.b1": 0.9,
        "optim.b2": 0.98,
        "optim.eps": 1e-9,
        "optim.schedule": "rsqrt",  # d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)
        "optim.warmup_steps": 4000,
        "sample.num_beams": 4,  # beam size 4, length penalty alpha 0.6
        "sample.length_penalty": 0.6,
        "data.name": "wmt14_translate/de-en",
        "data.source": "de",
        "data.target": "en",
        "data.vocab_size": 37_000,  # shared source-target BPE
    }
    flat = _flat(config.to_dict())
    assert {key: flat[key] for key in paper} == paper
    assert config.optim.lr == pytest.approx((512 * 4000) ** -0.5, rel=2e-3)  # the peak
    bible = _flat(load_config("configs/seq2seq/bible_es_en.py").to_dict())
    differ = {key for key in flat.keys() | bible.keys() if flat.get(key) != bible.get(key)}
    assert differ == {
        "data.name",
        "data.source",
        "data.vocab_size",
        "data.source_len",
        "data.target_len",
        "model.dropout",
        "model.max_len",
        "train.num_steps",
        "train.eval_every",
        "train.ckpt_every",
        "train.sample_every",
        "evals.bleu.num_examples",
        "sample.max_new_tokens",
    }
    smoke = load_config("configs/seq2seq/wmt14_de_en.py", "smoke")
    assert smoke.model.width == 32 and smoke.data.name == "wmt14_translate/de-en"
