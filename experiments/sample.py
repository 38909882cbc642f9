"""Write samples (image grids, or text for GPT runs) from a trained run.

    python -m experiments.sample --workdir=/tmp/vae --config.sample.num_samples=100 \
        --config.sample.seed=3
    python -m experiments.sample --workdir=/tmp/shakespeare --config.sample.prompt="ROMEO:" \
        --config.sample.top_p=0.9 --config.sample.max_new_tokens=300

    python -m experiments.sample --workdir=/tmp/ldm_mnist \
        --config.sample.prompt="a handwritten digit 3|the digit seven" \
        --config.sample.negative_prompt="" --config.sample.guidance_scale=5 \
        --config.sample.num_inference_steps=50 --config.sample.seed=42 \
        --config.sample.num_images_per_prompt=4 --config.sample.sampler=ddim

Reads W/config.json and the latest checkpoint (EMA params when the run keeps
them); `--config.sample.*` overrides apply. Prints the paths of the PNGs. Needs nothing but the
workdir, unless the family's samples read data (the VAE and autoencoder reconstruct eval images). A text-to-image
(latent_diffusion) run writes one grid with a row per prompt,
samples/prompts_<step>_seed<S>_g<guidance_scale>_<digest of the other settings>.png (a call with
other prompts or settings never overwrites an earlier grid), its settings and prompts in the
.json of the same name, and each image in the folder of the same name; it runs the same
Steps.sample as jaxgen.text_to_image.generate() (all prompts in one compiled call; the same
seed, the same images).

A translation (seq2seq) run translates config.sample.source ("|"-separated) or the lines of
config.sample.source_file, config.sample.batch_size at a time with a progress bar (device memory
holds one batch, however long the file), into samples/{source,translation}_<step>_seed<S>_<digest
of the sources and settings>.txt: a call with other sources or settings never overwrites an
earlier one. A source given empty, or holding no text, is an error.
"""

import sys

import jax
from absl import flags

from jaxgen import cli, rundir, runs
from jaxgen.config import ConfigError

flags.DEFINE_string("workdir", None, "Run directory written by experiments.train.")


# Inputs that, given on the command line, must hold something: an empty one would otherwise
# mean "not set" and sample something else (a seq2seq run's eval sources).
REQUIRED_IF_GIVEN = ("source", "source_file")


def check_given_inputs(argv: list[str]) -> None:
    """ConfigError naming the field for `--config.sample.<field>=` given empty."""
    for field in REQUIRED_IF_GIVEN:
        if any(not value.strip() for value in cli.flag_values(argv, f"config.sample.{field}")):
            raise ConfigError(f"config.sample.{field}: given empty; give the inputs to sample")


def main(argv):
    del argv
    check_given_inputs(sys.argv)
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    run = runs.load_run(config, workdir)
    sample = run.placement.compile_eval(run.steps.sample)
    rng = jax.random.PRNGKey(config.sample.seed)
    tag = run.family.sample_tag(config.sample)
    write = dict(config=run.config, family=run.family)
    if run.steps.sample_batches is not None:  # the family's own inputs, a batch at a time
        batches = run.steps.sample_batches
        outputs = rundir.sample_in_batches(sample, run.state, batches, rng, run.placement)
        paths = rundir.write_outputs(outputs, workdir, run.step, tag, **write)
    else:
        # Data is read only by a family whose samples need it (the VAE's reconstructions).
        host = rundir.sample_batch(run.config, run.steps)
        batch = run.placement.put_batch(host, backend="jit")
        paths = rundir.write_samples(sample, run.state, batch, rng, workdir, run.step, tag, **write)
    for path in paths:
        if path.endswith(".txt"):  # text samples are printed too
            with open(path, encoding="utf-8") as f:
                print(f.read())
        print(path)


if __name__ == "__main__":
    cli.define_workdir_config(sys.argv)
    cli.run(main)
