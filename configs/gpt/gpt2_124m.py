"""GPT-2 124M (12 layers, 12 heads, width 768, context 1024) on a text corpus, in bf16.

    python -m experiments.train --config=configs/gpt/gpt2_124m.py --workdir=/tmp/gpt2 \
        --config.data.text_file=/data/corpus.txt --config.data.tokenizer=/data/gpt2/tokenizer.json

The model of benchmarks/gpt_train.py and nanoGPT's `train_gpt2.py` settings (lr 6e-4 with 2000
warmup steps, cosine to 6e-5, beta2 0.95, weight decay 0.1, clipping at 1, no dropout, about 0.5M
tokens per update via 40 microbatches of 12 x 1024 on one host). Any UTF-8 file works as the
corpus; with no tokenizer.json it trains a byte-level BPE of 50257 tokens on it. The vocabulary
is padded to 50304 (a multiple of 64) so the head's matmuls tile well.

Arguments: "smoke" (a tiny model on tiny Shakespeare, seconds on CPU; tests rely on it).
"""

from jaxgen import data
from jaxgen.config import ConfigDict, base_config, smoke


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"smoke"}
    if unknown:
        raise ValueError(f"configs/gpt/gpt2_124m.py: unknown argument(s) {sorted(unknown)}")
    config = base_config()
    config.family = "gpt"

    config.data.update(data.kind_fields("text"))  # seq_len, tokenizer, vocab_size, ...
    config.data.name = "text_file"
    config.data.text_file = ""  # required: a UTF-8 corpus
    config.data.val_fraction = 0.005  # nanoGPT's OpenWebText split keeps 0.05% for validation
    config.data.eval_split = "validation"
    config.data.seq_len = 1024
    config.data.tokenizer = "bpe"  # or the path of GPT-2's tokenizer.json
    config.data.vocab_size = 50257

    config.model.name = "gpt"
    config.model.vocab_size = 50304  # 50257 padded to a multiple of 64
    config.model.block_size = 1024
    config.model.num_layers = 12
    config.model.num_heads = 12
    config.model.width = 768
    config.model.dropout = 0.0  # pretraining on a large corpus: no dropout
    config.model.bias = False  # as nanoGPT's benchmark; GPT-2's released weights have biases
    config.model.position = "learned"
    config.model.attention = "auto"
    config.model.layer_norm_epsilon = 1e-5  # GPT-2's and nanoGPT's
    config.model.dtype = "bfloat16"  # compute; params and Adam moments stay float32
    config.model.param_dtype = "float32"

    config.loss.name = "cross_entropy"
    config.loss.kw = ConfigDict({"label_smoothing": 0.0})

    config.optim.name = "adamw"
    config.optim.lr = 6e-4
    config.optim.b1 = 0.9
    config.optim.b2 = 0.95
    config.optim.weight_decay = 0.1
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 2000
    config.optim.min_lr_ratio = 0.1
    config.optim.grad_clip_norm = 1.0

    config.train.num_steps = 600_000
    config.train.batch_size = 480  # 40 x 12 sequences = 491,520 tokens per update
    config.train.microbatches = 40  # per device; lower it when the batch is spread over devices
    config.train.log_every = 10
    config.train.eval_every = 2000
    config.train.ckpt_every = 2000
    config.train.sample_every = 2000

    config.evals = ConfigDict({"val": {"type": "loss", "batch_size": 96, "num_examples": 200 * 96}})

    config.sample.num_samples = 4
    config.sample.prompt = "The"
    config.sample.prompt_separator = "|"
    config.sample.max_new_tokens = 128
    config.sample.temperature = 0.8
    config.sample.top_k = 200
    config.sample.top_p = 1.0
    config.sample.num_beams = 1
    config.sample.num_return_sequences = 1  # beams: the best R distinct ones per prompt
    config.sample.length_penalty = 1.0
    config.sample.early_stopping = False
    config.sample.no_repeat_ngram_size = 0
    config.sample.use_kv_cache = True

    if "smoke" in args:
        config.data.name = "tiny_shakespeare"
        config.data.tokenizer, config.data.vocab_size = "bpe", 300
        config.data.seq_len = config.model.block_size = 32
        config.model.vocab_size = 320  # padded beyond the tokenizer's, as above
        config.model.num_layers, config.model.num_heads, config.model.width = 2, 2, 32
        config.model.dtype = "float32"
        smoke(
            config,
            num_steps=10,
            batch_size=8,
            warmup_steps=5,
            train=dict(microbatches=2),
            evals=dict(val=dict(batch_size=8, num_examples=16)),
            sample=dict(max_new_tokens=8),
        )
    return config
