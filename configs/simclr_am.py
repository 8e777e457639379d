"""The paper's best system: SimCLR with the symmetric NT-Xent-AM loss, Fast ResNet-34, trained on
VoxCeleb2-dev without labels and scored on VoxCeleb1-O/E/H (7.85% EER on O in the paper).

Every value the paper sets is stated below (docs/method.md, "The paper's recipe", lists the same);
the other fields keep the defaults documented in ssv_jax/config.py. Recipe arguments change it:
``:demo`` (the embedded synthetic corpus on a laptop CPU), ``:small`` (a folder of your own
recordings, from the network pretrained on the embedded corpus), ``:ecapa`` (ECAPA-TDNN).
"""

from ssv_jax.config import base_config, variants


def get_config(arg=None):
    cfg = base_config()

    # Data: two 2 s crops of each VoxCeleb2-dev utterance, not overlapping; labels never used.
    cfg.data.name, cfg.data.train_split = "voxceleb2", "dev"
    cfg.data.crop_seconds, cfg.data.overlap = 2.0, False
    cfg.data.eval_name, cfg.data.eval_split = "voxceleb1", "dev+test"
    cfg.data.trials = ("voxceleb1_o", "voxceleb1_e", "voxceleb1_h")

    # Augmentation of every view: MUSAN noise, babble or music at these SNRs (dB), then a
    # simulated room impulse response of 1 s. No channel EQ or band limit.
    aug = cfg.data.augment
    aug.noise_bank, aug.noise_prob = "musan", 1.0
    aug.snr_noise, aug.snr_speech, aug.snr_music = (0.0, 15.0), (13.0, 20.0), (5.0, 15.0)
    aug.babble = (3, 7)
    aug.rir_bank, aug.rir_prob, aug.rir_seconds = "rirs", 1.0, 1.0
    aug.eq_prob, aug.lowpass_prob = 0.0, 0.0

    # Front-end: 40 log-mel bands of a 512-point FFT, 25 ms Hamming window, 10 ms hop, each band
    # normalised over the utterance.
    fe = cfg.frontend
    fe.n_mels, fe.n_fft, fe.win_length, fe.hop_length = 40, 512, 400, 160
    fe.window, fe.norm = "hamming", "instance"

    # Encoder: Fast ResNet-34 (16-32-64-128 channels, 3-4-6-3 blocks), SAP pooling, 512-d.
    cfg.model.name, cfg.model.pooling, cfg.model.embed_dim = "fast_resnet34", "sap", 512
    cfg.model.channels, cfg.model.blocks = (16, 32, 64, 128), (3, 4, 6, 3)

    # Method: SimCLR, symmetric NT-Xent-AM with s = 30 and m = 0.1, on the embeddings directly.
    cfg.method.name, cfg.method.loss, cfg.method.symmetric = "simclr", "nt_xent_am", True
    cfg.method.scale, cfg.method.margin = 30.0, 0.1
    cfg.method.projector, cfg.method.drop_nearest = False, 0

    # Optimisation: Adam at 1e-3, x 0.95 every 5 epochs, no weight decay; 100 epochs of a global
    # batch of 256 utterances (2 views each).
    cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay = "adam", 1e-3, 0.0
    cfg.optim.schedule, cfg.optim.decay_rate, cfg.optim.decay_epochs = "step", 0.95, 5
    cfg.train.batch_size, cfg.train.epochs = 256, 100

    # Evaluation: 10 frames of 4 s per utterance, a trial's score the mean of the 10 x 10
    # cosines, no score normalisation.
    cfg.eval.protocol, cfg.eval.num_frames, cfg.eval.frame_seconds = "segments", 10, 4.0
    cfg.eval.score_norm = "none"
    return variants(cfg, arg)
