"""Training: the generic loop (loop.py) and one file per family (vae.py, ...).

A family is a `Family` registered by name in FAMILIES (config.family selects it); the loop
needs nothing else from it. train/vae.py ends with

    FAMILIES.register("vae")(Family(validate, make_steps, losses=losses.LOSSES,
                                    passed_loss_keywords=("likelihood",)))

The loop compiles the steps once for the mesh (jaxgen.parallel); families never call
jax.jit themselves. The built-in families are registered when jaxgen.runs is imported
(it imports each family module); a family defined elsewhere registers itself the same
way, and the loop, the evaluators and the scripts take it without a change.
"""

import inspect
from collections.abc import Callable, Collection
from typing import Any, NamedTuple

from jaxgen import samples
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.registry import Registry

FAMILIES = Registry("family", "config.family")


class Steps(NamedTuple):
    """The pure functions a family gives the loop.

    init(rng, batch) -> state
    train_step(state, batch) -> (state, metrics)     # metrics: scalar means
    eval_steps: {eval type: make(eval_config) -> fn(state, batch, rng) -> metric sums,
                 with "count"}; evaluation divides sums by the count
    sample(state, batch, rng) -> {name: array}; `batch` is a fixed batch of eval data.
                 Images are [N, H, W, C] or [rows, cols, H, W, C] in [-1, 1]; what the
                 arrays hold is the family's business, as long as its Family.write_sample
                 can write them ({} writes nothing)
    generate(state, rng, num, labels=None) -> images [num, H, W, C] in [-1, 1]
                 optional (None: the family draws no samples). `num` new samples from
                 the model, for sample-quality evaluators (metrics/generative.py: fid,
                 kid, is, class_accuracy). `labels` int32 [num] asks a class-conditional
                 model for those classes; an unconditional family ignores it (and
                 class_accuracy then measures nothing useful). Pure and jittable, with
                 `num` static: the evaluator compiles it once per batch size, runs it
                 under jit on a data-sharded mesh, and keeps the batch count fixed.
                 Use state.eval_params (EMA when kept). Images must be in the data's
                 [-1, 1] range whatever the training pixels are (a Bernoulli VAE returns
                 2p - 1, the mean of p(x|z)).
    finalize: {eval type: fn(means) -> means}, optional host-side functions of an eval
                 type's averages, for metrics that are not averages (GPT's perplexity =
                 exp of the mean token NLL)
    setup(state) -> state, optional and host-side: run once on a new run's initialised state
                 (before config.init_from; never on resume), for values init cannot make on
                 device, such as the frozen params of earlier runs that a later stage copies
                 into its state (train/latent_diffusion.py). What it returns is checkpointed.
    """

    init: Callable[..., Any]
    train_step: Callable[..., Any]
    eval_steps: dict[str, Callable[..., Any]]
    sample: Callable[..., Any]
    generate: Callable[..., Any] | None = None
    finalize: dict[str, Callable[[dict[str, float]], dict[str, float]]] = {}
    setup: Callable[[Any], Any] | None = None


class Family(NamedTuple):
    """Everything the loop, the evaluators and the scripts need from a family.

    validate(config, info) -> None: a ConfigError naming the field for a value the family
        cannot take (info: jaxgen.data.DatasetInfo). Runs before anything compiles.
    make_steps(config, info, axis_name=None) -> Steps of pure functions.
    losses: the family's registry of losses (config.loss.name), or None. The keyword
        options of the selected loss (parameters with a default) are what config.loss.kw
        may set; anything else is a ConfigError before compiling.
    loss_keywords: further config.loss.kw fields the family reads itself (the GAN's
        regularizer weights, gp_weight and r1_gamma: the keywords of losses.gan.REGULARIZERS).
    passed_loss_keywords: loss options the family passes itself (the VAE's likelihood
        comes from config.model), which config.loss.kw therefore must not set.
    write_sample(config, name, array, stem) -> path: writes one output of Steps.sample
        (host array) to a file named `stem` plus an extension. Default: an image grid PNG.
    sample_tag(sample_config) -> str: the end of the file names experiments.sample writes.
        Default: _seed<S>; a family adds the settings that would otherwise overwrite a file.
    per_device_step: make_steps(config, info, axis_name) gives a step that each device can
        run on its slice of the batch, averaging gradients over the axis (pmap, and the jit
        step on a multi-device CPU: parallel.Placement). False for a loss that couples the
        whole batch (CLIP's contrastive loss), which then runs under jit only.
    """

    validate: Callable[[ConfigDict, Any], None]
    make_steps: Callable[..., Steps]
    losses: Registry | None = None
    loss_keywords: tuple[str, ...] = ()
    passed_loss_keywords: tuple[str, ...] = ()
    write_sample: Callable[[ConfigDict, str, Any, str], str] = samples.write_image_grid
    sample_tag: Callable[[ConfigDict], str] = lambda sample: f"_seed{sample.seed}"
    per_device_step: bool = True


def get_family(name: str) -> Family:
    """The Family registered as `name`; a ConfigError naming config.family otherwise."""
    return FAMILIES.get(name)


def loss_options(loss: Any) -> set[str]:
    """The keyword options of a loss function: its parameters that have a default."""
    if not callable(loss):
        return set()
    return {
        name
        for name, parameter in inspect.signature(loss).parameters.items()
        if parameter.default is not inspect.Parameter.empty
        and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }


def check_loss_kw(config: ConfigDict, family: Family) -> None:
    """ConfigError naming config.loss.kw.<name> for a keyword the loss does not take."""
    if family.losses is None:
        return
    loss = family.losses.get(config.loss.name)
    known: Collection[str] = (loss_options(loss) - set(family.passed_loss_keywords)) | set(
        family.loss_keywords
    )
    for name in config.loss.kw:
        if name not in known:
            raise ConfigError(
                f"config.loss.kw.{name}: not an option of the {config.family} loss "
                f"{config.loss.name!r}; its options: {', '.join(sorted(known)) or 'none'}"
            )
