"""Sample-quality evaluators: "fid", "kid", "is" and "class_accuracy" entries of config.evals.

    config.evals.fid = {"type": "fid", "network": "domain", "num_samples": 10000}

Each draws `num_samples` images with the family's `Steps.generate` (EMA params
when the run keeps them; the same noise at every evaluation), embeds them with
the entry's feature network ("domain": metrics/domain.py, "inception":
metrics/inception.py) inside the same jit, and compares with the cached
statistics of the real `split` (metrics/networks.py). Entries with the same
generator settings (network, dataset, weights, seed, num_samples, batch_size;
the labels and Steps.generate are the same for all) share one `SamplePass`:
fid + kid + is draw and embed the images once per evaluation (metrics.build
hands them one `shared` dict; metrics.run releases the pass afterwards). Entry fields and their
defaults are in DEFAULTS; every entry states its type and, usually, network and
num_samples. "class_accuracy" asks for labels i % num_classes and reports how
often the domain classifier agrees ("did the model draw the digit it was
asked for"); it only means something for class-conditional families. An entry's
`generate_kw` passes keyword options to Steps.generate (a text-to-image run's guidance_scale
and caption templates); entries with different options draw their own samples.
"""

import functools
import inspect
import os
from typing import Any

import jax
import numpy as np

from jaxgen import data
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.metrics import domain, fid, inception_weights, networks  # noqa: F401 (domain, inception_weights: networks)
from jaxgen.metrics.evaluators import EVALUATORS
from jaxgen.parallel import Placement

# Entry fields a sample evaluator reads, with the value used when the entry leaves it out.
DEFAULTS = dict(
    network="domain",  # "domain" (offline classifier) or "inception" (FID Inception-v3)
    num_samples=10_000,  # generated images
    batch_size=500,  # generated (and real) images per jit call, over all devices
    split="",  # real split to compare with; "" = config.data.train_split
    num_examples=0,  # real examples in the statistics; 0 = the whole split
    weights="",  # inception only: converted .npz, .pth or .pt; "" = $JAXGEN_INCEPTION_WEIGHTS, else cache
    seed=-1,  # noise of the generated images; -1 = config.seed + 2
    num_subsets=100,  # kid: random subsets averaged
    subset_size=1000,  # kid: rows per subset (capped by the sample counts)
    splits=10,  # is: the Inception Score's splits
    # Keyword options of the family's Steps.generate, e.g. a text-to-image run's
    # {"guidance_scale": 3.0, "captions": "heldout"}; {}: the family's defaults.
    generate_kw={},
)


def check_generate_kw(options: ConfigDict, generate: Any, field: str) -> None:
    """ConfigError naming <field>.generate_kw.<key> for an option Steps.generate does not take."""
    parameters = inspect.signature(generate).parameters
    bound = getattr(generate, "keywords", {})  # a functools.partial's bound arguments
    known = {
        name
        for name, parameter in parameters.items()
        if parameter.kind == parameter.KEYWORD_ONLY
        and parameter.default is not parameter.empty
        and name not in bound
    }
    for key in options:
        if key not in known:
            raise ConfigError(
                f"{field}.generate_kw.{key}: not an option of this family's generate; "
                f"its options: {', '.join(sorted(known)) or 'none'}"
            )


def generator_key(config: ConfigDict, entry: ConfigDict) -> tuple:
    """What decides an entry's generated images and features; equal keys share a SamplePass."""
    weights = entry.weights or os.environ.get("JAXGEN_INCEPTION_WEIGHTS", "")
    return (
        entry.network,
        entry.get("dataset", config.data.name),
        weights if entry.network == "inception" else "",
        entry.seed if entry.seed >= 0 else config.seed + 2,
        entry.num_samples,
        entry.batch_size,
        tuple(sorted(dict(entry.get("generate_kw", {})).items())),
    )


