"""Text evaluators: BLEU and chrF (sacrebleu) and ROUGE-L (rouge-score) of model translations.

    config.evals.bleu = {"type": "bleu", "split": "test", "batch_size": 64, "num_examples": 0}
    config.evals.rouge = {"type": "rouge", "split": "validation", "batch_size": 64}

Each evaluation translates the sources of the split (all of it, or the first num_examples rows
in the kind's fixed eval order) with config.sample's decoding settings (beam search or greedy),
in one compiled call per batch, decodes the hypotheses and the references with the run's
tokenizer, and scores the detokenized text: sacrebleu's corpus BLEU (13a tokenization, cased,
exp smoothing, its defaults) and chrF (char order 6, beta 2), or rouge-score's ROUGE-L F1 (with
its Porter stemmer). The sacrebleu signatures are printed with the scores and returned beside
them, so a number can be reproduced from metrics.jsonl, eval_<step>.json and the HTML report.
Results: "bleu", "chrf" (0-100), "bleu_signature", "chrf_signature" (strings) and "count"
(sentences); or "rougeL" (0-100) and "count".

The translations come from the family's "translate" function (Steps.predict_fns, as
big_vision's evaluators get predict_fns): translate(params, source [B, S] int32, rng, *,
settings: jaxgen.sampling.decoding.Settings) -> decoding.GenerateOutput with R = the settings'
num_return_sequences rows per source, the best first. Any family that translates a pairs
dataset can be scored; this module builds no model. The metric functions themselves
(corpus_bleu_chrf, rouge_l) take any lists of strings.
"""

import functools
from typing import Any, ClassVar

import jax
import numpy as np
import sacrebleu

from jaxgen import data
from jaxgen.config import ConfigDict, ConfigError
from jaxgen.data import pairs
from jaxgen.metrics.evaluators import EVALUATORS
from jaxgen.parallel import Placement
from jaxgen.sampling import decoding


def corpus_bleu_chrf(hypotheses: list[str], references: list[str]) -> dict[str, Any]:
    """{"bleu", "chrf": floats, "bleu_signature", "chrf_signature": str} of sacrebleu."""
    bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    return {
        "bleu": float(bleu_score.score),
        "chrf": float(chrf_score.score),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def rouge_l(hypotheses: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 (0-100) of rouge-score, with its Porter stemmer."""
    # Imported here: rouge-score loads NLTK, 0.6 s of every script's start-up otherwise.
    from rouge_score import rouge_scorer  # noqa: PLC0415

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [
        scorer.score(ref, hyp)["rougeL"].fmeasure
        for hyp, ref in zip(hypotheses, references, strict=True)
    ]
    return 100.0 * float(np.mean(scores)) if scores else 0.0


def _strip(rows: np.ndarray, keep: np.ndarray) -> list[np.ndarray]:
    return [row[mask] for row, mask in zip(rows, keep, strict=True)]


class Translations:
    """Translates a split of the run's pairs data: (hypotheses, references) as text."""

    defaults: ClassVar[dict[str, Any]] = {"split": "test", "batch_size": 64, "num_examples": 0}
    needs = ("translate",)  # Steps.predict_fns

    @classmethod
    def check(cls, config: ConfigDict, name: str, entry: ConfigDict, num_devices: int) -> None:
        del num_devices
        if data.kind_of(config.data.name).name != "pairs":
            raise ConfigError(
                f"config.evals.{name}.type: {entry.type!r} scores translations of a pairs "
                f"dataset; {config.data.name!r} is not one"
            )

    def __init__(self, config: ConfigDict, entry: ConfigDict, steps: Any, placement: Placement):
        self.config, self.entry, self.placement = config, entry, placement
        self.tokenizer = data.load_tokenizer(config.data)
        self.pad_id = pairs.pad_id(self.tokenizer)
        translate = functools.partial(
            steps.predict_fns["translate"], settings=decoding.read_settings(config.sample)
        )
        eos = self.tokenizer.eos_id

        def step(state, batch, rng):
            output = translate(state.eval_params, batch["source"], rng)
            returned = output.tokens.shape[0] // batch["source"].shape[0]
            return decoding.output_rows(output, eos)[::returned]  # the best hypothesis

        self.step = placement.compile_eval(step)
        self.rng = jax.random.PRNGKey(config.sample.seed)

    def texts(self, state: Any) -> tuple[list[str], list[str]]:
        entry, tokenizer = self.entry, self.tokenizer
        iterator = data.make_iterator(
            self.config.data,
            entry.get("split", self.config.data.eval_split),
            entry.batch_size,
            self.config.seed,
            train=False,
        )
        hypotheses, references, seen = [], [], 0
        for host_batch in iterator:
            batch = self.placement.put_batch(host_batch, backend="jit")
            rows = np.asarray(jax.device_get(self.step(state, batch, self.rng)))
            real = np.asarray(host_batch["mask"]) > 0
            target = np.asarray(host_batch["target"])[:, 1:]
            keep = (target != self.pad_id) & (target != tokenizer.eos_id)
            hypotheses += [tokenizer.decode(row[row >= 0]) for row in rows[real]]
            references += [tokenizer.decode(row) for row in _strip(target, keep)[: real.sum()]]
            seen += entry.batch_size
            if entry.get("num_examples", 0) and seen >= entry.num_examples:
                break
        # Detokenized text, one line each, as sacrebleu expects.
        clean = lambda texts: [" ".join(text.split()) for text in texts]  # noqa: E731
        return clean(hypotheses), clean(references)


@EVALUATORS.register("bleu")
class Bleu(Translations):
    """sacrebleu corpus BLEU and chrF of the translations of a split."""

    def __call__(self, state: Any) -> dict[str, float | str]:
        hypotheses, references = self.texts(state)
        scores = corpus_bleu_chrf(hypotheses, references)
        print(
            f"BLEU {scores['bleu']:.2f} ({scores['bleu_signature']}), "
            f"chrF {scores['chrf']:.2f} ({scores['chrf_signature']}) "
            f"on {len(hypotheses)} sentences",
            flush=True,
        )
        return scores | {"count": float(len(hypotheses))}


@EVALUATORS.register("rouge")
class Rouge(Translations):
    """rouge-score ROUGE-L F1 of the translations of a split."""

    def __call__(self, state: Any) -> dict[str, float]:
        hypotheses, references = self.texts(state)
        return {"rougeL": rouge_l(hypotheses, references), "count": float(len(hypotheses))}


__all__ = ["Bleu", "Rouge", "corpus_bleu_chrf", "rouge_l"]
