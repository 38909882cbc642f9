"""Every config file loads with each of its arguments, and its smoke variant validates."""

import glob
import re

import pytest
import tensorflow_datasets as tfds

from jaxgen.data import DATASETS, TEXT_DATASETS
from jaxgen.train import loop
from tests.helpers import ROOT, load_config

CONFIG_FILES = sorted(
    str(p.relative_to(ROOT))
    for p in map(__import__("pathlib").Path, glob.glob(str(ROOT / "configs/*/*.py")))
)


def declared_arguments(path: str) -> list[str]:
    """The arguments a config's docstring documents, in quotes: "smoke", "conv", ..."""
    doc = (ROOT / path).read_text().split('"""')[1]
    return sorted(set(re.findall(r'"([a-z0-9_]+)"', doc.split("Arguments", 1)[-1])))


def test_there_are_configs():
    assert "configs/vae/mnist.py" in CONFIG_FILES


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_config_loads_with_every_documented_argument(path):
    arguments = declared_arguments(path)
    assert "smoke" in arguments, f"{path} must accept smoke"
    for arg in arguments:
        config = load_config(path, arg)
        assert config.family and config.model.name and config.loss.name


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_smoke_variant_validates(path):
    for arg in declared_arguments(path):
        config = load_config(path, f"{arg},smoke" if arg != "smoke" else "smoke")
        if config.data.name in DATASETS or config.data.name in TEXT_DATASETS:
            loop.check(config)
        else:  # a TFDS catalog dataset (cifar10) cannot be downloaded here: mock it
            with tfds.testing.mock_data(num_examples=64):
                loop.check(config)


def test_unknown_argument_is_rejected():
    with pytest.raises(ValueError, match="unknown argument"):
        load_config("configs/vae/mnist.py", "cnn")
