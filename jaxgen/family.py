"""The family contract: what a family gives the loop, the evaluators and the scripts.

A family is a `Family` registered by name in FAMILIES; config.family selects it. Families are
found by name, as big_vision finds its models: `get_family("vae")` imports jaxgen.train.vae the
first time it is asked for, and that module registers itself with its last line,

    FAMILIES.register("vae")(Family(validate, make_steps, losses=losses.LOSSES))

so a new family is one file under jaxgen/train/ (plus its model, loss and config), and no list
of families exists anywhere. This module sits on a low floor: it imports no family, no loop
and no evaluator, so the run-folder code (jaxgen.rundir, jaxgen.runs), the evaluators
(jaxgen.metrics) and the scripts can all name the contract without importing every family.
The loop compiles the steps once for the mesh (jaxgen.parallel); families never call jax.jit.
"""

import importlib
import importlib.util
import inspect
import pkgutil
from collections.abc import Callable, Collection, Sequence
from typing import Any, NamedTuple

import jax

from jaxgen import samples
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.registry import Registry

FAMILIES = Registry("family", "config.family")
FAMILY_PACKAGE = "jaxgen.train"  # where get_family looks for a family module by its name


class Steps(NamedTuple):
    """The pure functions a family gives the loop, and what it declares about them.

    init(rng, batch) -> state      `batch` holds zeros of `batch_spec`'s shapes
    train_step(state, batch) -> (state, metrics)     # metrics: scalar means
    eval_steps: {eval type: make(eval_config) -> fn(state, batch, rng) -> metric sums,
                 with "count"}; evaluation divides sums by the count
    sample(state, batch, rng) -> {name: array}: the grids the loop writes every sample_every
                 steps and experiments.sample writes. `batch` is a fixed batch of eval data
                 when `sample_reads_data`, else {} (then sampling needs no data at all).
                 Images are [N, H, W, C] or [rows, cols, H, W, C] in [-1, 1]; what the
                 arrays hold is the family's business, as long as its Family.write_sample
                 can write them ({} writes nothing)
    batch_spec: {key: jax.ShapeDtypeStruct} of the batch init reads, with a leading batch axis
                 of 1 (e.g. {"image": f32 [1, 28, 28, 1]}): the abstract state of a run comes
                 from it, so loading a run needs no data iterator
    sample_reads_data: whether `sample` reads its batch (the VAE's reconstructions do)
    sample_batches: optional, the batches `sample` reads instead of eval data when they are
                 the family's own inputs (seq2seq's config.sample texts): a sequence of host
                 batches of one fixed shape, made when indexed, each with a "keep" [B] bool of
                 its real rows (the last batch is padded). experiments.sample runs `sample` on each in
                 turn and joins the outputs of the real rows (the output rows of example i
                 are rows i * R ... i * R + R - 1); the training loop samples the first.
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
    predict_fns: {name: function of the trained model} that evaluators and scripts call by
                 name instead of building the family's model themselves (big_vision's
                 predict_fns): "translate" (seq2seq), "text_to_image" (latent diffusion),
                 "features" (the classifier behind the domain metrics). Each name's
                 signature is documented where it is used (jaxgen.metrics.text,
                 jaxgen.text_to_image, jaxgen.metrics.domain).
    """

    init: Callable[..., Any]
    train_step: Callable[..., Any]
    eval_steps: dict[str, Callable[..., Any]]
    sample: Callable[..., Any]
    batch_spec: dict[str, jax.ShapeDtypeStruct]
    sample_reads_data: bool = False
    sample_batches: Sequence[dict] | None = None
    generate: Callable[..., Any] | None = None
    finalize: dict[str, Callable[[dict[str, float]], dict[str, float]]] = {}
    setup: Callable[[Any], Any] | None = None
    predict_fns: dict[str, Callable[..., Any]] = {}


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
    resolve(config) -> config, optional and host-side: a new run's config with what the run
        copies from elsewhere when it starts (latent diffusion: the model configs and scale
        factor of the earlier runs it names), so that config.json alone describes the run.
        A resumed run keeps the `resolved_fields` of its config.json instead.
    resolved_fields: the dotted config fields that `resolve` fills in ("model.stages").
    """

    validate: Callable[[ConfigDict, Any], None]
    make_steps: Callable[..., Steps]
    losses: Registry | None = None
    loss_keywords: tuple[str, ...] = ()
    passed_loss_keywords: tuple[str, ...] = ()
    write_sample: Callable[[ConfigDict, str, Any, str], str] = samples.write_image_grid
    sample_tag: Callable[[ConfigDict], str] = lambda sample: f"_seed{sample.seed}"
    per_device_step: bool = True
    resolve: Callable[[ConfigDict], ConfigDict] | None = None
    resolved_fields: tuple[str, ...] = ()


def get_family(name: str) -> Family:
    """The Family registered as `name`, importing jaxgen.train.<name> first if it is not yet;
    a ConfigError naming config.family otherwise."""
    if name not in FAMILIES and isinstance(name, str) and name.isidentifier():
        module = f"{FAMILY_PACKAGE}.{name}"
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)  # registers the family (its last line)
    if name not in FAMILIES:
        raise ConfigError(
            f"config.family: unknown family {name!r}; choose from {', '.join(family_names())}"
        )
    return FAMILIES.get(name)


def family_names() -> list[str]:
    """Every family that get_family can find: the registered ones and those of the modules of
    jaxgen/train/ (imported here, so call it for listings and error messages only)."""
    package = importlib.import_module(FAMILY_PACKAGE)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{FAMILY_PACKAGE}.{module.name}")
    return FAMILIES.names()


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
