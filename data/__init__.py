"""Data package: tokenizers, preference datasets and the batch pipeline.

Modules (import them directly; this file stays import-light so that
``import data`` does not pull in TFDS or pyarrow):

* ``data.tokenizer``      -- the tokenizer interface, ``ByteTokenizer``, ``HFTokenizer``.
* ``data.chat_template``  -- a checkpoint's Jinja chat template, rendered as transformers does.
* ``data.synthetic``      -- the built-in digit-sorting preference task and its verifier.
* ``data.readers``        -- local JSONL / JSON / Parquet files: TRL, UltraFeedback, HH-RLHF
                             and unpaired (KTO) layouts.
* ``data.tfds_builders``  -- TFDS builders (array_record, no TensorFlow) and
                             ``load_preference_source``.
* ``data.pipeline``       -- ``tokenize`` (records -> ``TokenizedPairs``: truncation, counts),
                             padding, resumable batching of tokenized pairs.
* ``data.tokenized_cache`` -- ``load_tokenized``: a tokenized split cached as array_record,
                             so a restart does not tokenize again.
* ``data.errors``         -- ``DataError``, raised for malformed input data.
"""
