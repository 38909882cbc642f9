"""FID (and KID) between two image folders or saved statistics, as `python -m pytorch_fid` works.

    python -m experiments.convert_inception --download     # once: the standard weights
    python -m experiments.fid DIR_A DIR_B                  # prints FID: <value>
    python -m experiments.fid DIR_A DIR_B --kid            # and KID: <mean> (std <std>)
    python -m experiments.fid DIR --save_stats=F.npz       # mu, sigma of DIR, for later
    python -m experiments.fid samples/ F.npz
    python -m experiments.fid data:mnist:test data:mnist:train   # a dataset split, by name

Each argument is a folder of images (.png, .jpg, .jpeg, .bmp, .pgm, .ppm, .tif, .tiff, .webp,
not searched recursively, as pytorch-fid) or an .npz with `mu` and `sigma` (pytorch-fid's
stats files load as they are), or `data:<dataset>:<split>[:<first N examples>]`, a split read
through jaxgen.data in [-1, 1] (its statistics are cached in the cache dir, as the `fid`
evaluator's). Preprocessing is pytorch-fid's: RGB, [0, 1], bilinear resize to
299 x 299 (align_corners=False, no antialiasing), 2x - 1, then the Inception's pool features;
statistics are the mean and the unbiased covariance, and the distance is pytorch-fid's (its
eps fallback included), so the value is pytorch-fid's with the same weights. TF's FID (and
StyleGAN3's) feeds (x * 255 - 128) / 128 instead: --tf_range does that; README.md
("Real FID") says how much it moves a FID.
Weights: --weights, else $JAXGEN_INCEPTION_WEIGHTS, else the cache dir's converted file.
KID (Binkowski et al. 2018) needs features: folders or data splits (the first 10,000
examples of a split), not a stats file.
Deliberately left out: recursive folders, zip archives, and Inception Score (the wheel's
network has no classifier).
"""

import os

import jax
import numpy as np
from absl import flags
from PIL import Image, UnidentifiedImageError

from jaxgen import cli, parallel
from jaxgen.config import ConfigDict, ConfigError, base_config
from jaxgen.metrics import fid, inception_weights, networks

flags.DEFINE_string("save_stats", None, "Write mu and sigma of the one folder given to this .npz.")
flags.DEFINE_bool("kid", False, "Also print the Kernel Inception Distance (two folders).")
# allow_override: clip_score.py defines batch_size too, and tests import both into one process.
flags.DEFINE_integer(
    "batch_size", 50, "Images per Inception batch (rounded up to the devices).", allow_override=True
)
flags.DEFINE_string(
    "weights",
    "",
    f"Converted Inception weights (default: ${inception_weights.WEIGHTS_ENV}, else cache).",
)
flags.DEFINE_bool("tf_range", False, "Feed TF's (x * 255 - 128) / 128, not 2x - 1.")
flags.DEFINE_integer("kid_subsets", 100, "KID: random subsets averaged.")
flags.DEFINE_integer("kid_subset_size", 1000, "KID: images per subset (capped at the set size).")

IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")


def list_images(folder: str) -> list[str]:
    """The image files directly in `folder`, sorted; ConfigError if fewer than 2."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    paths = [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
    if not paths:
        raise ConfigError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    if len(paths) < 2:
        raise ConfigError(f"{folder}: 1 image; FID needs at least 2 (a covariance)")
    return paths


def check_images(paths: list[str]) -> None:
    """Every file opens as an image (its header: cheap), so that a bad file fails before any
    compilation; decoding errors later are one line too (`read_image`)."""
    for path in paths:
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018 (parses the header)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise ConfigError(f"{path}: unreadable image ({error})") from None


def read_image(path: str) -> np.ndarray:
    """[H, W, 3] float32 in [-1, 1]: PIL's RGB conversion, then 2x - 1 (pytorch-fid's range)."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), np.float32)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ConfigError(f"{path}: unreadable image ({error})") from None
    return pixels / 255.0 * 2.0 - 1.0


def folder_features(
    folder: str, network: networks.FeatureNetwork, batch_size: int, placement: parallel.Placement
) -> np.ndarray:
    """Pool features [N, 2048] of every image in `folder`, in file order.

    Images go through in batches of equal sizes (one compiled program per image size);
    a short batch is padded with zeros and the padding dropped.
    """
    apply = networks.compile_apply(network, placement)
    paths = list_images(folder)
    rows: list[np.ndarray] = []
    pending: list[np.ndarray] = []

    def flush():
        images = np.stack(pending)
        padded = np.concatenate([images, np.zeros((batch_size - len(images),) + images.shape[1:])])
        batch = placement.put_batch({"image": padded.astype(np.float32)})["image"]
        features, _ = jax.device_get(apply(network.params, batch))
        rows.append(np.asarray(features[: len(images)], np.float64))
        pending.clear()

    for path in paths:
        image = read_image(path)
        if pending and (image.shape != pending[0].shape or len(pending) == batch_size):
            flush()
        pending.append(image)
    flush()
    return np.concatenate(rows)


