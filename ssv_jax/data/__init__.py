"""Data: datasets on disk (TFDS array_record), the embedded corpus, the training pipeline,
evaluation data.

Public API (imported lazily, so worker processes that only decode audio do not
load TensorFlow):
  default_data_config()                         the data ConfigDict (fields documented there)
  train_batches(cfg, *, global_batch, seed, start_step=0, process_index=None, process_count=None,
                consumer_holds=2)
  steps_per_epoch(cfg, global_batch)
  eval_utterances(cfg, split=None)              -> (utterance id, float32 wave)
  load_trials(cfg)                              -> {name: Trials}
  train_split(cfg), eval_split(cfg), trial_lists(cfg)
                                                the config's, or (None) what the dataset records
  ensure_dataset(cfg)                           builds the embedded corpus or names the missing one
  ensure_eval_dataset(cfg)                      only the dataset evaluation reads
  Trials, DatasetNotFoundError
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "default_data_config": "ssv_jax.data.config",
    "DEFAULT_DATA_DIR": "ssv_jax.data.config",
    "train_batches": "ssv_jax.data.pipeline",
    "steps_per_epoch": "ssv_jax.data.pipeline",
    "eval_utterances": "ssv_jax.data.datasets",
    "load_trials": "ssv_jax.data.datasets",
    "train_split": "ssv_jax.data.datasets",
    "eval_split": "ssv_jax.data.datasets",
    "trial_lists": "ssv_jax.data.datasets",
    "ensure_dataset": "ssv_jax.data.datasets",
    "ensure_eval_dataset": "ssv_jax.data.datasets",
    "cohort_utterances": "ssv_jax.data.datasets",
    "DatasetNotFoundError": "ssv_jax.data.datasets",
    "Trials": "ssv_jax.data.trials",
    "parse_trials": "ssv_jax.data.trials",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ssv_jax.data' has no attribute {name!r}")
