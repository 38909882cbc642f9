"""The data layer: the only place in jaxgen that imports tensorflow_datasets or grain.

    info = data.get_info(config.data)  # prepares the dataset once, returns shapes and counts
    train_iter = data.make_iterator(config.data, config.data.train_split,
                                    config.train.batch_size, config.seed, train=True)
    batch = next(train_iter)  # {"image": f32 [b, H, W, C], "label": i32 [b]}, this host's part
    state = train_iter.get_state()  # JSON-serialisable; train_iter.set_state(state) resumes

Datasets are our TFDS builders (DATASETS: "mnist", "fashion_mnist"; builders.py, raw.py,
idx.py) or any other name in the TFDS catalog (sources.py); the Grain pipelines are in
pipeline.py. Text datasets (TEXT_DATASETS: "tiny_shakespeare", "text_file"; text.py) give
{"tokens": int32 [b, seq_len + 1]} batches, and their tokenizer (jaxgen.tokenizers) comes from
load_tokenizer(config.data). No TensorFlow is needed to prepare our datasets or to read any
prepared one.
"""

from jaxgen.data.builders import DATASETS
from jaxgen.data.errors import DataError
from jaxgen.data.pipeline import make_iterator
from jaxgen.data.sources import DatasetInfo, check_config, get_info, load_tokenizer
from jaxgen.data.text import TEXT_DATASETS

__all__ = [
    "DATASETS",
    "TEXT_DATASETS",
    "DataError",
    "DatasetInfo",
    "check_config",
    "get_info",
    "load_tokenizer",
    "make_iterator",
]
