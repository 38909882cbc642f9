"""experiments/import_gpt2 on a small random GPT-2 folder written here, against a NumPy GPT-2.

The folder is what Hugging Face's save_pretrained writes for GPT2LMHeadModel: config.json,
model.safetensors (Conv1D kernels [in, out], fused c_attn [E, 3E], the causal-mask buffers)
and a byte-level BPE as vocab.json + merges.txt. The reference forward below follows HF's
modeling_gpt2 (gelu_new, LayerNorm epsilon from config.json, attention scaled by
1/sqrt(head_dim), head tied to wte), in float64, with nothing from jaxgen.
"""

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from experiments import import_gpt2
from jaxgen import pretrained, tokenizers
from jaxgen.config import load_workdir_config
from jaxgen.models import gpt, gpt_pretrained
from tests.e2e import final_params, run_script, stderr_lines
from tests.helpers import tree_snapshot

LAYERS, HEADS, WIDTH, POSITIONS, EPSILON = 2, 2, 16, 32, 1e-5
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer\n"


def hf_config(vocab, **overrides):
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_layer": LAYERS,
        "n_head": HEADS,
        "n_embd": WIDTH,
        "n_positions": POSITIONS,
        "n_ctx": POSITIONS,
        "vocab_size": vocab,
        "layer_norm_epsilon": EPSILON,
        "activation_function": "gelu_new",
        "bos_token_id": 0,
        "eos_token_id": 0,
    } | overrides


def random_weights(vocab, seed=0):
    """HF GPT-2 state dict names and shapes. Embeddings of std 0.003: the hidden states then
    have a variance near the LayerNorm epsilon, so 1e-5 and Flax's 1e-6 give different logits."""
    rng = np.random.default_rng(seed)

    def normal(*shape, std=0.2):
        return rng.normal(0.0, std, shape).astype(np.float32)

    weights = {
        "wte.weight": normal(vocab, WIDTH, std=0.003),
        "wpe.weight": normal(POSITIONS, WIDTH, std=0.003),
        "ln_f.weight": 1 + normal(WIDTH, std=0.1),
        "ln_f.bias": normal(WIDTH, std=0.01),
    }
    for layer in range(LAYERS):
        h = f"h.{layer}"
        weights |= {
            f"{h}.ln_1.weight": 1 + normal(WIDTH, std=0.1),
            f"{h}.ln_1.bias": normal(WIDTH, std=0.01),
            f"{h}.attn.c_attn.weight": normal(WIDTH, 3 * WIDTH),
            f"{h}.attn.c_attn.bias": normal(3 * WIDTH, std=0.02),
            f"{h}.attn.c_proj.weight": normal(WIDTH, WIDTH, std=0.003),
            f"{h}.attn.c_proj.bias": normal(WIDTH, std=0.001),
            f"{h}.ln_2.weight": 1 + normal(WIDTH, std=0.1),
            f"{h}.ln_2.bias": normal(WIDTH, std=0.01),
            f"{h}.mlp.c_fc.weight": normal(WIDTH, 4 * WIDTH),
            f"{h}.mlp.c_fc.bias": normal(4 * WIDTH, std=0.02),
            f"{h}.mlp.c_proj.weight": normal(4 * WIDTH, WIDTH, std=0.003),
            f"{h}.mlp.c_proj.bias": normal(WIDTH, std=0.001),
            # The causal mask HF saved as a buffer in older checkpoints: not a parameter.
            f"{h}.attn.bias": np.tril(np.ones((1, 1, POSITIONS, POSITIONS), np.float32)),
        }
    return weights


