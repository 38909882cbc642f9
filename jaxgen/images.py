"""Image grids as PNG files."""

import math
import os

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Floats in [-1, 1] -> uint8 in [0, 255]."""
    return np.round((np.clip(np.asarray(images, np.float32), -1, 1) + 1) * 127.5).astype(np.uint8)


def make_grid(images: np.ndarray, padding: int = 2) -> np.ndarray:
    """[N, H, W, C] (a near-square grid) or [rows, cols, H, W, C] -> one uint8 image."""
    images = np.asarray(images)
    if images.ndim == 4:
        cols = math.ceil(math.sqrt(images.shape[0]))
        rows = math.ceil(images.shape[0] / cols)
        filler = np.full((rows * cols - images.shape[0],) + images.shape[1:], -1.0, images.dtype)
        images = np.concatenate([images, filler]).reshape((rows, cols) + images.shape[1:])
    rows, cols, height, width, channels = images.shape
    pixels = to_uint8(images)
    grid = np.zeros(
        (rows * (height + padding) + padding, cols * (width + padding) + padding, channels),
        np.uint8,
    )
    for r in range(rows):
        for c in range(cols):
            top, left = padding + r * (height + padding), padding + c * (width + padding)
            grid[top : top + height, left : left + width] = pixels[r, c]
    return grid


def save_grid(images: np.ndarray, path: str, padding: int = 2) -> str:
    """Write a grid of images in [-1, 1] to `path` (PNG); returns the path."""
    grid = make_grid(images, padding)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    mode = "L" if grid.shape[-1] == 1 else "RGB"
    Image.fromarray(grid[..., 0] if mode == "L" else grid, mode=mode).save(path)
    return path
