"""A diffusers Stable Diffusion folder's U-Net and VAE as jaxgen params (models/sd_unet.py, sd_vae.py).

    unet = read_unet(hf_dir)   # Component(model_config, params, origin)
    vae = read_vae(hf_dir)     # ... and vae.scaling_factor

The folder is what StableDiffusionPipeline.save_pretrained writes, or a Hub snapshot of SD 1.x /
2.x: <component>/config.json and <component>/diffusion_pytorch_model.safetensors, or its fp16
variant diffusion_pytorch_model.fp16.safetensors (read as float32); a .bin file needs torch and
says so in one line. config.json is read into the SD modules' config.model fields, and any
option those modules do not compute (another block type, class embeddings, ...) is a WeightError
naming the file and the key. The weights are then taken shape by shape in the structure of the
model's own init: each param path maps to diffusers' name (down_blocks_0_resnets_1/conv1/kernel
is down_blocks.0.resnets.1.conv1.weight), conv kernels are transposed from OIHW to HWIO and
linear weights from [out, in] to [in, out]; a missing or misshapen tensor, or one no param takes,
is a WeightError naming the file and the tensor. The CLIP text encoder and the tokenizer are
models/clip's concern; the scheduler config is jaxgen.sampling's.
"""

import os
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import pretrained
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.models import sd_unet, sd_vae
from jaxgen.pretrained import Tensors, WeightError, fit_params, read_weights

PyTree = Any
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
CONTEXT_LEN = 77  # CLIP's positions: only the init's shapes depend on it

# UNet2DConditionModel options SD 1.x/2.x leave at these values, which sd_unet computes.
UNET_FIXED = {
    "act_fn": "silu",
    "center_input_sample": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "encoder_hid_dim": None,
    "num_class_embeds": None,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_norm": None,
    "attention_type": "default",
    "num_attention_heads": None,
    "reverse_transformer_layers_per_block": None,
}
VAE_FIXED = {
    "act_fn": "silu",
    "latents_mean": None,
    "latents_std": None,
    "shift_factor": None,
    "norm_type": "group",
}
# Older VAE checkpoints' mid-block attention names (diffusers renames them when loading).
VAE_LEGACY = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class Component(NamedTuple):
    model_config: ConfigDict  # the SD module's config.model fields (with "name")
    params: PyTree
    origin: str  # the weights file read
    scaling_factor: float | None = None  # the VAE's


def read_config(hf_dir: str, component: str) -> tuple[dict, str]:
    """(config.json of hf_dir/component, its path); WeightError if it is missing or not JSON."""
    path = os.path.join(hf_dir, component, "config.json")
    raw = pretrained.read_json_object(path, f"the folder has no {component} component")
    return raw, path


def check_fixed(raw: dict, path: str, fixed: dict) -> None:
    for key, want in fixed.items():
        if key in raw and raw[key] != want and not (want is None and raw[key] in ("", [])):
            raise WeightError(
                f"{path}: {key}={raw[key]!r} is not supported (Stable Diffusion 1.x/2.x: {want!r})"
            )


def need(raw: dict, path: str, key: str) -> Any:
    if key not in raw:
        raise WeightError(f"{path}: no {key}")
    return raw[key]


def unet_config(raw: dict, path: str) -> ConfigDict:
    """config.model for sd_unet.SDUNet from a UNet2DConditionModel config.json."""
    check_fixed(raw, path, UNET_FIXED)
    channels = tuple(need(raw, path, "block_out_channels"))
    for field, known in (
        ("down_block_types", sd_unet.DOWN_BLOCKS),
        ("up_block_types", sd_unet.UP_BLOCKS),
    ):
        for block_type in need(raw, path, field):
            if block_type not in known:
                raise WeightError(
                    f"{path}: {field} has {block_type!r}, not supported (known: {', '.join(known)})"
                )
    heads = raw.get("attention_head_dim", 8)  # the number of heads, despite its name
    heads = tuple(heads) if isinstance(heads, list | tuple) else (heads,) * len(channels)
    layers = raw.get("transformer_layers_per_block", 1)
    if not isinstance(layers, int):
        raise WeightError(f"{path}: transformer_layers_per_block must be one integer")
    model = ConfigDict(
        dict(
            name="sd_unet",
            block_out_channels=channels,
            down_block_types=tuple(raw["down_block_types"]),
            up_block_types=tuple(raw["up_block_types"]),
            layers_per_block=need(raw, path, "layers_per_block"),
            attention_heads=heads,
            norm_num_groups=raw.get("norm_num_groups", 32),
            norm_eps=float(raw.get("norm_eps", 1e-5)),
            use_linear_projection=bool(raw.get("use_linear_projection", False)),
            upcast_attention=bool(raw.get("upcast_attention", False)),
            flip_sin_to_cos=bool(raw.get("flip_sin_to_cos", True)),
            freq_shift=raw.get("freq_shift", 0),
            transformer_layers_per_block=layers,
            out_channels=raw.get("out_channels", 4),
            in_channels=raw.get("in_channels", 4),
            sample_size=raw.get("sample_size", 64),
            cross_attention_dim=need(raw, path, "cross_attention_dim"),
            dtype="float32",
        )
    )
    try:
        sd_unet.check_config(model)
    except ConfigError as error:
        raise WeightError(f"{path}: {error}") from None
    return model