def write_folder(path, weights=None, config=None, tokenizer_json=False):
    """A GPT-2 folder: config.json, model.safetensors and vocab.json + merges.txt (or
    tokenizer.json) of a byte-level BPE trained on TEXT, <|endoftext|> its id 0."""
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizers.train_bpe(TEXT * 20, 300)
    if tokenizer_json:
        tokenizer.save(path / "tokenizer.json")
    else:
        tokenizer.hf.model.save(str(path))  # vocab.json, merges.txt
    vocab = tokenizer.vocab_size
    weights = random_weights(vocab) if weights is None else weights
    (path / "config.json").write_text(json.dumps(config or hf_config(vocab)))
    safetensors.numpy.save_file(weights, str(path / "model.safetensors"))
    return tokenizer, weights


def gelu_new(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def layer_norm(x, weights, name):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPSILON) * weights[f"{name}.weight"] + weights[f"{name}.bias"]


def gpt2_logits(weights, tokens):
    """HF GPT-2's forward on tokens [T]: logits [T, vocab], float64."""
    w = {name: np.asarray(x, np.float64) for name, x in weights.items()}
    steps, head_dim = len(tokens), WIDTH // HEADS
    x = w["wte.weight"][tokens] + w["wpe.weight"][:steps]
    causal = np.tril(np.ones((steps, steps), bool))
    for layer in range(LAYERS):
        h = f"h.{layer}"
        qkv = layer_norm(x, w, f"{h}.ln_1") @ w[f"{h}.attn.c_attn.weight"]
        qkv = qkv + w[f"{h}.attn.c_attn.bias"]
        q, k, v = (
            part.reshape(steps, HEADS, head_dim).transpose(1, 0, 2)
            for part in np.split(qkv, 3, axis=-1)
        )  # [heads, T, head_dim] each
        scores = np.where(causal, q @ k.transpose(0, 2, 1) / np.sqrt(head_dim), -np.inf)
        attention = np.exp(scores - scores.max(-1, keepdims=True))
        attention /= attention.sum(-1, keepdims=True)
        y = (attention @ v).transpose(1, 0, 2).reshape(steps, WIDTH)
        x = x + y @ w[f"{h}.attn.c_proj.weight"] + w[f"{h}.attn.c_proj.bias"]
        hidden = gelu_new(
            layer_norm(x, w, f"{h}.ln_2") @ w[f"{h}.mlp.c_fc.weight"] + w[f"{h}.mlp.c_fc.bias"]
        )
        x = x + hidden @ w[f"{h}.mlp.c_proj.weight"] + w[f"{h}.mlp.c_proj.bias"]
    return layer_norm(x, w, "ln_f") @ w["wte.weight"].T


def test_params_map_hf_layout_to_jaxgen_logits(tmp_path):
    """In process: the converted params give HF's logits (and not with Flax's epsilon)."""
    tokenizer, weights = write_folder(tmp_path / "hf")
    sizes = gpt_pretrained.read_hf_config(str(tmp_path / "hf"))
    read, origin = read_weights(str(tmp_path / "hf"))
    params = gpt_pretrained.to_params(read, sizes, origin)
    config = import_gpt2.run_config(sizes)
    model = gpt.make_model(config.model, sizes["vocab"])
    tokens = tokenizer.encode(TEXT)[:POSITIONS]
    expected = gpt2_logits(weights, tokens)
    logits = model.apply({"params": params}, jnp.asarray(tokens)[None])[0]
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4)
    flax_default = model.clone(layer_norm_epsilon=1e-6)
    far = np.abs(flax_default.apply({"params": params}, jnp.asarray(tokens)[None])[0] - expected)
    assert far.max() > 1e-2  # the test can tell the epsilons apart
    # The rebuilt tokenizer encodes and decodes as the one that wrote vocab.json/merges.txt.
    rebuilt = gpt_pretrained.read_tokenizer(str(tmp_path / "hf"))
    np.testing.assert_array_equal(rebuilt.encode(TEXT), tokenizer.encode(TEXT))
    assert rebuilt.decode(rebuilt.encode(TEXT)) == TEXT and rebuilt.eos_id == 0