def read_stats(path: str) -> fid.Gaussian:
    """mu [D], sigma [D, D] of an .npz (ours or pytorch-fid's); ConfigError naming the file."""
    try:
        with np.load(path) as stats:
            if "mu" not in stats.files or "sigma" not in stats.files:
                raise ConfigError(f"{path}: a statistics file holds arrays 'mu' and 'sigma'")
            mean, cov = np.asarray(stats["mu"], np.float64), np.asarray(stats["sigma"], np.float64)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: unreadable statistics ({error})") from None
    if mean.ndim != 1 or cov.shape != (len(mean), len(mean)):
        raise ConfigError(f"{path}: mu {mean.shape} and sigma {cov.shape} do not fit together")
    return fid.Gaussian(mean, cov)


def data_split(argument: str) -> tuple[ConfigDict, str, int]:
    """`data:<dataset>:<split>[:<N>]` -> (data config, split, N or 0 for all)."""
    parts = argument.split(":")
    limit = parts[3] if len(parts) == 4 else "0"
    if len(parts) not in (3, 4) or not parts[1] or not parts[2] or not limit.isdigit():
        raise ConfigError(f"{argument}: write a dataset split as data:<dataset>:<split>[:<N>]")
    config = base_config().data
    config.name = parts[1]
    return config, parts[2], int(limit)


def tf_range(network: networks.FeatureNetwork) -> networks.FeatureNetwork:
    """The network fed TF's range: 2x - 1 = y -> (255 (y + 1) / 2 - 128) / 128. Resizing is
    linear and keeps constants, so applying it before the network's resize is the same."""
    apply = network.apply
    return network._replace(
        name=f"{network.name}_tf_range",  # its own statistics cache
        apply=lambda params, images: apply(params, (127.5 * images - 0.5) / 128.0),
    )


def check_argument(path: str) -> str:
    """ "folder", "stats" or "data"; ConfigError for anything else."""
    if path.startswith("data:"):
        data_split(path)
        return "data"
    if os.path.isdir(path):
        return "folder"
    if not os.path.exists(path):
        raise ConfigError(f"{path}: no such folder or file")
    if path.endswith(".npz"):
        return "stats"
    raise ConfigError(f"{path}: neither an image folder nor an .npz of statistics (mu, sigma)")


def main(argv):
    options = flags.FLAGS
    paths = argv[1:]
    wanted = 1 if options.save_stats else 2
    if len(paths) != wanted:
        usage = "DIR --save_stats=F.npz" if options.save_stats else "DIR_A DIR_B (folder or .npz)"
        raise ConfigError(f"expected {wanted} path(s): {usage}; got {len(paths)}")
    kinds = [check_argument(path) for path in paths]
    if options.save_stats and kinds[0] == "stats":
        raise ConfigError(f"--save_stats: {paths[0]} is already statistics")
    if options.kid and "stats" in kinds:
        raise ConfigError("--kid: needs features (folders or data splits); a .npz has none")
    if options.batch_size < 1:
        raise ConfigError(f"--batch_size: must be positive, got {options.batch_size}")
    for path, kind in zip(paths, kinds, strict=True):
        if kind == "folder":
            check_images(list_images(path))  # bad folders fail before loading anything
        elif kind == "stats":
            read_stats(path)
    network = None
    if "folder" in kinds or "data" in kinds:
        weights = inception_weights.resolve_weights(options.weights, "--weights")
        network = inception_weights.load(weights, "--weights")
        if options.tf_range:
            network = tf_range(network)
        placement = parallel.Placement(base_config().mesh)
        batch_size = -(-options.batch_size // placement.num_devices) * placement.num_devices

    features, gaussians = [], []
    for path, kind in zip(paths, kinds, strict=True):
        if kind == "stats":
            gaussians.append(read_stats(path))
        elif kind == "data":
            data_config, split, limit = data_split(path)
            reference = networks.reference(
                network, data_config, split, batch_size, placement, limit
            )
            features.append(reference.features)
            gaussians.append(reference.gaussian)
        else:
            rows = folder_features(path, network, batch_size, placement)
            features.append(rows)
            gaussians.append(fid.gaussian_of(rows))

    if options.save_stats:
        out = options.save_stats
        try:
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            np.savez_compressed(out, mu=gaussians[0].mean, sigma=gaussians[0].cov)
        except OSError as error:
            raise ConfigError(f"--save_stats: cannot write {out} ({error})") from None
        print(f"written: {out}")
        return
    if gaussians[0].mean.shape != gaussians[1].mean.shape:
        raise ConfigError(
            f"{paths[1]}: statistics of dimension {gaussians[1].mean.shape[0]}, "
            f"{paths[0]}: {gaussians[0].mean.shape[0]}"
        )
    print(f"FID: {fid.frechet_distance(gaussians[0], gaussians[1])}")
    if options.kid:
        mean, std = fid.kernel_inception_distance(
            features[0], features[1], options.kid_subsets, options.kid_subset_size
        )
        print(f"KID: {mean} (std {std})")


if __name__ == "__main__":
    cli.run(main, takes_arguments=True)
