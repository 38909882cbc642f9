"""Spanish -> English Bible verses (Reina-Valera 1909 -> King James) with a Transformer.

    python -m experiments.train --config=configs/seq2seq/bible_es_en.py --workdir=/tmp/bible
    python -m experiments.train --config=configs/seq2seq/bible_es_en.py:quick --workdir=/tmp/bq
    python -m experiments.sample --workdir=/tmp/bible \
        --config.sample.source="En el principio crió Dios los cielos y la tierra.|Y dijo Dios: Sea la luz"

Data: ../shared/data/bible_es_en.tsv (30,120 verse pairs; data/pairs.py), split by a hash of the
verse reference: 29,176 train, 296 validation, 648 test. One byte-level BPE of 8,000 ids for both
languages; 99% of verses fit in 73 tokens, so 96 per side cuts almost nothing.

The base size is the paper's base Transformer with more dropout (the corpus is small) and is
meant for one GPU in under an hour (not measured yet). Baselines on held-out verses (sacreBLEU, cased):
copying the source scores 0.0 BLEU; a word-by-word Dice dictionary 11.7 BLEU, chrF 39.3.

Arguments (comma-separated): "quick" (a 3+3-layer, width-128 pre-LN model for a 2-core CPU:
1600 steps of 52 GFLOP by XLA's cost analysis, against 170 at width 256; train rows packed
with ~1.6 verse pairs each, config.data.pack; measured 25.1 min on an idle 2-core CPU, test
BLEU 21.5 / chrF 42.6, README), "smoke" (seconds on CPU; tests rely on
it), "pre" (pre-LN sublayers).
"""

from jaxgen import data
from jaxgen.config import ConfigDict, base_config, smoke


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"quick", "smoke", "pre"}
    if unknown:
        raise ValueError(f"configs/seq2seq/bible_es_en.py: unknown argument(s) {sorted(unknown)}")
    config = base_config()
    config.family = "seq2seq"

    config.data.update(data.kind_fields("pairs"))  # text_file, source, target, tokenizer, ...
    config.data.name = "bible_es_en"  # bible_es_en.tsv from source_dir or $JAXGEN_DATA_DIR
    config.data.source, config.data.target = "es", "en"  # the TSV header's columns
    config.data.eval_split = "validation"  # "test" for the final numbers
    config.data.vocab_size = 8000  # shared by both languages (like the paper's shared BPE)
    config.data.source_len = 96  # tokens, eos included; 99% of verses need <= 73
    config.data.target_len = 96
    config.data.val_fraction = 0.01  # 296 verses
    config.data.test_fraction = 0.02  # 648 verses

    config.model.name = "transformer"
    config.model.num_layers = 6  # encoder
    config.model.num_decoder_layers = 6
    config.model.num_heads = 8
    config.model.width = 512
    config.model.ff_width = 2048
    config.model.dropout = 0.3  # 30k pairs overfit a 60M-parameter model at the paper's 0.1
    config.model.norm = "pre" if "pre" in args else "post"  # "post" is the paper's
    config.model.max_len = 128  # positions; >= source_len and target_len + 1
    config.model.dtype = "bfloat16"  # f32 params, bf16 compute
    config.model.param_dtype = "float32"

    config.loss.name = "cross_entropy"
    config.loss.kw = ConfigDict({"label_smoothing": 0.1})  # the paper's eps_ls

    config.optim.name = "adam"
    config.optim.b1, config.optim.b2, config.optim.eps = 0.9, 0.98, 1e-9  # the paper's Adam
    config.optim.schedule = "rsqrt"  # linear warmup, then lr * sqrt(warmup / step)
    config.optim.warmup_steps = 4000
    config.optim.lr = 7e-4  # the paper's peak: (512 * 4000) ** -0.5
    config.optim.grad_clip_norm = 1.0

    config.train.num_steps = 20_000  # ~90 epochs of 29k verses at batch 128
    config.train.batch_size = 128
    config.train.log_every = 100
    config.train.eval_every = 2000
    config.train.ckpt_every = 2000
    config.train.sample_every = 2000

    config.evals = ConfigDict(
        {
            "val": {"type": "loss", "batch_size": 64, "num_examples": 0},
            # sacreBLEU / chrF of beam-search translations (metrics/text.py); the final
            # numbers: python -m experiments.evaluate --workdir=W --config.evals.bleu.split=test
            "bleu": {"type": "bleu", "split": "validation", "batch_size": 64, "num_examples": 0},
        }
    )

    config.sample.num_samples = 8  # verses of the eval split translated at each sample
    config.sample.source = ""  # "|"-separated sources to translate instead (experiments.sample)
    config.sample.source_file = ""  # or a UTF-8 file with one source a line
    # Sources translated at a time: device memory holds one batch, however long the file.
    config.sample.batch_size = 64
    config.sample.max_new_tokens = 100
    config.sample.temperature = 0.0  # greedy unless beams
    config.sample.top_k = 0
    config.sample.top_p = 1.0
    config.sample.num_beams = 4  # the paper's beam size and length penalty alpha = 0.6
    config.sample.num_return_sequences = 1
    config.sample.length_penalty = 0.6
    config.sample.early_stopping = True
    config.sample.no_repeat_ngram_size = 0
    config.sample.use_kv_cache = True

    if "quick" in args:
        config.data.vocab_size = 4000  # a smaller softmax for the CPU
        config.data.source_len = config.data.target_len = 64  # cuts ~5% of verses' ends
        # ~103 verse pairs in a batch of 64 train rows instead of 64: 90% of the positions are real
        # tokens instead of 56%, at the same FLOPs per step (data/pairs.py pack_pairs)
        config.data.pack = True
        config.model.num_layers = config.model.num_decoder_layers = 3
        config.model.num_heads, config.model.width, config.model.ff_width = 4, 128, 512
        config.model.dropout = 0.1
        config.model.norm = "pre"  # trains with a short warmup
        config.model.dtype = "float32"  # bf16 is slow on CPUs
        config.optim.warmup_steps, config.optim.lr = 400, 1e-3
        # ~0.95 s a step on an idle 2-core CPU: 1600 steps (~5.6 epochs of packed rows) fit 30 min
        config.train.num_steps, config.train.batch_size = 1600, 64
        config.train.ckpt_every = 400
        config.train.eval_every = config.train.sample_every = 800  # beam-search BLEU costs
        config.sample.max_new_tokens = 64
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
            sample=dict(num_samples=4, batch_size=4, max_new_tokens=12, num_beams=2),
        )
    return config