def test_tokenizer_json_is_read_as_is(tmp_path):
    tokenizer, _ = write_folder(tmp_path, tokenizer_json=True)
    assert gpt_pretrained.read_tokenizer(str(tmp_path)).to_json() == tokenizer.to_json()


@pytest.mark.parametrize(
    "break_it,message",
    [
        (lambda path: (path / "config.json").unlink(), "config.json: missing"),
        (lambda path: edit_config(path, model_type="bert"), "model_type is 'bert'"),
        (lambda path: edit_config(path, n_embd=24), "wte.weight has shape .* the model needs"),
        (lambda path: (path / "model.safetensors").unlink(), "no model.safetensors"),
        (lambda path: (path / "merges.txt").unlink(), "no tokenizer.json"),
    ],
    ids=["no_config", "not_gpt2", "wrong_shape", "no_weights", "no_tokenizer"],
)
def test_bad_folders_name_the_problem(tmp_path, break_it, message):
    write_folder(tmp_path)
    break_it(tmp_path)
    with pytest.raises(pretrained.WeightError, match=message):
        sizes = gpt_pretrained.read_hf_config(str(tmp_path))
        weights, origin = read_weights(str(tmp_path))
        gpt_pretrained.to_params(weights, sizes, origin)
        gpt_pretrained.read_tokenizer(str(tmp_path))


def test_bin_weights_without_torch_say_so(tmp_path, monkeypatch):
    write_folder(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(pretrained.WeightError, match="pytorch_model.bin: .* needs torch"):
        read_weights(str(tmp_path))


def read_weights(folder):
    return pretrained.read_weights(folder, *gpt_pretrained.WEIGHT_FILES)


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | changes))


# --------------------------------------------------------------------------------------------
# End to end: the scripts, as a user runs them.


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_gpt2")
    _, weights = write_folder(folder)
    workdir = tmp_path_factory.mktemp("imported") / "run"
    result = run_script("import_gpt2", f"--hf_dir={folder}", f"--workdir={workdir}")
    return folder, weights, workdir, result