def vae_config(raw: dict, path: str) -> tuple[ConfigDict, float]:
    """(config.model for sd_vae.SDAutoencoderKL, scaling_factor) from an AutoencoderKL config."""
    check_fixed(raw, path, VAE_FIXED)
    channels = tuple(need(raw, path, "block_out_channels"))
    for field, known in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):  # fmt: skip
        for block_type in raw.get(field, [known] * len(channels)):
            if block_type != known:
                raise WeightError(
                    f"{path}: {field} has {block_type!r}, not supported (known: {known})"
                )
    model = ConfigDict(
        dict(
            name="sd_vae",
            block_out_channels=channels,
            layers_per_block=need(raw, path, "layers_per_block"),
            latent_channels=raw.get("latent_channels", 4),
            norm_num_groups=raw.get("norm_num_groups", 32),
            out_channels=raw.get("out_channels", 3),
            in_channels=raw.get("in_channels", 3),
            use_quant_conv=bool(raw.get("use_quant_conv", True)),
            use_post_quant_conv=bool(raw.get("use_post_quant_conv", True)),
            mid_block_add_attention=bool(raw.get("mid_block_add_attention", True)),
            sample_size=raw.get("sample_size", 512),
            dtype="float32",
        )
    )
    try:
        sd_vae.check_config(model)
    except ConfigError as error:
        raise WeightError(f"{path}: {error}") from None
    return model, float(raw.get("scaling_factor", 0.18215))


def diffusers_name(path: tuple[str, ...]) -> str:
    """The diffusers weight name of our param path (its last entry kernel, scale or bias)."""
    names = []
    for segment in path[:-1]:
        block = re.fullmatch(r"(down_blocks|up_blocks)_(\d+)_(\w+?)_(\d+)", segment)
        mid = re.fullmatch(r"mid_block_(\w+?)_(\d+)", segment)
        if block:
            names.append(".".join(block.groups()))
        elif mid:
            names.append(f"mid_block.{mid[1]}.{mid[2]}")
        elif segment.startswith("time_embedding_"):  # time_embedding.linear_1
            names.append(segment.replace("time_embedding_", "time_embedding."))
        elif re.fullmatch(r"\w+_\d+", segment) and not segment.startswith("linear_"):
            names.append(re.sub(r"_(\d+)$", r".\1", segment))  # to_out_0, net_2, ..._blocks_0
        else:
            names.append(segment)
    return ".".join(names) + (".bias" if path[-1] == "bias" else ".weight")


def to_torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """diffusers' shape of a param of ours: HWIO -> OIHW, [in, out] -> [out, in]."""
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(reversed(shape))


def from_torch(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    return value.T if value.ndim == 2 else value


def to_params(tensors: Tensors, init_params: PyTree) -> PyTree:
    """Our params in init_params' structure, each diffusers tensor taken and checked once."""

    def take(path, leaf):
        keys = tuple(key.key for key in path)
        return from_torch(tensors.take(diffusers_name(keys), to_torch_shape(leaf.shape)))

    params = jax.tree_util.tree_map_with_path(take, init_params)
    tensors.check_all_taken()
    return params


def read_component_weights(hf_dir: str, component: str) -> tuple[dict, str]:
    return read_weights(os.path.join(hf_dir, component), *WEIGHT_FILES)


def read_unet(hf_dir: str) -> Component:
    """The folder's U-Net: its config.model and params."""
    raw, path = read_config(hf_dir, "unet")
    model_config = unet_config(raw, path)
    weights, origin = read_component_weights(hf_dir, "unet")
    model = sd_unet.make_model(model_config)
    size = model_config.sample_size
    inputs = (
        jnp.zeros((1, size, size, model_config.in_channels)),
        jnp.zeros((1,), jnp.int32),
        jnp.zeros((1, CONTEXT_LEN, model_config.cross_attention_dim)),
    )
    init = jax.eval_shape(model.init, jax.random.PRNGKey(0), *inputs)["params"]
    params = to_params(Tensors(weights, origin), init)
    return Component(model_config, fit_params(init, params, origin), origin)


def read_vae(hf_dir: str) -> Component:
    """The folder's VAE: its config.model, params and scaling_factor."""
    raw, path = read_config(hf_dir, "vae")
    model_config, scaling_factor = vae_config(raw, path)
    weights, origin = read_component_weights(hf_dir, "vae")
    weights = {rename_legacy(name): value for name, value in weights.items()}
    model = sd_vae.make_model(model_config)
    image = jnp.zeros((1, 16, 16, model_config.in_channels))  # the params don't depend on it
    latents = jnp.zeros((1, *sd_vae.latent_shape(model_config, image.shape[1:])))
    init = jax.eval_shape(model.init, jax.random.PRNGKey(0), image, latents)["params"]
    params = to_params(Tensors(weights, origin), init)
    return Component(model_config, fit_params(init, params, origin), origin, scaling_factor)


def rename_legacy(name: str) -> str:
    parts = name.rsplit(".", 2)
    if "attentions" in name and len(parts) == 3 and parts[1] in VAE_LEGACY:
        return f"{parts[0]}.{VAE_LEGACY[parts[1]]}.{parts[2]}"
    return name
