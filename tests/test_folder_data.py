"""The images kind's "folder" dataset: image files of config.data.image_dir, tested on a few
generated PNGs (what configs/stylegan2/ffhq.py reads)."""

import numpy as np
import pytest
from PIL import Image

from jaxgen import data
from jaxgen.config import ConfigError, base_config
from jaxgen.data import DataError
from jaxgen.data import folder as folder_data
from tests.helpers import write_pngs


def folder_config(image_dir, **fields):
    config = base_config().data
    config.name = "folder"
    config.image_dir = str(image_dir)
    config.image_size = 16
    config.val_fraction = 0.25
    config.update(fields)
    return config


def test_splits_shapes_and_pixels(tmp_path):
    write_pngs(tmp_path, count=8, size=(40, 36))
    config = folder_config(tmp_path)
    info = data.get_info(config)
    assert info.image_shape == (16, 16, 3) and info.num_classes == 0
    assert info.num_examples == {"train": 6, "test": 2}
    batch = next(data.make_iterator(config, "train", 3, seed=0, train=True))
    assert batch["image"].shape == (3, 16, 16, 3) and batch["image"].dtype == np.float32
    assert (batch["label"] == 0).all()
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    # Every training image is one of the first 6 files, centre-cropped and resized like PIL does.
    expected = []
    for i in range(6):
        with Image.open(tmp_path / f"{i:03d}.png") as image:
            square = image.convert("RGB").crop((2, 0, 38, 36)).resize((16, 16), Image.LANCZOS)
        expected.append(np.asarray(square, np.float32) / 127.5 - 1.0)
    for image in batch["image"]:
        assert min(np.abs(image - e).max() for e in expected) < 1e-5
    evaluation = list(data.make_iterator(config, "test", 2, seed=0, train=False))
    assert len(evaluation) == 1 and evaluation[0]["mask"].tolist() == [1.0, 1.0]


def test_bad_folders_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"^config\.data\.image_dir: .* is not a folder"):
        data.check_config(folder_config(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"^config\.data\.image_size"):
        data.check_config(folder_config(tmp_path, image_size=2))
    with pytest.raises(ConfigError, match=r"^config\.data\.eval_split"):
        data.check_config(folder_config(tmp_path, eval_split="validation"))
    (tmp_path / "only.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="1 image files"):
        data.get_info(folder_config(tmp_path))
    write_pngs(tmp_path / "more", count=3)
    with pytest.raises(DataError, match=r"only\.png: not a readable image"):
        folder_data.load_image(tmp_path / "only.png", 16)