class SamplePass:
    """num_samples generated images of one generator setting, embedded; kept for one state.

    Calling it with the state it last saw returns the same arrays without drawing
    again (identity, not equality: a new state after training draws anew).
    """

    def __init__(
        self, config: ConfigDict, entry: ConfigDict, steps: Any, placement: Placement, field: str
    ):
        self.entry, self.placement = entry, placement
        self.network = networks.get_network(config, entry, field)
        self.num_classes = data.get_info(config.data).num_classes or 1
        network = self.network
        generate = functools.partial(steps.generate, **dict(entry.get("generate_kw", {})))

        def draw_and_embed(state, labels, rng, network_params):
            images = generate(state, rng, labels.shape[0], labels)  # [b, H, W, C] in [-1, 1]
            features, logits = network.apply(network_params, images)
            return features, logits

        self.draw_and_embed = placement.compile_eval(draw_and_embed)
        self.rng = jax.random.PRNGKey(generator_key(config, entry)[3])
        self.release()

    def release(self) -> None:
        self._state, self._samples = None, None

    def __call__(self, state: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._samples is not None and state is self._state:
            return self._samples
        num, batch = self.entry.num_samples, self.entry.batch_size
        batch = min(batch, num) // self.placement.num_devices * self.placement.num_devices
        labels = np.arange(num + batch, dtype=np.int32) % self.num_classes
        features, logits = [], []
        for index, start in enumerate(range(0, num, batch)):
            sharded = self.placement.put_batch({"label": labels[start : start + batch]}, "jit")
            out = self.draw_and_embed(
                state, sharded["label"], jax.random.fold_in(self.rng, index), self.network.params
            )
            out = jax.device_get(out)
            features.append(out[0])
            logits.append(out[1])
        self._state = state
        self._samples = np.concatenate(features)[:num], np.concatenate(logits)[:num], labels[:num]
        return self._samples


class SampleEvaluator:
    """Shared by the sample evaluators: draw, embed, then `score` (per subclass)."""

    needs_generate = True
    shares_samples = True  # metrics.build passes `shared` (see SamplePass)
    defaults = DEFAULTS  # what experiments.evaluate --evals=<type> starts an entry from

    @classmethod
    def check(cls, config: ConfigDict, name: str, entry: ConfigDict, num_devices: int) -> None:
        """Checks that need no compilation; ConfigError naming config.evals.<name>.<field>."""
        field = f"config.evals.{name}"
        get = lambda key: entry.get(key, DEFAULTS[key])  # noqa: E731
        unknown = set(entry) - set(DEFAULTS) - {"type", "dataset"}
        if unknown:
            raise ConfigError(
                f"{field}.{sorted(unknown)[0]}: unknown field of a {entry.type!r} evaluator; "
                f"known: {', '.join(sorted(DEFAULTS))}"
            )
        network = networks.get_entry(get("network"), field)
        num, batch = get("num_samples"), get("batch_size")
        if not isinstance(num, int) or num < 2 or num % num_devices:
            raise ConfigError(
                f"{field}.num_samples: must be a multiple (>= 2) of the {num_devices} devices, got {num}"
            )
        if batch % num_devices or batch < 1:
            raise ConfigError(
                f"{field}.batch_size: {batch} is not a positive multiple of the {num_devices} devices"
            )
        network.check(config, entry, field)
        if cls is ClassAccuracy and not network.classifies_data:
            raise ConfigError(
                f"{field}.network: class_accuracy needs a classifier of the dataset's classes "
                f"('domain'), not {get('network')!r}"
            )

    def __init__(
        self,
        config: ConfigDict,
        entry: ConfigDict,
        steps: Any,
        placement: Placement,
        shared: dict | None = None,
    ):
        """shared: a dict common to the evaluators of one metrics.build (None: share nothing)."""
        self.config, self.placement = config, placement
        self.entry = ConfigDict(DEFAULTS | entry.to_dict())
        self.field = "config.evals.<name>"  # metrics.build fills in the entry's name
        shared = {} if shared is None else shared
        check_generate_kw(self.entry.generate_kw, steps.generate, self.field)
        key = generator_key(config, self.entry)
        if key not in shared:
            shared[key] = SamplePass(config, self.entry, steps, placement, self.field)
        self.pass_ = shared[key]
        self.network = self.pass_.network
        entry = self.entry
        self._reference_key = key[:3] + (
            entry.split or config.data.train_split,
            entry.num_examples,
            entry.batch_size,
        )
        self._shared = shared

    def reference(self) -> networks.Reference:
        if self._reference_key not in self._shared:
            entry = self.entry
            self._shared[self._reference_key] = networks.reference(
                self.network,
                self.config.data,
                entry.split or self.config.data.train_split,
                entry.batch_size,
                self.placement,
                entry.num_examples,
            )
        return self._shared[self._reference_key]

    def samples(self, state: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features [N, D], logits [N, K], requested labels [N]) of num_samples generated images."""
        return self.pass_(state)

    def release(self) -> None:
        """Forget the shared pass's samples (metrics.run calls it after every evaluation)."""
        self.pass_.release()

    def __call__(self, state: Any) -> dict[str, float]:
        return self.score(*self.samples(state))

    def score(self, features, logits, labels) -> dict[str, float]:
        raise NotImplementedError


@EVALUATORS.register("fid")
class FID(SampleEvaluator):
    """Fréchet distance between generated and real feature Gaussians (lower is better)."""

    def score(self, features, logits, labels):
        value = fid.frechet_distance(fid.gaussian_of(features), self.reference().gaussian)
        return {"fid": value}


@EVALUATORS.register("kid")
class KID(SampleEvaluator):
    """Kernel Inception Distance: unbiased cubic-kernel MMD^2 over subsets (lower is better)."""

    def score(self, features, logits, labels):
        mean, std = fid.kernel_inception_distance(
            features,
            self.reference().features,
            self.entry.num_subsets,
            self.entry.subset_size,
        )
        return {"kid": mean, "kid_std": std}


@EVALUATORS.register("is")
class InceptionScore(SampleEvaluator):
    """Inception Score of the network's class probabilities (higher is better; at most K)."""

    def score(self, features, logits, labels):
        mean, std = fid.inception_score(networks.softmax(logits), self.entry.splits)
        return {"is": mean, "is_std": std}


@EVALUATORS.register("class_accuracy")
class ClassAccuracy(SampleEvaluator):
    """How often the domain classifier gives the class a conditional sample was drawn for."""

    def score(self, features, logits, labels):
        return {"accuracy": float(np.mean(np.argmax(logits, -1) == labels))}


def sample_features(network: networks.FeatureNetwork, images: np.ndarray, placement: Placement):
    """Features and logits of host images (e.g. noise); a convenience for scripts and tests."""
    batch = placement.num_devices * max(1, 256 // placement.num_devices)
    padded = np.concatenate([images, np.zeros((-len(images) % batch,) + images.shape[1:])])
    features, logits = networks.features_of(network, padded.astype(np.float32), batch, placement)
    return features[: len(images)], logits[: len(images)]
