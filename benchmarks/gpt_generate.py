"""Greedy decoding speed of GPT-2 124M with the KV cache: new tokens/s. One JSON line.

    python -m benchmarks.gpt_generate                        # batch 1 and 32, as HF generate
    python -m benchmarks.gpt_generate --config=configs/gpt/gpt2_124m.py:smoke --batch_sizes=1,4 \
        --prompt_len=8 --new_tokens=16 --repeats=1             # checks the script on CPU

A 64-token prompt and 256 new tokens per row (no EOS, so every row runs to the end), the whole
decode one jitted call (sampling/gpt.py). Params are a fresh initialisation in the config's
dtype for compute (bf16). Each batch size is compiled once, then timed `--repeats` times; the
median is reported. Prefill is included in the time, as in HF's generate.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.models import gpt as models
from jaxgen.sampling import gpt as sampling
from tests.helpers import load_config


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/gpt/gpt2_124m.py")
    parser.add_argument("--batch_sizes", default="1,32")
    parser.add_argument("--prompt_len", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no_cache", action="store_true", help="the cache-free path")
    args = parser.parse_args()

    path, _, arg = args.config.partition(":")
    config = load_config(path, arg)
    config.sample.max_new_tokens = args.new_tokens
    config.sample.temperature, config.sample.top_k, config.sample.num_beams = 0.0, 0, 1
    config.sample.use_kv_cache = not args.no_cache
    vocab = config.model.vocab_size or config.data.vocab_size
    model = models.make_model(config.model, vocab)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, args.prompt_len), jnp.int32))[
        "params"
    ]
    generate = jax.jit(sampling.make_generate(model, config.model, config.sample, eos_id=None))

    results = {}
    for batch in map(int, args.batch_sizes.split(",")):
        rng = np.random.default_rng(batch)
        prompt = jnp.asarray(rng.integers(0, vocab, (batch, args.prompt_len), dtype=np.int32))
        lengths = jnp.full((batch,), args.prompt_len, jnp.int32)
        key = jax.random.PRNGKey(0)
        start = time.perf_counter()
        jax.block_until_ready(generate(params, prompt, lengths, key))
        compile_s = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = jax.block_until_ready(generate(params, prompt, lengths, key))
            times.append(time.perf_counter() - start)
        assert int(out.steps) == args.new_tokens
        seconds = statistics.median(times)
        results[str(batch)] = {
            "tokens_per_s": round(batch * args.new_tokens / seconds, 1),
            "ms_per_token": round(1e3 * seconds / args.new_tokens, 3),
            "compile_s": round(compile_s, 2),
        }
    print(
        json.dumps(
            {
                "benchmark": "gpt_generate",
                "config": args.config,
                "device": jax.devices()[0].device_kind,
                "jax": jax.__version__,
                "dtype": config.model.dtype,
                "prompt_len": args.prompt_len,
                "new_tokens": args.new_tokens,
                "kv_cache": not args.no_cache,
                "repeats": args.repeats,
                "batch": results,
            }
        )
    )


if __name__ == "__main__":
    main()
