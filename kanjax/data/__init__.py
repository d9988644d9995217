"""Data: AGNews, chat SFT and plain text from files, the hub or TFDS -> cached token arrays -> grain
batches.

Modules: `sources` (raw rows and their checks), `tfds` (TFDS as a source, no TensorFlow), `arrays`
(tokenised arrays: encode, pack, pad, vocabulary id maps), `pipeline` (the tokenizer, the cache,
batches).
"""

from kanjax.data.pipeline import build, load_arrays, load_tokenizer, train_texts
from kanjax.data.sources import DataError, load_raw

__all__ = ["load_tokenizer", "load_arrays", "build", "train_texts", "load_raw", "DataError"]
