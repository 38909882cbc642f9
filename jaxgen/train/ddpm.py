"""DDPM family: pure init / train / eval / sample steps for the generic loop.

Each example draws its timestep, its noise, its label dropout (classifier-free
guidance), its horizontal flip and its dropout masks from its own key
(parallel.example_rngs), so the update does not depend on the device count or on
microbatching. Flips happen here, on device, rather than in the data pipeline.
Evaluation is bits/dim from the variational bound ("bpd"), over all T terms or an
unbiased subsample of them; sampling is DDPM ancestral or DDIM, with classifier-free
guidance for class-conditional models, one lax.scan inside the compiled sample step.
"""

import logging
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxgen import diffusion, optim
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.losses import ddpm as losses
from jaxgen.models import ddpm as models
from jaxgen.parallel import example_rngs
from jaxgen.sampling import ddpm as sampling
from jaxgen.train import FAMILIES, Family, Steps
from jaxgen.train import state as train_state
from jaxgen.train.gradients import grads_and_metrics

PyTree = Any
log = logging.getLogger("jaxgen")


def _fail(field: str, message: str) -> None:
    raise ConfigError(f"config.{field}: {message}")


def validate(config: ConfigDict, info: Any) -> None:
    models.MODELS.get(config.model.name)
    models.check_model_config(config.model, info.image_shape)
    diffusion.SCHEDULES.get(config.diffusion.schedule)
    diffusion.PARAMETERISATIONS.get(config.diffusion.parameterisation)
    num_steps = config.diffusion.num_timesteps
    if not isinstance(num_steps, int) or num_steps < 2:
        _fail("diffusion.num_timesteps", f"must be an integer >= 2, got {num_steps!r}")
    losses.LOSSES.get(config.loss.name)
    losses.WEIGHTINGS.get(config.loss.kw.weighting)
    if config.data.pixels != "symmetric":
        _fail(
            "data.pixels",
            f"diffusion models take pixels in [-1, 1] ('symmetric'), got {config.data.pixels!r}",
        )
    conditional = config.model.class_conditional
    if conditional and info.num_classes < 1:
        _fail("model.class_conditional", f"{config.data.name} has no class labels")
    if not 0.0 <= config.loss.label_dropout < 1.0:
        _fail("loss.label_dropout", f"must be in [0, 1), got {config.loss.label_dropout}")
    if config.loss.label_dropout and not conditional:
        _fail("loss.label_dropout", "label dropout needs config.model.class_conditional=True")

    sample = config.sample
    if sample.sampler not in sampling.SAMPLERS:
        _fail(
            "sample.sampler",
            f"unknown sampler {sample.sampler!r}; choose from {', '.join(sampling.SAMPLERS)}",
        )
    if not 1 <= sample.num_inference_steps <= num_steps:
        _fail(
            "sample.num_inference_steps",
            f"must be in [1, T = {num_steps}], got {sample.num_inference_steps}",
        )
    if sample.eta < 0:
        _fail("sample.eta", f"must be >= 0, got {sample.eta}")
    if sample.variance not in diffusion.VARIANCES:
        _fail(
            "sample.variance",
            f"unknown variance {sample.variance!r}; choose from {', '.join(diffusion.VARIANCES)}",
        )
    if sample.guidance_scale != 1.0 and not conditional:
        _fail(
            "sample.guidance_scale",
            "guidance needs a class-conditional model (config.model.class_conditional)",
        )
    if sample.guidance_scale != 1.0 and not config.loss.label_dropout:
        _fail(
            "sample.guidance_scale",
            "guidance needs an unconditional model: train with config.loss.label_dropout > 0",
        )
    if sample.labels and not conditional:
        _fail("sample.labels", "labels need a class-conditional model")
    bad = [label for label in sample.labels if not 0 <= label < info.num_classes]
    if bad:
        _fail("sample.labels", f"{bad} out of range [0, {info.num_classes})")
    if sample.samples_per_class < 1:
        _fail("sample.samples_per_class", f"must be >= 1, got {sample.samples_per_class}")
    for name, entry in config.evals.items():
        if entry.type != "bpd":
            continue
        if not 0 <= entry.num_timesteps <= num_steps:
            _fail(
                f"evals.{name}.num_timesteps", f"must be in [0, T = {num_steps}] (0: all T terms)"
            )
        if entry.variance not in diffusion.VARIANCES:
            _fail(
                f"evals.{name}.variance",
                f"unknown variance {entry.variance!r}; choose from {', '.join(diffusion.VARIANCES)}",
            )


