"""Character-level GPT on tiny Shakespeare: nanoGPT's `train_shakespeare_char`, setting for setting.

    python -m experiments.train --config=configs/gpt/shakespeare_char.py --workdir=/tmp/shakespeare
    python -m experiments.train --config=configs/gpt/shakespeare_char.py:cpu --workdir=/tmp/sc_cpu
    python -m experiments.sample --workdir=/tmp/shakespeare --config.sample.prompt="ROMEO:" \
        --config.sample.max_new_tokens=250 --config.sample.top_k=200

Expected: best val loss about 1.47 (nanoGPT on one H100: 1.4665 at iteration 1750; it overfits
after that, with dropout 0.2 holding it near 1.5). "cpu" is nanoGPT's README laptop run (4 layers,
width 128, context 64, batch 12, 2000 iterations, no dropout): val loss about 1.88.

Arguments (comma-separated): "cpu" (the laptop run), "smoke" (seconds on CPU; tests rely on it),
"bpe" (a byte-level BPE of 512 tokens trained on the train split instead of characters),
"rope" (rotary positions instead of learned ones).
"""

from jaxgen import data
from jaxgen.config import ConfigDict, base_config, smoke


def get_config(arg: str = "") -> ConfigDict:
    args = set(filter(None, arg.split(",")))
    unknown = args - {"cpu", "smoke", "bpe", "rope"}
    if unknown:
        raise ValueError(f"configs/gpt/shakespeare_char.py: unknown argument(s) {sorted(unknown)}")
    config = base_config()
    config.family = "gpt"

    config.data.update(data.kind_fields("text"))  # seq_len, tokenizer, vocab_size, ...
    config.data.name = "tiny_shakespeare"  # nanoGPT's split: first 90% train, last 10% validation
    config.data.eval_split = "validation"
    config.data.seq_len = 256  # nanoGPT's block_size
    config.data.tokenizer = "char"  # 65 characters
    if "bpe" in args:
        config.data.tokenizer, config.data.vocab_size = "bpe", 512

    config.model.name = "gpt"
    config.model.vocab_size = 0  # the tokenizer's
    config.model.block_size = 256
    config.model.num_layers = 6
    config.model.num_heads = 6
    config.model.width = 384
    config.model.dropout = 0.2  # the model overfits the 1M characters without it
    config.model.bias = False  # nanoGPT's default: a little faster, a little better
    config.model.position = "learned"  # "rope": rotary embeddings (Su et al. 2021)
    config.model.attention = "auto"  # cuDNN flash on GPU in bf16; explicit softmax on CPU; else XLA
    config.model.layer_norm_epsilon = 1e-5  # GPT-2's and nanoGPT's
    if "rope" in args:
        config.model.position = "rope"

    config.loss.name = "cross_entropy"
    config.loss.kw = ConfigDict({"label_smoothing": 0.0})

    config.optim.name = "adamw"
    config.optim.lr = 1e-3  # small models tolerate a high rate
    config.optim.b1 = 0.9
    config.optim.b2 = 0.99  # few tokens per iteration: a shorter second-moment memory
    config.optim.weight_decay = 0.1  # on matrices and embeddings (ndim >= 2), as nanoGPT
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 100
    config.optim.min_lr_ratio = 0.1  # min_lr 1e-4 = lr / 10 (Chinchilla's advice)
    config.optim.grad_clip_norm = 1.0

    config.train.num_steps = 5000
    config.train.batch_size = 64
    config.train.log_every = 10
    config.train.eval_every = 250
    config.train.ckpt_every = 250
    config.train.sample_every = 1000

    # nanoGPT's estimate_loss: eval_iters=200 batches of 64 windows. Ours are 200 x 64 windows
    # spread over the split in a fixed order (the same at every evaluation; data/).
    config.evals = ConfigDict({"val": {"type": "loss", "batch_size": 64, "num_examples": 200 * 64}})

    config.sample.num_samples = 4  # continuations per prompt
    config.sample.prompt = "\n"  # several prompts: joined with prompt_separator
    config.sample.prompt_separator = "|"
    config.sample.max_new_tokens = 255  # prompt + new tokens fit the context (no sliding window)
    config.sample.temperature = 0.8  # nanoGPT's sample.py
    config.sample.top_k = 200
    config.sample.top_p = 1.0  # 1 disables nucleus sampling
    config.sample.num_beams = 1  # > 1: beam search (deterministic)
    config.sample.num_return_sequences = 1  # beams: the best R distinct ones per prompt
    config.sample.length_penalty = 1.0
    config.sample.early_stopping = False
    config.sample.no_repeat_ngram_size = 0
    config.sample.use_kv_cache = True  # False: recompute the whole prefix every token (checking)

    if "cpu" in args:  # nanoGPT README: "I only have a macbook"
        config.data.seq_len = config.model.block_size = 64
        config.model.num_layers, config.model.num_heads, config.model.width = 4, 4, 128
        config.model.dropout = 0.0
        config.train.num_steps = 2000  # and the cosine over 2000 (lr_decay_iters=2000)
        config.train.batch_size = 12
        config.evals.val.batch_size = 12
        config.evals.val.num_examples = 20 * 12  # eval_iters=20
        config.sample.max_new_tokens = 60  # prompt + new tokens fit the 64-token context
    if "smoke" in args:
        config.data.seq_len = config.model.block_size = 32
        config.model.num_layers, config.model.num_heads, config.model.width = 2, 2, 32
        smoke(
            config,
            batch_size=8,
            warmup_steps=5,
            evals=dict(val=dict(batch_size=8, num_examples=16)),
            sample=dict(max_new_tokens=16),
        )
    return config
