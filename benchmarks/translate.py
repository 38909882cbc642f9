"""Translation throughput of batched beam search (sentences/s and new tokens/s), one JSON line.

    python -m benchmarks.translate --workdir=/tmp/bible          # a trained run, test verses
    python -m benchmarks.translate --config=configs/seq2seq/bible_es_en.py --arg=smoke \
        --batch_sizes=1,8                                         # random params: a CPU check

Each batch size is one compiled translate call (sampling/seq2seq.py: encoder once, cached
decoder, beam search in one lax.while_loop), timed on a second call after compiling on the
first. Sources are the first verses of the eval split (real lengths); with random params rows
rarely end early, so tokens/s then counts max_new_tokens per row: an upper bound on work.
"step" is XLA's cost analysis of one compiled beam step of the largest batch (reorder the
decoder state by beam, then extend every beam by one token): flops and bytes accessed.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import data, runs
from jaxgen.config import load_workdir_config
from jaxgen.data import pairs
from jaxgen.models import seq2seq as models
from jaxgen.sampling import decoding
from jaxgen.sampling import seq2seq as sampling
from tests.helpers import load_config


def step_cost(model, config, params, source, eos_id: int, pad_id: int) -> dict:
    """XLA's flops and bytes accessed of one beam step (take_rows + extend) over source [B, S]."""
    settings = decoding.read_settings(config.sample)
    decoder = sampling.make_decoder(model, eos_id, pad_id, settings.max_new_tokens + 1)
    _, state = jax.jit(decoder.prefill)(params, source)
    rows = jnp.repeat(jnp.arange(source.shape[0]), settings.num_beams)  # [B * K]
    state = decoder.take_rows(state, rows)

    def step(params, state, rows, tokens):
        return decoder.extend(params, tokens, decoder.take_rows(state, rows), jnp.int32(0))

    tokens = jnp.zeros(rows.shape, jnp.int32)
    cost = jax.jit(step).lower(params, state, rows, tokens).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # a list in older jax
    return {"flops": cost["flops"], "bytes_accessed": cost["bytes accessed"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="")
    parser.add_argument("--config", default="configs/seq2seq/bible_es_en.py")
    parser.add_argument("--arg", default="")
    parser.add_argument("--batch_sizes", default="1,64")
    parser.add_argument("--num_beams", type=int, default=4)
    args = parser.parse_args()

    if args.workdir:
        config = load_workdir_config(args.workdir)
        run = runs.load_run(config, args.workdir)
        config, params = run.config, jax.device_get(run.state.eval_params)
    else:
        config, params = load_config(args.config, args.arg), None
    config.sample.update(num_beams=args.num_beams, num_return_sequences=1)
    tokenizer = data.load_tokenizer(config.data)
    pad_id, eos_id = pairs.pad_id(tokenizer), tokenizer.eos_id
    model = models.make_model(config.model, tokenizer.vocab_size, pad_id)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    batch = next(
        data.make_iterator(config.data, config.data.eval_split, max(sizes), 0, train=False)
    )
    if params is None:
        params = model.init(jax.random.key(0), batch["source"][:1], batch["target"][:1, :-1])
        params = params["params"]
    translate = jax.jit(sampling.make_translate(model, config.sample, eos_id, pad_id))
    result = {"benchmark": "translate", "device": jax.devices()[0].device_kind}
    result |= {"num_beams": args.num_beams, "max_new_tokens": config.sample.max_new_tokens}
    for size in sizes:
        source = jnp.asarray(batch["source"][:size])
        start = time.perf_counter()
        jax.block_until_ready(translate(params, source, jax.random.key(0)))
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        output = jax.block_until_ready(translate(params, source, jax.random.key(0)))
        seconds = time.perf_counter() - start
        tokens = int(np.asarray(output.lengths).sum())
        result[f"batch{size}"] = {
            "sentences_per_s": round(size / seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1),
            "seconds": round(seconds, 4),
            "compile_s": round(compile_s, 2),
        }
    source = jnp.asarray(batch["source"][: max(sizes)])
    result[f"step_batch{max(sizes)}"] = step_cost(model, config, params, source, eos_id, pad_id)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
