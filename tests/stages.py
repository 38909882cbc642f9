"""Untrained earlier stages for text-to-image tests: runs written without training.

`untrained_run(config, workdir)` writes what experiments.train leaves behind (config.json,
data_info.json, the saved tokenizer, a checkpoint at the last step and, for an autoencoder, a
logged latent scale factor) for the freshly initialised state of `config`: a later stage can name it in seconds.
"""

import json
import os

import jax
import jax.numpy as jnp

from jaxgen import checkpoint, rundir
from jaxgen.family import get_family
from jaxgen.train import loop
from tests.helpers import load_config


def untrained_run(config, workdir, scale_factor: float = 1.0, seed: int = 0, params_fn=None) -> str:
    """`params_fn(params) -> params`, if given, changes the params (and EMA) before saving."""
    config = loop.resolve_config(config)  # a latent diffusion run copies its stages' configs
    info = rundir.check_config(config)
    steps = get_family(config.family).make_steps(config, info)
    state = jax.jit(steps.init)(jax.random.PRNGKey(seed), rundir.example_batch(steps))
    if steps.setup is not None:  # a latent diffusion run copies its frozen stages
        state = steps.setup(state)
    if params_fn is not None:
        state = state.replace(params=params_fn(state.params))
        if state.ema_params:
            state = state.replace(ema_params=params_fn(state.ema_params))
    rundir.write_run_files(config, info, workdir)
    ckpt = checkpoint.Checkpointer(workdir, config.ckpt)
    ckpt.save(config.train.num_steps, state, {"train": {}})
    ckpt.close()
    if config.family == "autoencoder":
        row = {"step": config.train.num_steps, "split": "eval"}
        row["latent_scale/scale_factor"] = scale_factor
        with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
            f.write(json.dumps(row) + "\n")
    return str(workdir)


def hollow_run(config, workdir, scale_factor: float = 1.0) -> str:
    """What the checks before compiling read of a run, and no params: config.json, the saved
    tokenizer, an empty checkpoints/<last step> folder and the logged scale factor."""
    os.makedirs(os.path.join(workdir, "checkpoints", str(config.train.num_steps)))
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    rundir.save_tokenizers(config.data, workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 1, "latent_scale/scale_factor": scale_factor}) + "\n")
    return str(workdir)


def hollow_stages(root, dataset: str = "mnist", arg: str = "smoke") -> tuple[str, str]:
    """(autoencoder workdir, CLIP workdir): hollow smoke runs of configs/<stage>/<dataset>.py,
    enough for a latent diffusion config to pass loop.check."""
    return (
        hollow_run(load_config(f"configs/autoencoder/{dataset}.py", arg), f"{root}/ae"),
        hollow_run(load_config(f"configs/clip/{dataset}.py", arg), f"{root}/clip"),
    )


def nonzero(params):
    """Params whose all-zero arrays (a U-Net's zero-initialised output conv) are 0.01 instead:
    an untrained model whose output depends on its inputs."""
    return jax.tree.map(lambda p: jnp.full_like(p, 0.01) if not p.any() else p, params)
