"""WMT'14 German -> English with the base Transformer of Vaswani et al. 2017 (not run here).

    python -m experiments.train --config=configs/seq2seq/wmt14_de_en.py --workdir=/tmp/wmt14
    python -m experiments.evaluate --workdir=/tmp/wmt14 --config.evals.bleu.split=test

Data: TFDS's wmt14_translate/de-en (4.5M pairs; newstest2013 validation, newstest2014 test),
read through the same tfds route as the other catalog datasets (needs the internet once; the
pairs kind, data/pairs_kind.py). One byte-level BPE of 37,000 ids shared by both languages, as
the paper's shared source-target BPE. The paper's base model: 6 + 6 layers, d_model 512, ff 2048,
8 heads, dropout 0.1, label smoothing 0.1, Adam(0.9, 0.98, 1e-9), warmup 4000 with the
inverse-square-root schedule, 100k steps of ~25k source + 25k target tokens (here: 128 pairs
of <= 128 tokens a side per step, so more steps for the same number of tokens). Reported:
27.3 BLEU on newstest2014 en->de (the paper gives no de->en number; expect about 31).

Arguments (comma-separated): "smoke" (seconds on CPU on mock data; tests rely on it).
"""

from jaxgen.config import ConfigDict, sibling_config, smoke


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"smoke"}
    if unknown:
        raise ValueError(f"configs/seq2seq/wmt14_de_en.py: unknown argument(s) {sorted(unknown)}")
    config = sibling_config(__file__, "bible_es_en.py")  # the same family and sections
    config.data.name = "wmt14_translate/de-en"
    config.data.source, config.data.target = "de", "en"  # the dataset's feature names
    config.data.eval_split = "validation"  # newstest2013
    config.data.vocab_size = 37_000  # the paper's shared BPE
    config.data.source_len = config.data.target_len = 128

    config.model.num_layers = config.model.num_decoder_layers = 6
    config.model.num_heads, config.model.width, config.model.ff_width = 8, 512, 2048
    config.model.dropout = 0.1  # the paper's P_drop for the base model
    config.model.norm = "post"
    config.model.max_len = 256

    config.optim.warmup_steps = 4000
    config.optim.lr = 7e-4  # (512 * 4000) ** -0.5, the paper's peak
    config.train.num_steps = 300_000  # ~ the paper's 100k steps of 25k tokens a side
    config.train.batch_size = 128
    config.train.eval_every = config.train.ckpt_every = config.train.sample_every = 10_000
    config.evals.val.num_examples = 0
    config.evals.bleu.update(split="validation", num_examples=1000)  # test: experiments.evaluate
    config.sample.max_new_tokens = 160

    if "smoke" in args:
        config.data.vocab_size = 300
        config.data.source_len = config.data.target_len = 24
        config.model.num_layers = config.model.num_decoder_layers = 1
        config.model.num_heads, config.model.width, config.model.ff_width = 2, 32, 64
        config.model.max_len = 32
        config.model.dtype = "float32"
        smoke(
            config,
            batch_size=8,
            warmup_steps=5,
            evals=dict(
                val=dict(batch_size=8, num_examples=16), bleu=dict(batch_size=8, num_examples=16)
            ),
            sample=dict(num_samples=4, max_new_tokens=12, num_beams=2),
        )
    return config
