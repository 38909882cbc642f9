"""Fine-tune a trained GPT run on another text: its params, its tokenizer, a gentle schedule.

    python -m experiments.train --config=configs/gpt/shakespeare_char.py --workdir=/tmp/shakespeare
    python -m experiments.train --config=configs/gpt/finetune.py --workdir=/tmp/finetuned \
        --config.init_from=/tmp/shakespeare --config.data.text_file=/data/sonnets.txt \
        --config.data.tokenizer=/tmp/shakespeare/tokenizer.json

The argument is the shakespeare_char.py argument the source run was trained with ("" for the
full model, "cpu", "smoke"), so the architecture matches its checkpoint. `init_from` loads the
params only: the optimizer, the step and the data order start afresh. The tokenizer must be the
source run's (a character tokenizer cannot encode characters it has never seen: such a corpus is
refused with the offending character named). Expected: the validation loss on the new text drops
within a few hundred steps, starting far below a fresh model's log(65) = 4.17.
"""

from jaxgen.config import ConfigDict, sibling_config, smoke


def get_config(arg: str = "") -> ConfigDict:
    config = sibling_config(
        __file__, "shakespeare_char.py", arg
    )  # the same model; "smoke" also shrinks training below
    config.init_from = ""  # required: the source run's workdir (or one checkpoint step in it)

    config.data.name = "text_file"
    config.data.text_file = ""  # required: the UTF-8 text to fine-tune on
    config.data.val_fraction = 0.1
    config.data.tokenizer = ""  # required: the source run's tokenizer.json

    config.model.dropout = 0.1  # small data: keep some regularisation

    config.optim.lr = 1e-4  # a tenth of pretraining: adapt without forgetting
    config.optim.schedule = "constant"
    config.optim.warmup_steps = 50
    config.optim.ema_decay = 0.0

    config.train.num_steps = 500
    config.train.eval_every = config.train.ckpt_every = 100
    config.train.sample_every = 250
    if "smoke" in arg:  # self-contained, so it validates alone; tests set the three above
        smoke(config, num_steps=10, batch_size=8)
        config.data.name, config.data.tokenizer = "tiny_shakespeare", "char"
    return config