def make_steps(config: ConfigDict, info: Any, axis_name: str | None = None) -> Steps:
    num_classes = info.num_classes if config.model.class_conditional else 0
    model = models.make_model(config.model, info.image_shape, num_classes)
    schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)
    num_steps = config.diffusion.num_timesteps
    parameterisation = config.diffusion.parameterisation
    to_target = diffusion.PARAMETERISATIONS.get(parameterisation).target
    to_x0_eps = diffusion.PARAMETERISATIONS.get(parameterisation).to_x0_eps
    loss_fn = losses.LOSSES.get(config.loss.name)
    loss_kw = config.loss.kw.to_dict()
    label_dropout = config.loss.label_dropout
    random_flip = config.train.random_flip
    optimizer = optim.make_optimizer(
        config.optim, config.train.num_steps, config.train.skip_nonfinite
    )
    lr_schedule = optim.learning_rate(config.optim, config.train.num_steps)
    ema_decay = config.optim.ema_decay
    microbatches = config.train.microbatches

    def labels_of(batch):
        return batch["label"] if num_classes else None

    def init(rng, batch):
        params_rng, state_rng = jax.random.split(rng)
        image = batch["image"][:1]
        label = jnp.zeros((1,), jnp.int32) if num_classes else None
        params = models.init_params(model, params_rng, image, jnp.zeros((1,), jnp.int32), label)
        return train_state.create(params, optimizer, state_rng, ema=ema_decay > 0)

    def draw(key, image):
        """One example's t, ε, label-dropout and flip draws, and its dropout key."""
        t_key, noise_key, drop_key, flip_key, dropout_key = jax.random.split(key, 5)
        return {
            "t": jax.random.randint(t_key, (), 0, num_steps),
            "noise": jax.random.normal(noise_key, image.shape),
            "drop_label": jax.random.bernoulli(drop_key, label_dropout),
            "flip": jax.random.bernoulli(flip_key, 0.5),
            "dropout_rng": dropout_key,
        }

    def train_step(state, batch):
        step_rng = jax.random.fold_in(state.rng, state.step)
        image = batch["image"]
        keys = example_rngs(step_rng, image.shape[0], axis_name)
        draws = jax.vmap(draw)(keys, image)
        if random_flip:  # horizontal flips (Ho et al. on CIFAR-10)
            image = jnp.where(draws["flip"][:, None, None, None], image[:, :, ::-1], image)
        inputs = {
            "image": image,
            "t": draws["t"],
            "noise": draws["noise"],
            "dropout_rng": draws["dropout_rng"],
        }
        if num_classes:
            inputs["label"] = jnp.where(draws["drop_label"], num_classes, batch["label"])

        def loss_of(params, mb):
            xt = diffusion.q_sample(schedule, mb["image"], mb["t"], mb["noise"])
            output = model.apply(
                {"params": params}, xt, mb["t"], mb.get("label"), mb["dropout_rng"]
            )
            target = to_target(schedule, mb["image"], mb["t"], mb["noise"])
            snr = diffusion.snr(schedule, mb["t"])
            return loss_fn(output, target, snr, parameterisation=parameterisation, **loss_kw)

        grads, metrics = grads_and_metrics(loss_of, state.params, inputs, microbatches, axis_name)
        metrics["lr"] = lr_schedule(state.step)
        return train_state.apply_gradients(state, grads, optimizer, ema_decay), metrics

    def make_bpd_eval(entry):
        """Sums of bits/dim of the variational bound L_T + Σ_{t>0} L_{t-1} + L_0.

        num_timesteps = 0 evaluates all T terms for every example. k > 0 evaluates the
        decoder term L_0 exactly (it is large and would make a sampled estimate noisy)
        and estimates the sum of the other T - 1 terms by (T - 1) times the mean of k
        terms drawn uniformly with replacement per example: unbiased, k + 1 model calls.
        Class-conditional models are scored on the example's own label (log p(x | y)).
        """
        subsample = 0 < entry.num_timesteps < num_steps
        count = entry.num_timesteps  # draws per example when subsampling
        variance, clip = entry.variance, entry.clip_denoised

        def bpd_step(state, batch, rng):
            image, mask = batch["image"], batch["mask"]
            batch_size = image.shape[0]
            dims = math.prod(image.shape[1:])
            keys = example_rngs(rng, batch_size)
            label = labels_of(batch)

            def vb_at(t, index):
                """L_{t-1} in nats [B] at timesteps t [B], with the noise of draw `index`."""
                step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, index)
                noise = jax.vmap(lambda key: jax.random.normal(key, image.shape[1:]))(step_keys)
                xt = diffusion.q_sample(schedule, image, t, noise)
                output = model.apply({"params": state.eval_params}, xt, t, label)
                x0, _ = to_x0_eps(schedule, xt, t, output)
                if clip:
                    x0 = jnp.clip(x0, -1.0, 1.0)
                true_mean, _, true_logvar = diffusion.q_posterior(schedule, image, xt, t)
                model_mean, _, _ = diffusion.q_posterior(schedule, x0, xt, t)
                model_logvar = diffusion.model_log_variance(schedule, t, variance, image.ndim)
                return losses.vb_term(image, t, true_mean, true_logvar, model_mean, model_logvar)

            def term(total, index):
                if subsample:  # t in {1, ..., T - 1}
                    draw_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(
                        keys,
                        count + 1 + index,  # apart from the noise draws 0..count
                    )
                    t = jax.vmap(lambda key: jax.random.randint(key, (), 1, num_steps))(draw_keys)
                else:
                    t = jnp.full((batch_size,), index)
                return total + vb_at(t, index), None

            zeros = jnp.zeros((batch_size,))
            if subsample:
                decoder = vb_at(jnp.zeros((batch_size,), jnp.int32), count)
                kl_terms, _ = jax.lax.scan(term, zeros, jnp.arange(count))
                terms = decoder + (num_steps - 1) / count * kl_terms
            else:
                # All T terms; t = 0 is the decoder term, kept apart for the metrics too.
                terms, _ = jax.lax.scan(term, zeros, jnp.arange(num_steps))
                decoder = vb_at(jnp.zeros((batch_size,), jnp.int32), 0)
            prior_mean, prior_variance = diffusion.q_mean_variance(
                schedule, image, jnp.full((batch_size,), num_steps - 1)
            )
            prior = losses.prior_kl(prior_mean, prior_variance)
            to_bits = 1.0 / (dims * math.log(2.0))
            bpd = (terms + prior) * to_bits
            return {
                "bpd": jnp.sum(bpd * mask),
                "prior_bpd": jnp.sum(prior * to_bits * mask),
                "decoder_bpd": jnp.sum(decoder * to_bits * mask),
                "count": jnp.sum(mask),
            }

        return bpd_step

    def denoise_images(params, rng, num, label):
        """num images in [-1, 1] from config.sample's sampler; label [num] or None."""
        settings = config.sample

        def apply(x, t, label):
            return model.apply({"params": params}, x, t, label)

        if label is not None and settings.guidance_scale != 1.0:
            denoise = sampling.guided(apply, label, num_classes, settings.guidance_scale)
        else:
            denoise = sampling.conditional(apply, label)
        noise_rng, sampler_rng = jax.random.split(rng)
        noise = jax.random.normal(noise_rng, (num,) + tuple(info.image_shape))
        report = _report(settings) if settings.progress else None
        common = dict(clip=settings.clip_denoised, report=report)
        if settings.sampler == "ddpm":
            images = sampling.ddpm(
                denoise, schedule, parameterisation, noise, sampler_rng, settings.variance, **common
            )
        else:
            images = sampling.ddim(
                denoise,
                schedule,
                parameterisation,
                noise,
                sampler_rng,
                settings.num_inference_steps,
                settings.eta,
                **common,
            )
        return jnp.clip(images, -1.0, 1.0)

    def sample(state, batch, rng):
        settings = config.sample
        if num_classes:
            rows = tuple(settings.labels) or tuple(range(num_classes))
            cols = settings.samples_per_class
            label = jnp.repeat(jnp.asarray(rows, jnp.int32), cols)
            images = denoise_images(state.eval_params, rng, len(rows) * cols, label)
            images = images.reshape((len(rows), cols) + images.shape[1:])  # one row per class
        else:
            images = denoise_images(state.eval_params, rng, settings.num_samples, None)
        return {settings.sampler: images}

    def generate(state, rng, num, labels=None):
        """For the sample evaluators (FID, ...): a conditional model without given labels
        draws them uniformly, so its samples follow the (balanced) class distribution."""
        if num_classes and labels is None:
            label_rng, rng = jax.random.split(rng)
            labels = jax.random.randint(label_rng, (num,), 0, num_classes)
        return denoise_images(state.eval_params, rng, num, labels if num_classes else None)

    return Steps(
        init=init,
        train_step=train_step,
        eval_steps={"bpd": make_bpd_eval},
        sample=sample,
        generate=generate,
    )


def _report(settings: ConfigDict):
    total = (
        settings.num_inference_steps if settings.sampler == "ddim" else None
    )  # ddpm: all T steps

    def report(done):
        log.info(
            "sampling (%s): step %d%s", settings.sampler, int(done), f"/{total}" if total else ""
        )

    return report


FAMILIES.register("ddpm")(Family(validate, make_steps, losses=losses.LOSSES))
