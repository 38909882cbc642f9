"""PNG grids: layout and pixel mapping."""

import numpy as np
from PIL import Image

from jaxgen import images


def test_pixel_mapping_endpoints():
    np.testing.assert_array_equal(
        images.to_uint8(np.array([-1.0, 0.0, 1.0, 5.0])), [0, 128, 255, 255]
    )


def test_grid_places_each_image():
    tiles = np.stack([np.full((3, 4, 1), v) for v in (-1.0, 1.0, 1.0, -1.0, 1.0)])  # 5 images
    grid = images.make_grid(tiles, padding=1)
    assert grid.shape == (2 * 4 + 1, 3 * 5 + 1, 1)  # 2 rows x 3 columns
    assert grid[1, 1 + 5, 0] == 255 and grid[1, 1, 0] == 0  # second tile white, first black


def test_save_grid_of_rows_and_columns(tmp_path):
    path = images.save_grid(np.zeros((2, 3, 8, 8, 3)), str(tmp_path / "g.png"))
    with Image.open(path) as image:
        assert image.size == (3 * 10 + 2, 2 * 10 + 2) and image.mode == "RGB"