@pytest.mark.slow
def test_import_writes_a_run_with_hf_logits(imported):
    _, weights, workdir, result = imported
    assert "fine-tune with: --config.init_from=" in result.stdout
    config = load_workdir_config(str(workdir))
    assert config.model.layer_norm_epsilon == EPSILON and config.model.bias
    assert (config.model.num_layers, config.model.width) == (LAYERS, WIDTH)
    tokenizer = tokenizers.load(workdir / "tokenizer.json")
    saved = final_params(str(workdir), 0)  # keyed by path, as the checkpoint holds them
    params = {}
    for key, value in saved.items():  # e.g. "['params']['h_0']['attn']['qkv']['kernel']"
        if key.startswith("['params']"):
            *parents, name = re.findall(r"\['([^']+)'\]", key)[1:]
            node = params
            for parent in parents:
                node = node.setdefault(parent, {})
            node[name] = value
    model = gpt.make_model(config.model, tokenizer.vocab_size)
    tokens = tokenizer.encode(TEXT)[:POSITIONS]
    logits = model.apply({"params": jax.tree.map(jnp.asarray, params)}, jnp.asarray(tokens)[None])
    np.testing.assert_allclose(logits[0], gpt2_logits(weights, tokens), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_sample_prints_each_beam_once(imported):
    _, _, workdir, _ = imported
    result = run_script(
        "sample",
        f"--workdir={workdir}",
        "--config.sample.prompt=To be",
        "--config.sample.max_new_tokens=8",
        "--config.sample.num_beams=3",
        "--config.sample.num_return_sequences=2",
    )
    path = workdir / "samples" / "text_0000000_seed0.txt"
    texts = path.read_text(encoding="utf-8").rstrip("\n").split("\n---------------\n")
    print(result.stdout)  # kept in the test log: the sample of a random GPT-2
    assert len(texts) == 2 and texts[0] != texts[1]  # num_samples=4 copies no more
    assert all(text.startswith("To be") and text in result.stdout for text in texts)


@pytest.mark.slow
def test_finetune_starts_from_the_imported_params(imported, tmp_path):
    _, _, workdir, result = imported
    finetune = result.stdout.split("fine-tune with: ")[1].split()
    run_script(
        "train",
        "--config=configs/gpt/gpt2_124m.py:smoke",
        f"--workdir={tmp_path / 'tuned'}",
        *finetune,
        "--config.train.num_steps=2",
        "--config.train.eval_every=2",
        "--config.train.ckpt_every=2",
        "--config.train.sample_every=2",
    )
    rows = [json.loads(line) for line in (tmp_path / "tuned" / "metrics.jsonl").open()]
    assert any(row["split"] == "eval" for row in rows)


@pytest.mark.slow
def test_bad_folder_is_one_line_and_exit_2(tmp_path):
    write_folder(tmp_path / "hf", config=hf_config(300, model_type="gpt_neo"))
    result = run_script(
        "import_gpt2", f"--hf_dir={tmp_path / 'hf'}", f"--workdir={tmp_path / 'w'}", check=False
    )
    lines = stderr_lines(result)
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "config.json" in lines[0] and "gpt_neo" in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda p: (p / "config.json").write_text("[1, 2]"), "config.json: not a JSON object"),
        (lambda p: edit_config(p, layer_norm_epsilon="abc"), "layer_norm_epsilon must be a"),
        (lambda p: edit_config(p, layer_norm_epsilon=None), "layer_norm_epsilon must be a"),
        (lambda p: edit_config(p, layer_norm_epsilon=-1e-5), "layer_norm_epsilon must be a"),
        (lambda p: edit_config(p, n_layer=True), "no positive integer for the layers"),
        (lambda p: edit_config(p, n_positions=1, n_ctx=1), "n_positions=1: must be >= 2"),
        (
            lambda p: safetensors.numpy.save_file(
                {k: v.astype(np.int8) for k, v in random_weights(300).items()},
                str(p / "model.safetensors"),
            ),
            "holds int8 values, not floating point",
        ),
        (
            lambda p: safetensors.numpy.save_file(
                {k: np.full_like(v, np.nan) for k, v in random_weights(300).items()},
                str(p / "model.safetensors"),
            ),
            "NaN or infinite values",
        ),
    ],
    ids=[
        "list",
        "eps_str",
        "eps_null",
        "eps_negative",
        "n_layer_bool",
        "positions_1",
        "int8",
        "nan",
    ],
)
def test_bad_values_are_one_line_and_leave_nothing(tmp_path, break_it, message):
    write_folder(tmp_path / "hf")
    break_it(tmp_path / "hf")
    result = run_script(
        "import_gpt2", f"--hf_dir={tmp_path / 'hf'}", f"--workdir={tmp_path / 'w'}", check=False
    )
    lines = stderr_lines(result)
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no run, no hidden folder


@pytest.mark.slow
def test_an_existing_run_is_never_touched(tmp_path):
    """A run whose steps moved to checkpoints_unreadable/, a folder that is a file, a folder a
    trainer holds: one line each, nothing changed."""
    write_folder(tmp_path / "hf")
    run = tmp_path / "run"
    (run / "checkpoints_unreadable" / "10").mkdir(parents=True)
    (run / "config.json").write_text('{"family": "seq2seq"}')
    (run / "tokenizer.json").write_text("trained")
    (tmp_path / "file").write_text("notes")
    before = tree_snapshot(tmp_path)
    for workdir, message in [(run, "already holds a run"), (tmp_path / "file", "is a file")]:
        result = run_script(
            "import_gpt2", f"--hf_dir={tmp_path / 'hf'}", f"--workdir={workdir}", check=False
        )
        lines = stderr_lines(result)
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
        assert lines[0].startswith("error: --workdir: ") and message in lines[0]
    assert tree_snapshot(tmp_path) == before
