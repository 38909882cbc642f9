"""The FID Inception-v3 (pytorch-fid / TF FID's network) in Flax.

The network behind the published FID numbers is TF's 2015-12-05 Inception graph,
ported to PyTorch by pytorch-fid as `pt_inception-2015-12-05-6726825d.pth`:
torchvision's Inception3 with 1008 classes and the FIDInceptionA/C/E blocks,
which average-pool without counting the zero padding (TF's behaviour) and, in
the last block, max-pool instead of average-pool. Module names here follow the
PyTorch state dict, so `inception_weights.convert` is a rename and a transpose.

Input: images [B, H, W, C] in [-1, 1] (C = 1 is repeated to RGB), resized to
299 x 299 bilinearly without antialiasing (F.interpolate(..., align_corners=False),
as pytorch-fid). pytorch-fid maps [0, 1] inputs to 2x - 1 after the resize;
resizing is linear, so resizing [-1, 1] images directly is the same.
Output: (pool3 features [B, 2048], logits [B, 1008]); the logits are the
fc layer on the same pooled features (the Inception Score's classifier).

The weights (converting pytorch-fid's and StyleGAN3's files, finding and downloading them) and
the "inception" entry of networks.NETWORKS are in metrics/inception_weights.py.
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.metrics.networks import FeatureNetwork, fingerprint

PyTree = Any
INPUT_SIZE = 299
NUM_CLASSES = 1008  # TF's 2015 graph: 1000 ImageNet classes + 8 unused
FEATURE_DIM = 2048


class BasicConv(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3, running statistics) + ReLU: torchvision's BasicConv2d."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        pad = [(self.padding[0], self.padding[0]), (self.padding[1], self.padding[1])]
        x = nn.Conv(self.features, self.kernel, self.stride, pad, use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x):
    # TF averages over the real pixels only (count_include_pad=False in pytorch-fid).
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), (2, 2))  # VALID, as torch's MaxPool2d(3, 2)


class InceptionA(nn.Module):  # Mixed_5b/c/d (FIDInceptionA)
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):  # Mixed_6a
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):  # Mixed_6b/c/d/e (FIDInceptionC)
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):  # Mixed_7a
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(
    nn.Module
):  # Mixed_7b (FIDInceptionE_1, avg pool) and 7c (FIDInceptionE_2, max pool)
    pool: str  # "avg" or "max"

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
            ],
            axis=-1,
        )
        bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
            ],
            axis=-1,
        )
        if self.pool == "avg":
            pooled = _avg_pool_3x3(x)
        else:  # TF's graph max-pools here (pytorch-fid's FIDInceptionE_2)
            pooled = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
        bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def preprocess(images: jax.Array) -> jax.Array:
    """[B, H, W, 1 or 3] in [-1, 1] -> [B, 299, 299, 3] as pytorch-fid feeds the network."""
    images = images.astype(jnp.float32)
    if images.shape[-1] == 1:
        images = jnp.repeat(images, 3, axis=-1)  # grayscale -> RGB
    size = (images.shape[0], INPUT_SIZE, INPUT_SIZE, 3)
    return jax.image.resize(images, size, "bilinear", antialias=False)


class FIDInceptionV3(nn.Module):
    """Images [B, H, W, C] in [-1, 1] -> (pool3 features [B, 2048], logits [B, 1008]).

    classifier=False leaves out the fc layer (weights that have none, as the StyleGAN3
    TorchScript network): the logits are then [B, 0].
    """

    classifier: bool = True

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = preprocess(images)  # [B, 299, 299, 3]
        x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)  # [B, 149, 149, 32]
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)  # [B, 147, 147, 32]
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)  # [B, 73, 73, 64]
        x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)  # [B, 71, 71, 192]
        x = _max_pool_3x3_s2(x)  # [B, 35, 35, 192]
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)  # [B, 35, 35, 288]
        x = InceptionB(name="Mixed_6a")(x)  # [B, 17, 17, 768]
        for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160)):
            x = InceptionC(channels, name=name)(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)  # [B, 8, 8, 1280]
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)  # [B, 8, 8, 2048]
        features = jnp.mean(x, axis=(1, 2))  # [B, 2048]: pool3
        if not self.classifier:
            return features, jnp.zeros((features.shape[0], 0), features.dtype)
        logits = nn.Dense(NUM_CLASSES, name="fc")(features)  # [B, 1008]
        return features, logits


def variable_shapes() -> PyTree:
    """{"params", "batch_stats"} as ShapeDtypeStructs (traced, not compiled)."""
    return jax.eval_shape(
        FIDInceptionV3().init, jax.random.PRNGKey(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3))
    )


def init_variables(seed: int = 0) -> PyTree:
    """Random variables for tests and shapes; real use loads weights (`load_variables`).

    Kernels are He-normal, so activations keep their scale through the ReLUs
    (LeCun-normal shrinks the pool features to ~1e-4), and BatchNorm is the identity
    (mean 0, var 1, scale 1, bias 0). Filled in NumPy: compiling Flax's init at 299 x 299 takes minutes on CPU.
    """
    rng = np.random.default_rng(seed)
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variable_shapes()))
    filled = {}
    for path, leaf in flat.items():
        if path[-1] == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape)
        elif path[-1] in ("scale", "var"):
            value = np.ones(leaf.shape)
        else:  # bias, mean
            value = np.zeros(leaf.shape)
        filled[path] = jnp.asarray(value, jnp.float32)
    return flax.traverse_util.unflatten_dict(filled)


def network(variables: PyTree, cache_dir: str) -> FeatureNetwork:
    """The FeatureNetwork of these variables; without an fc layer its logits are [B, 0]."""
    classifier = "fc" in variables["params"]
    model = FIDInceptionV3(classifier=classifier)
    return FeatureNetwork(
        name="inception",
        params=variables,
        apply=lambda variables, images: model.apply(variables, images),
        image_shape=None,
        num_classes=NUM_CLASSES if classifier else 0,
        cache_dir=cache_dir,
        fingerprint=fingerprint(variables),
    )
