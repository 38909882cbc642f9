"""The data layer: the only place in jaxgen that imports tensorflow_datasets or grain.

    info = data.get_info(config.data)  # prepares the dataset once, returns shapes and counts
    train_iter = data.make_iterator(config.data, config.data.train_split,
                                    config.train.batch_size, config.seed, train=True)
    batch = next(train_iter)  # {"image": f32 [b, H, W, C], "label": i32 [b]}, this host's part
    state = train_iter.get_state()  # JSON-serialisable; train_iter.set_state(state) resumes

Every dataset belongs to a registered kind of data (kinds.py: the Kind interface and KINDS):
  "images" (image_kind.py): our TFDS builders (DATASETS: "mnist", "fashion_mnist"; builders.py,
      raw.py, idx.py) and any other name in the TFDS catalog (sources.py);
  "text" (text_kind.py): a token stream (TEXT_DATASETS: "tiny_shakespeare", "text_file";
      text.py), batches {"tokens": int32 [b, seq_len + 1]}, with its tokenizer
      (jaxgen.tokenizers) from load_tokenizer(config.data).
  "pairs" (pairs_kind.py): sentence pairs for translation (PAIR_DATASETS: "bible_es_en",
      "tsv": a UTF-8 TSV file with a header, pairs.py; and TFDS catalog translation datasets such
      as "wmt14_translate/de-en"), split train/validation/test by a hash of each row's id,
      one byte-level BPE shared by both sides plus a <pad> id, batches
      {"source": int32 [b, S], "target": int32 [b, T + 1]} (eos-started and eos-ended, padded
      with pairs.pad_id(tokenizer)) with a "mask" in eval.
  "captions" (captions_kind.py): images with captions for text-to-image (CAPTION_DATASETS:
      captioned MNIST / Fashion-MNIST from class names and templates, "emoji" rendered from
      Noto Color Emoji, a folder with captions.jsonl; captions.py, emoji.py; and TFDS catalog
      ones such as "coco_captions"), batches {"image": f32 [b, H, W, C], "caption": int32
      [b, L]} with augmentation inside the kind.

A kind owns its config.data fields beyond base_config's (a config takes them with
`config.data.update(data.kind_fields("text"))`), their checks, preparation, batches, eval
batches, tokenizers and DatasetInfo; the pipeline (pipeline.py), the loop and the run files
(jaxgen.rundir) go through the interface only. No TensorFlow is needed to prepare our datasets or
to read any prepared one.

A new kind is one module with a Kind subclass registered in KINDS, imported below; nothing
else changes. A kind may add fields to DatasetInfo (with defaults) for what its families must
know, e.g. the vocabulary size of a shared tokenizer; a family writes its samples its own way
(jaxgen.family.Family.write_sample), and the loop stays as it is.
"""

from jaxgen.data import captions_kind, image_kind, pairs_kind, text_kind  # noqa: F401 (register the kinds)
from jaxgen.data.builders import DATASETS
from jaxgen.data.captions import CAPTION_DATASETS
from jaxgen.data.errors import DataError
from jaxgen.data.kinds import (
    KINDS,
    DatasetInfo,
    check_config,
    get_info,
    get_tokenizers,
    kind_fields,
    kind_of,
    load_tokenizer,
)
from jaxgen.data.pipeline import make_iterator
from jaxgen.data.text import TEXT_DATASETS

__all__ = [
    "CAPTION_DATASETS",
    "DATASETS",
    "KINDS",
    "TEXT_DATASETS",
    "DataError",
    "DatasetInfo",
    "check_config",
    "get_info",
    "get_tokenizers",
    "kind_fields",
    "kind_of",
    "load_tokenizer",
    "make_iterator",
]
