"""The data config: every field, its default and what it means."""

from __future__ import annotations

import os

import ml_collections

DEFAULT_DATA_DIR = os.path.join("~", ".cache", "ssv_jax", "tensorflow_datasets")


def default_data_config() -> ml_collections.ConfigDict:
    """The data ConfigDict with every field at its default (the embedded synthetic corpus).

    Fields:
      name: TFDS dataset name to train on. "synthetic" = the embedded procedural
        corpus, built automatically (about a minute) on first use and cached.
        Anything else must have been built by a data_prep/ command.
      data_dir: TFDS data_dir holding the datasets. Default
        ~/.cache/ssv_jax/tensorflow_datasets (or $SSV_JAX_DATA_DIR if set).
      train_split: split of ``name`` to train on; None (default) = the one the
        dataset records ("train" for synthetic and folder datasets, "dev" for
        VoxCeleb).
      eval_name: dataset holding the evaluation utterances and trial lists
        (None = ``name``; "voxceleb1" when training on VoxCeleb2).
      eval_split: split(s) of the eval dataset with the trial utterances, e.g.
        "dev+test"; None (default) = those the dataset records for the lists.
      trials: trial-list names to evaluate, stored with the eval dataset; None
        (default) = every list it stores. E.g. ("voxceleb1_o", "voxceleb1_e",
        "voxceleb1_h").
      sample_rate: 16000 (every dataset is stored at this rate).
      crop_seconds: length of each of the two views (2.0).
      overlap: True = the two crops are drawn independently and may overlap;
        False = the paper-era variant: non-overlapping crops, audio first
        wrap-padded to at least 2 crops.
      seed: data seed (the ``seed`` argument of train_batches overrides it
        when given).
      num_workers: batch-building worker processes (Grain's; 0: each batch is
        built in the calling thread when asked for). Each worker is about one
        host core; batches are identical whatever the number
        (ssv_jax.data.pipeline).
      prefetch: batches each worker keeps built ahead (num_workers > 0); each
        worker holds prefetch + 3 reused shared-memory slots of one batch.
      (Utterances shorter than what the crops need are wrap-padded, never
      dropped; zero-length files never reach a dataset: data_prep skips them.)
      augment: see below.
      synthetic: size of the embedded corpus (only used when name == "synthetic").

    augment fields:
      noise_bank: TFDS name of the additive-noise bank with splits
        noise/speech/music ("musan" from data_prep/musan.py; "synthetic_noise"
        is the embedded one), or None for no additive noise.
      rir_bank: TFDS name of the RIR bank ("rirs" from data_prep/rirs.py;
        "synthetic_rirs" embedded), or None.
      noise_prob: probability a view gets additive noise (1.0: always, as in
        the paper).
      rir_prob: probability a view is reverberated (1.0: always, as in the paper).
      categories: noise categories drawn uniformly for a noised view.
      snr_noise, snr_speech, snr_music: (low, high) SNR in dB per category
        (the paper: 0-15, 13-20, 5-15; docs/method.md#training-data-and-augmentation).
      babble: (min, max) number of speech clips summed for the speech category.
      rir_seconds: RIR length L in samples = rir_seconds * sample_rate
        (longer RIRs truncated, shorter zero-padded).
      eq_prob: probability a view gets a random channel EQ on the device
        (ssv_jax.augment); not in the paper (set 0.0 to reproduce it), it
        decorrelates the channel of the two views, which matters on the
        embedded corpus where sessions differ by channel.
      eq_db: maximum absolute gain of each EQ band in dB.
      eq_bands: number of log-spaced EQ bands (100 Hz - 7 kHz).
      lowpass_prob: probability a view is band-limited (cutoff 3-7.5 kHz).
      enabled: False turns every augmentation off (views pass through).
    """
    c = ml_collections.ConfigDict()
    c.name = "synthetic"
    c.data_dir = os.environ.get("SSV_JAX_DATA_DIR", DEFAULT_DATA_DIR)
    c.train_split = ml_collections.config_dict.placeholder(str)
    c.eval_name = ml_collections.config_dict.placeholder(str)
    c.eval_split = ml_collections.config_dict.placeholder(str)
    c.trials = ml_collections.config_dict.placeholder(tuple)
    c.sample_rate = 16000
    c.crop_seconds = 2.0
    c.overlap = False
    c.seed = 0
    c.num_workers = 2
    c.prefetch = 1

    a = c.augment = ml_collections.ConfigDict()
    a.enabled = True
    a.noise_bank = ml_collections.config_dict.placeholder(str)
    a.noise_bank = "synthetic_noise"
    a.rir_bank = ml_collections.config_dict.placeholder(str)
    a.rir_bank = "synthetic_rirs"
    a.noise_prob = 1.0
    a.rir_prob = 1.0
    a.categories = ("noise", "speech", "music")
    a.snr_noise = (0.0, 15.0)
    a.snr_speech = (13.0, 20.0)
    a.snr_music = (5.0, 15.0)
    a.babble = (3, 7)
    a.rir_seconds = 1.0
    a.eq_prob = 0.5
    a.eq_db = 8.0
    a.eq_bands = 6
    a.lowpass_prob = 0.2

    s = c.synthetic = ml_collections.ConfigDict()
    s.train_speakers = 200
    s.test_speakers = 40
    s.train_sessions = 4
    s.test_sessions = 4
    s.utterances_per_session = 3
    s.min_seconds = 3.0
    s.max_seconds = 6.0
    s.n_trials = 4000
    s.same_session_target_fraction = 0.1
    s.noise_clips = 48
    s.speech_clips = 48
    s.music_clips = 32
    s.bank_seconds = 6.0
    s.rirs = 200
    s.seed = 0
    s.num_workers = 2
    return c
