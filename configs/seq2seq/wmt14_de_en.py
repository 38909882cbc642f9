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

Arguments (comma-separated): "smoke" (bible_es_en.py's smoke model, seconds on CPU on mock
data; tests rely on it).
"""

from jaxgen.config import ConfigDict, sibling_config


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"smoke"}
    if unknown:
        raise ValueError(f"configs/seq2seq/wmt14_de_en.py: unknown argument(s) {sorted(unknown)}")
    # bible_es_en.py's base is the paper's base model and optimiser (6 + 6 layers, d_model 512,
    # ff 2048, 8 heads, post-LN, label smoothing 0.1, Adam(0.9, 0.98, 1e-9), rsqrt warmup 4000,
    # peak lr (512 * 4000) ** -0.5, batch 128, beam 4 with alpha 0.6), and its smoke the same
    # tiny model; only the data, the dropout and the lengths differ here.
    config = sibling_config(__file__, "bible_es_en.py", arg)
    smoke = "smoke" in args
    config.data.name = "wmt14_translate/de-en"
    config.data.source, config.data.target = "de", "en"  # the dataset's feature names
    config.model.dropout = 0.1  # the paper's P_drop (the Bible's 0.3 is for its small corpus)
    if not smoke:
        config.data.vocab_size = 37_000  # the paper's shared BPE
        config.data.source_len = config.data.target_len = 128
        config.model.max_len = 256
        config.train.num_steps = 300_000  # ~ the paper's 100k steps of 25k tokens a side
        config.train.eval_every = config.train.ckpt_every = config.train.sample_every = 10_000
        config.evals.bleu.num_examples = 1000  # of newstest2013; test: experiments.evaluate
        config.sample.max_new_tokens = 160
    return config
