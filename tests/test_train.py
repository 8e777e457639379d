"""Training end to end on a tiny corpus: sharded step == 1 device, resume == uninterrupted,
MoCo queue/EMA, config overrides, NaN handling, main.py."""

import ast
import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ssv_jax import checkpoints, evaluate, metrics
from ssv_jax import config as config_lib
from ssv_jax import data as data_lib
from ssv_jax import run as run_lib
from ssv_jax import state as state_lib
from ssv_jax import train as train_lib
from ssv_jax import workdir as workdir_lib
from ssv_jax.backends.neighbours import expand_neighbours
from ssv_jax.optim import lr_schedule, make_optimizer
from ssv_jax.sharding import data_mesh
from tests.helpers.cases import TINY_RESNET, run_main, run_steps, tiny_config, tiny_main_overrides
from tests.helpers.procs import worker_pids

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    data_lib.ensure_dataset(tiny_config(d).data)
    return d


def _initial(cfg):
    return state_lib.create(cfg, make_optimizer(cfg.optim, lr_schedule(cfg.optim, 1, 4)))[1]


@pytest.mark.slow
@pytest.mark.parametrize("method,drop", [("simclr", 0), ("moco", 0), ("moco", 2)])
def test_sharded_step_equals_single_device(data_dir, method, drop):
    cfg = tiny_config(data_dir, method, drop_nearest=drop)
    # SGD: Adam's g / sqrt(v) turns float32 rounding in near-zero gradients into lr-sized
    # differences, which would hide what this test checks (the gradients themselves).
    cfg.optim.name, cfg.optim.lr = "sgd", 0.05
    s8, m8 = run_steps(cfg, data_mesh(), n_steps=2)
    s1, m1 = run_steps(cfg, data_mesh(jax.devices()[:1]), n_steps=2)
    for a, b in zip(m8, m1):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        assert np.isfinite(a["loss"]) and a["loss"] > 0
    leaves8 = jax.tree.leaves(s8.params)
    leaves1 = jax.tree.leaves(s1.params)
    for a, b in zip(leaves8, leaves1):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    init = jax.tree.leaves(_initial(cfg).params)
    assert any(not np.allclose(a, b) for a, b in zip(leaves8, init)), "parameters did not move"


def test_simclr_loss_leaves_out_the_configured_nearest_negatives():
    from ssv_jax import losses
    from ssv_jax.methods import simclr

    cfg = config_lib.recipe("demo", name="simclr")
    rng = np.random.default_rng(3)
    z1 = rng.normal(size=(16, 8)).astype(np.float32)
    z2 = (z1 + rng.normal(size=(16, 8))).astype(np.float32)
    kw = dict(scale=30.0, margin=0.1, symmetric=True)
    for drop in (0, 2):
        cfg.method.drop_nearest = drop
        got = float(simclr.contrastive_loss(cfg, data_mesh(), z1, z2, 0.1)[0])
        want = float(losses.nt_xent_am(z1, z2, drop_nearest=drop, **kw))
        assert got == pytest.approx(want, rel=1e-5)
    assert want < float(losses.nt_xent_am(z1, z2, **kw)) - 1e-3


@pytest.mark.slow
def test_moco_queue_and_ema(data_dir):
    cfg = tiny_config(data_dir, "moco", momentum=0.9)
    mesh = data_mesh()
    init = _initial(cfg)
    state, _ = run_steps(cfg, mesh, n_steps=1)
    ms, b = state.method_state, cfg.train.batch_size
    assert int(ms["queue_ptr"]) == b
    for q in ("queue1", "queue2"):
        new, old = np.asarray(ms[q]), np.asarray(init.method_state[q])
        np.testing.assert_allclose(np.linalg.norm(new[:b], axis=1), 1.0, rtol=1e-5)
        assert not np.allclose(new[:b], old[:b])  # this batch's keys enqueued at the pointer
        np.testing.assert_array_equal(new[b:], old[b:])  # the rest untouched
    # Key network: EMA of the query network taken before the step's update; the
    # first step starts from a copy, so key = 0.9 * init + 0.1 * init = init.
    for k, p in zip(jax.tree.leaves(ms["key_params"]), jax.tree.leaves(init.params)):
        np.testing.assert_allclose(k, p, rtol=1e-6, atol=1e-7)
    state2, _ = run_steps(cfg, mesh, n_steps=2)
    assert int(state2.method_state["queue_ptr"]) == 2 * b
    # After step 2: key = 0.9 * init + 0.1 * (params after step 1).
    for k, p0, p1 in zip(
        jax.tree.leaves(state2.method_state["key_params"]),
        jax.tree.leaves(init.params),
        jax.tree.leaves(state.params),
    ):
        np.testing.assert_allclose(k, 0.9 * p0 + 0.1 * p1, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_resume_equals_uninterrupted(data_dir, tmp_path):
    cfg = tiny_config(data_dir)
    _, full, _ = train_lib.train(cfg, str(tmp_path / "full"))
    _, half, _ = train_lib.train(cfg, str(tmp_path / "split"), max_steps=2)
    assert int(half.step) == 2
    _, resumed, _ = train_lib.train(cfg, str(tmp_path / "split"))
    assert int(resumed.step) == int(full.step) == 4
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    for a, b in zip(jax.tree.leaves(full.opt_state), jax.tree.leaves(resumed.opt_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    # Checkpoint averaging (evaluation of the last N checkpoints' mean, as sslsv does).
    mgr = checkpoints.manager(str(tmp_path / "full"), cfg)
    assert mgr.all_steps() == [2, 4]
    (params, _), steps = checkpoints.averaged_network(mgr, None, 2)
    assert steps == [2, 4]
    p2, p4 = mgr.restore(2)["params"], mgr.restore(4)["params"]
    for avg, a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p2), jax.tree.leaves(p4)):
        np.testing.assert_allclose(np.asarray(avg), (np.asarray(a) + np.asarray(b)) / 2, rtol=1e-6)
    assert checkpoints.averaged_network(mgr, None, 1) is None


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    cfg = tiny_config(data_dir)
    cfg.train.checkpoint_every = 1
    real = data_lib.train_batches

    def poisoned(*args, start_step=0, **kw):  # NaN audio from step 2 on (e.g. a corrupt file)
        for k, b in enumerate(real(*args, start_step=start_step, **kw), start_step):
            if k >= 2:
                b = dict(b, views=np.full(b["views"].shape, np.nan, np.float32))
            yield b

    monkeypatch.setattr(train_lib.data_lib, "train_batches", poisoned)
    with pytest.raises(
        train_lib.TrainingDiverged, match="at step 2.*last good checkpoint \\(step 2\\)"
    ):
        train_lib.train(cfg, str(tmp_path / "nan"))
    mgr = checkpoints.manager(str(tmp_path / "nan"), cfg)
    assert mgr.all_steps() == [1, 2]  # nothing saved after the NaN
    st = mgr.restore(2)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(st["params"]))


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_a_dead_data_worker_stops_training_with_checkpoints_intact(data_dir, tmp_path, monkeypatch):
    cfg = tiny_config(data_dir)
    cfg.data.num_workers, cfg.train.checkpoint_every, cfg.train.num_steps = 2, 1, 40
    real = data_lib.train_batches

    def dying(*args, **kw):  # a worker is killed (e.g. by the OOM killer) after two steps
        for k, b in enumerate(real(*args, **kw)):
            if k == 2:
                for pid in worker_pids():
                    os.kill(pid, signal.SIGKILL)
            yield b

    monkeypatch.setattr(train_lib.data_lib, "train_batches", dying)
    with pytest.raises(train_lib.InputPipelineError, match="terminated") as err:
        train_lib.train(cfg, str(tmp_path / "dead"))
    kept = int(re.search(r"last checkpoint \(step (\d+)\)", str(err.value)).group(1))
    mgr = checkpoints.manager(str(tmp_path / "dead"), cfg)
    assert 2 <= kept < 40 and mgr.latest_step() == kept  # the batches built before, then a stop
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(mgr.restore(kept)))


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memfd slots")
def test_a_slow_device_keeps_the_batches_in_the_workers_slots(
    data_dir, tmp_path, monkeypatch, caplog
):
    """With a device slower than the input, the loop (at most train.STEPS_IN_FLIGHT steps
    queued) holds no more batches than the data worker keeps slots for: none of them arrives
    through Grain's shared memory instead."""
    from ssv_jax import step as step_lib

    cfg = tiny_config(data_dir)
    cfg.data.num_workers, cfg.train.num_steps = 1, 30
    cfg.train.log_every = cfg.train.checkpoint_every = 30
    real = step_lib.make_train_step

    def slow_step(*args, **kw):  # 0.5 s more per step, on the device's side of the dispatch
        step = real(*args, **kw)

        def sleep(x):
            time.sleep(0.5)
            return x

        @jax.jit
        def run(state, batch):
            state, m = step(state, batch)
            m["loss"] = jax.pure_callback(sleep, m["loss"], m["loss"])
            return state, m

        return run

    monkeypatch.setattr(step_lib, "make_train_step", slow_step)
    logger = logging.getLogger("ssv_jax")
    logger.addHandler(caplog.handler)
    try:
        train_lib.train(cfg, str(tmp_path / "slow"))
    finally:
        logger.removeHandler(caplog.handler)
    assert "holds every batch slot" not in caplog.text, caplog.text


@pytest.mark.slow
def test_data_wait_measures_a_slow_input_pipeline(data_dir, tmp_path, monkeypatch):
    """The loop logs ``data_wait``: about the pipeline's delay when input is the bottleneck."""
    cfg = tiny_config(data_dir)
    real = data_lib.train_batches

    def slow(*args, **kw):
        for b in real(*args, **kw):
            time.sleep(0.5)
            yield b

    scalars = []

    class Capture:
        def write_hparams(self, *_):
            pass

        def write_scalars(self, step, s):
            scalars.append(s)

        def flush(self):
            pass

    monkeypatch.setattr(train_lib.data_lib, "train_batches", slow)
    monkeypatch.setattr(train_lib, "create_writer", lambda _: Capture())
    train_lib.train(cfg, str(tmp_path / "slow"), max_steps=3)
    waits = [s["data_wait"] for s in scalars]
    assert len(waits) == 3 and all(w >= 0.45 for w in waits), waits


def _recipe(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def _method_md_recipe_table():
    """docs/method.md's "The paper's recipe" table as {dotted field: value}."""
    text = open(os.path.join(ROOT, "docs", "method.md")).read()
    section = text.split("## The paper's recipe", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([\w.]+)` \| `(.+)` \|$", section, re.M)
    return {field: ast.literal_eval(value) for field, value in rows}


def test_recipes_hold_the_papers_values():
    paper = _recipe("simclr_am")
    table = _method_md_recipe_table()
    assert len(table) == 48, sorted(table)
    for field, value in table.items():
        node = paper
        for part in field.split("."):
            node = node[part]
        assert node == value, (field, node, value)
    # The recipe states the library's defaults, which every other recipe varies.
    assert paper.to_dict() == config_lib.base_config().to_dict()
    assert paper.to_dict() == config_lib.recipe().to_dict()
    assert paper.data.augment.categories == ("noise", "speech", "music")
    assert _recipe("simclr").method.margin == 0.0
    moco = _recipe("moco_am")
    assert moco.method.name == "moco" and moco.method.momentum == 0.999
    assert moco.method.queue_size == 65536 and moco.method.margin == 0.1
    assert _recipe("moco").method.margin == 0.0
    demo = _recipe("simclr_am", "demo")
    assert demo.data.name == "synthetic" and demo.method.margin == 0.1
    assert demo.eval.protocol == "full"
    assert _recipe("moco_am", "demo").method.momentum == 0.99  # the demo's MoCo must learn
    small = _recipe("moco_am", "small,ecapa")  # any method and encoder, pretrained start
    assert small.train.init_from == "embedded" and small.model.name == "ecapa_tdnn"
    assert small.method.name == "moco" and small.train.batch_size == 32
    assert small.train.average_last == 4 and small.train.checkpoint_every == 30
    assert small.method.drop_nearest == 2 and paper.method.drop_nearest == 0
    assert small.frontend.norm == "instance"  # MoCo keeps per-band normalisation
    assert _recipe("simclr_am", "small").frontend.norm == "utterance"
    assert paper.frontend.norm == "instance" and demo.frontend.norm == "instance"
    assert demo.method.drop_nearest == 0
    assert small.eval.neighbours == 3 and demo.eval.neighbours == paper.eval.neighbours == 0
    # A fixed length sized for the CPU budget, whatever the folder's size.
    assert train_lib.total_steps(small, 726 // 32) == 1080
    assert train_lib.total_steps(small, 1152 // 32) == 1080
    assert small.train.eval_every == 360
    with pytest.raises(ValueError, match="demo"):
        _recipe("simclr_am", "tiny")
    # Recipe arguments compose: an encoder with its own defaults, on any recipe, demo or not.
    for arg in ("demo,ecapa", "ecapa,demo"):
        ecapa = _recipe("moco_am", arg)
        assert ecapa.model.name == "ecapa_tdnn" and ecapa.model.channels == 512
        assert ecapa.model.embed_dim == 192 and ecapa.data.name == "synthetic"
        assert ecapa.method.name == "moco" and ecapa.train.batch_size == 32
    assert _recipe("simclr_am", "ecapa").data.name == "voxceleb2"
    assert _recipe("simclr_am", "demo,fast_resnet34").model.to_dict() == demo.model.to_dict()
    with pytest.raises(ValueError, match="'resnet'.*ecapa"):
        _recipe("simclr_am", "demo,resnet")
    demo.method.drop_nearest = 62  # a batch of 32 gives each anchor 2 x 31 negatives
    with pytest.raises(ValueError, match=r"drop_nearest must be in \[0, 61\].*62 negatives"):
        config_lib.validate(demo)
    demo.method.symmetric = False
    with pytest.raises(ValueError, match=r"drop_nearest must be in \[0, 30\]"):
        config_lib.validate(demo)
    demo.method.drop_nearest, demo.method.symmetric = 61, True
    config_lib.validate(demo)
    demo.method.name, demo.method.queue_size, demo.method.drop_nearest = "moco", 64, 64
    with pytest.raises(ValueError, match=r"\[0, 63\].*64 negatives \(method.queue_size 64\)"):
        config_lib.validate(demo)
    demo.method.name, demo.method.queue_size, demo.method.drop_nearest = "simclr", 65536, 0
    demo.method.queue_size = 100
    demo.method.name = "moco"
    with pytest.raises(ValueError, match="multiple of train.batch_size"):
        config_lib.validate(demo)
    demo.method.name, demo.frontend.norm = "simclr", "batch"
    with pytest.raises(ValueError, match=r"frontend.norm 'batch' is not one of \('instance'"):
        config_lib.validate(demo)
    demo.frontend.norm = "instance"
    demo.eval.neighbours = -1
    with pytest.raises(ValueError, match=r"eval.neighbours must be >= 0 \(0 = off\); got -1"):
        config_lib.validate(demo)


@pytest.mark.slow
def test_unknown_config_key_is_refused_by_name(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "main.py"),
            "--config=" + os.path.join(ROOT, "configs/simclr_am.py:demo"),
            f"--workdir={tmp_path}",
            "--config.optim.lrr=3e-4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "unknown config key" in proc.stderr and "lrr" in proc.stderr
    assert not (tmp_path / "checkpoints").exists()


@pytest.fixture(scope="module")
def main_run(data_dir, tmp_path_factory):
    """A workdir trained and evaluated by main.py (tiny Fast ResNet-34, 2 steps on 2 devices)."""
    workdir = tmp_path_factory.mktemp("main") / "run"
    run_main("simclr_am.py:demo", workdir, tiny_main_overrides(data_dir) + TINY_RESNET)
    return workdir


@pytest.mark.slow
def test_evaluate_mode_reads_only_the_evaluation_data(main_run, data_dir, tmp_path):
    """--mode=evaluate on a trained workdir with only the evaluation dataset on disk (no noise
    or RIR bank): same results, nothing rebuilt, and the config.json training wrote is kept."""
    import shutil

    only_eval = tmp_path / "tfds"
    shutil.copytree(data_dir / "synthetic", only_eval / "synthetic")
    config_before = (main_run / "config.json").read_text()
    results_before = json.loads((main_run / "results.json").read_text())
    overrides = tiny_main_overrides(only_eval) + TINY_RESNET + ["--mode=evaluate"]
    run_main("simclr_am.py:demo", main_run, overrides + ["--config.train.log_every=7"])
    assert (main_run / "config.json").read_text() == config_before
    assert json.loads((main_run / "results.json").read_text()) == results_before
    assert sorted(p.name for p in only_eval.iterdir()) == ["synthetic"]


@pytest.mark.slow
def test_main_trains_ecapa_with_moco_aam(data_dir, tmp_path):
    """The other encoder, chosen by recipe argument, trains through main.py (MoCo with the
    angular-margin loss) and is evaluated with its own architecture."""
    proc = run_main(
        "moco_am.py:demo,ecapa",
        tmp_path,
        tiny_main_overrides(data_dir)
        + [
            "--config.model.channels=32",
            "--config.model.mfa_channels=96",
            "--config.model.embed_dim=24",
            "--config.model.se_channels=8",
            "--config.model.attention_channels=8",
            "--config.model.res2net_scale=4",
            "--config.method.loss=nt_xent_aam",
            "--config.method.queue_size=64",
        ],
    )
    assert "trial list" in proc.stdout and "minDCF 0.05" in proc.stdout  # the summary table
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["model"]["name"] == "ecapa_tdnn" and stored["method"]["loss"] == "nt_xent_aam"
    r = json.loads((tmp_path / "results.json").read_text())["synthetic_test"]
    assert r["n_trials"] > 20 and 0 <= r["eer"] <= 100
    assert (tmp_path / "checkpoints" / "2").is_dir()


@pytest.mark.slow
def test_main_trains_evaluates_and_writes_results(main_run):
    """main.py end to end (tiny): results.json per the public contract, scores and plots."""
    workdir = main_run
    results = json.loads((workdir / "results.json").read_text())
    assert set(results) == {"synthetic_test"}
    r = results["synthetic_test"]
    assert {"eer", "min_dcf", "n_trials"} <= set(r) and r["n_trials"] > 20
    assert 0 <= r["eer"] <= 100 and 0 <= r["min_dcf"]
    assert json.loads((workdir / "config.json").read_text())["train"]["num_steps"] == 2
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
    # eval/: the scores behind results.json, the EER threshold, a DET plot, a histogram.
    rows = [
        line.split()
        for line in (workdir / "eval" / "synthetic_test_scores.txt").read_text().splitlines()
    ]
    assert len(rows) == r["n_trials"] and all(len(row) == 4 for row in rows)
    labels = np.array([int(row[0]) for row in rows])
    scores = np.array([float(row[3]) for row in rows])
    assert metrics.eer(scores, labels) == pytest.approx(r["eer"], abs=1e-3)
    thr = json.loads((workdir / "eval" / "thresholds.json").read_text())
    assert thr["synthetic_test"]["eer_threshold"] == pytest.approx(
        metrics.eer_threshold(scores, labels), abs=1e-5
    )
    for png in ("det.png", "synthetic_test_hist.png"):
        data = (workdir / "eval" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def _ssv_jax(*args):
    """Run the installed ``ssv-jax`` console script (as a user would)."""
    exe = os.path.join(os.path.dirname(sys.executable), "ssv-jax")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_console_embed_and_verify(main_run, tmp_path):
    import soundfile as sf

    rng = np.random.default_rng(0)
    audio = tmp_path / "audio"
    (audio / "spk").mkdir(parents=True)
    a = (0.1 * rng.standard_normal(24000)).astype(np.float32)
    b = (0.1 * np.sin(np.arange(30000) * 0.05) + 0.02 * rng.standard_normal(30000)).astype(
        np.float32
    )
    sf.write(audio / "spk" / "a.wav", a, 16000)
    sf.write(audio / "spk" / "a_copy.flac", a, 16000)
    sf.write(audio / "b.wav", b, 16000)
    (audio / "broken.wav").write_bytes(b"not audio at all")
    out = tmp_path / "emb.npz"
    proc = _ssv_jax("embed", f"--workdir={main_run}", f"--out={out}", audio)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "3 embedding(s) of size 32" in proc.stdout and "1 unreadable file(s) skipped" in proc.stdout
    )
    assert "broken.wav" in proc.stderr
    res = np.load(out)
    ids, emb = list(res["ids"]), res["embeddings"]
    assert ids == ["b.wav", "spk/a.wav", "spk/a_copy.flac"] and emb.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(emb[1], emb[2], atol=1e-4)  # same audio, wav vs flac
    # --neighbours=K: the same embeddings, expanded over the files embedded together (a
    # fourth voice, so that no two centred embeddings are opposite).
    from ssv_jax import cli

    c = (0.1 * np.sin(np.arange(20000) * 0.013) * rng.standard_normal(20000)).astype(np.float32)
    sf.write(tmp_path / "c.wav", c, 16000)
    plain, near = tmp_path / "plain.npz", tmp_path / "near.npz"
    for out_, k in ((plain, 0), (near, 1)):
        argv = ["embed", f"--workdir={main_run}", f"--out={out_}", f"--neighbours={k}"]
        assert cli.main([*argv, str(audio), str(tmp_path / "c.wav")]) == 0
    np.testing.assert_allclose(
        np.load(near)["embeddings"], expand_neighbours(np.load(plain)["embeddings"], 1)
    )
    with pytest.raises(
        SystemExit, match="--neighbours=3 needs more than that many files.*3 were read"
    ):
        cli.main(["embed", f"--workdir={main_run}", f"--out={near}", "--neighbours=3", str(audio)])
    # verify: the workdir's EER threshold by default; the score is embed's cosine.
    thr = json.loads((main_run / "eval" / "thresholds.json").read_text())
    thr = thr["synthetic_test"]["eer_threshold"]
    proc = _ssv_jax("verify", f"--workdir={main_run}", audio / "spk" / "a.wav", audio / "b.wav")
    assert proc.returncode == 0, proc.stderr[-3000:]
    score = float(proc.stdout.split()[1])
    assert score == pytest.approx(float(emb[0] @ emb[1]), abs=1e-4)
    assert f"threshold {thr:.4f} (EER threshold of synthetic_test)" in proc.stdout
    assert ("same speaker" if score >= thr else "different speakers") in proc.stdout
    proc = _ssv_jax(
        "verify",
        f"--workdir={main_run}",
        "--threshold=1.5",
        audio / "spk" / "a.wav",
        audio / "spk" / "a_copy.flac",
    )
    assert proc.returncode == 0 and "different speakers" in proc.stdout
    assert float(proc.stdout.split()[1]) == pytest.approx(1.0, abs=1e-4)
    # A directory that main.py did not train: the error says what --workdir must be.
    proc = _ssv_jax("verify", f"--workdir={tmp_path}", audio / "b.wav", audio / "b.wav")
    assert proc.returncode != 0 and "config.json not found" in proc.stderr


@pytest.mark.slow
def test_init_from_starts_from_another_runs_network(data_dir, tmp_path):
    """train.init_from: the other run's network, fresh optimiser, step 0, fresh method state
    (MoCo's key network copies the loaded one); another architecture is refused by field."""
    cfg = tiny_config(data_dir, "moco")
    _, src, _ = run_lib.train(cfg, str(tmp_path / "src"), max_steps=2)
    (tmp_path / "src" / "config.json").write_text(cfg.to_json_best_effort())
    new = tiny_config(data_dir, "moco")
    new.seed, new.train.init_from = 1, str(tmp_path / "src")
    _, state, _ = run_lib.train(new, str(tmp_path / "new"), max_steps=0)
    assert int(state.step) == 0
    for a, b in zip(
        jax.tree.leaves((src.params, src.batch_stats)),
        jax.tree.leaves((state.params, state.batch_stats)),
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for k, p in zip(jax.tree.leaves(state.method_state["key_params"]), jax.tree.leaves(src.params)):
        np.testing.assert_array_equal(np.asarray(k), np.asarray(p))
    assert int(state.method_state["queue_ptr"]) == 0
    fresh = _initial(new)
    np.testing.assert_array_equal(state.method_state["queue1"], fresh.method_state["queue1"])
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(state.opt_state))  # Adam: zeros
    # It trains on from there, and a resumed run ignores init_from (its own checkpoint wins).
    _, trained, _ = run_lib.train(new, str(tmp_path / "new"), max_steps=2)
    assert int(trained.step) == 2
    _, resumed, _ = run_lib.train(new, str(tmp_path / "new"), max_steps=0)
    for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Another architecture: refused, naming the fields.
    other = tiny_config(data_dir, "moco")
    other.model.embed_dim, other.train.init_from = 16, str(tmp_path / "src")
    with pytest.raises(ValueError, match=r"model\.embed_dim: 32 there, 16 here"):
        run_lib.train(other, str(tmp_path / "other"), max_steps=0)
    other.train.init_from = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        run_lib.train(other, str(tmp_path / "other"), max_steps=0)


@pytest.mark.slow
def test_init_from_embedded_pretrains_once_and_reuses_the_cache(data_dir, tmp_path, monkeypatch):
    """train.init_from="embedded": the first run trains the pretraining recipe for its
    architecture into the cache, later runs reuse it; another architecture has its own entry."""
    from ssv_jax import pretrained

    monkeypatch.setenv("SSV_JAX_PRETRAINED_DIR", str(tmp_path / "cache"))
    calls = []

    def tiny_pretraining(cfg):  # the demo recipe, shrunk to the tiny corpus
        calls.append(cfg.model.embed_dim)
        pre = tiny_config(data_dir)
        pre.model, pre.train.num_steps = cfg.model, 2
        return pre

    monkeypatch.setattr(pretrained, "pretrain_config", tiny_pretraining)
    cfg = tiny_config(data_dir, "moco")
    cfg.train.init_from = "embedded"
    _, first, _ = run_lib.train(cfg, str(tmp_path / "a"), max_steps=0)
    cached = pretrained.cache_dir(cfg)
    assert os.path.isfile(os.path.join(cached, "pretrained.json")) and calls == [32]
    _, params, stats, _ = checkpoints.load_network(
        workdir_lib.read_config(cached), cached, data_mesh()
    )
    for a, b in zip(
        jax.tree.leaves((params, stats)), jax.tree.leaves((first.params, first.batch_stats))
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, second, _ = run_lib.train(cfg, str(tmp_path / "b"), max_steps=0)
    assert calls == [32]  # reused, not trained again
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    cfg.model.embed_dim = 16  # another architecture: another cache entry
    assert pretrained.cache_dir(cfg) != cached


@pytest.mark.slow
def test_evaluation_with_score_normalisation(data_dir, tmp_path, caplog):
    """eval.score_norm adds "LIST/<norm>" entries (cohort from the training split) and
    eval.neighbours "LIST/neighbours_K" entries beside the raw list, with every metric; a
    cohort larger than the training split is refused by name."""
    cfg = tiny_config(data_dir)
    workdir = str(tmp_path / "run")
    train_lib.train(cfg, workdir, max_steps=2)
    # Without score normalisation, evaluation and `ssv-jax embed` never open a training split.
    from ssv_jax import cli
    from ssv_jax.data import records

    real_source = records.Dataset.source

    def no_training_split(self, split):
        assert split != "train", "a training split was opened"
        return real_source(self, split)

    (tmp_path / "run" / "config.json").write_text(cfg.to_json_best_effort())
    wav = tmp_path / "a.wav"
    import soundfile as sf

    sf.write(wav, (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(records.Dataset, "source", no_training_split)
        plain = evaluate.evaluate_workdir(cfg, workdir)
        assert (
            cli.main(["embed", f"--workdir={workdir}", f"--out={tmp_path / 'e.npz'}", str(wav)])
            == 0
        )
    assert list(plain) == ["synthetic_test"]
    # The trial embeddings are cached in the workdir for this checkpoint: a second evaluation
    # reads no audio and gives the same results.
    (cache,) = list((tmp_path / "run" / "eval" / "embeddings").iterdir())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_lib.data_lib, "eval_utterances", lambda *a, **k: 1 / 0)
        assert evaluate.evaluate_workdir(cfg, workdir) == plain
    assert len(np.load(cache)["ids"]) == len(
        {u for u in data_lib.load_trials(cfg.data)["synthetic_test"].utterances}
    )
    cfg.eval.score_norm, cfg.eval.cohort_size, cfg.eval.asnorm_top_n = "as-norm", 20, 5
    cfg.eval.neighbours = 3
    res = evaluate.evaluate_workdir(cfg, workdir)
    assert list(res) == [
        "synthetic_test",
        "synthetic_test/as-norm",
        "synthetic_test/neighbours_3",
    ]
    raw, norm, nb = (res[k] for k in res)
    # Neighbour expansion: the library's scores of the cached trial embeddings, expanded over
    # the union of the trial utterances (in the cache's row order: the result does not depend
    # on it), in the written score file, whose six decimals are the only difference allowed.
    z = np.load(cache)
    expanded = dict(zip(z["ids"], expand_neighbours(z["embeddings"], 3)))
    trials = data_lib.load_trials(cfg.data)["synthetic_test"]
    want = evaluate.score_trials(expanded, trials)
    rows = [
        line.split()
        for line in open(os.path.join(workdir, "eval", "synthetic_test_neighbours_3_scores.txt"))
    ]
    assert [(a, b) for _, a, b, _ in rows] == list(zip(trials.enroll, trials.test))
    np.testing.assert_allclose([float(r[3]) for r in rows], want, rtol=0, atol=5.01e-7)
    assert nb["mean_target_cosine"] == raw["mean_target_cosine"]
    for r in (raw, norm, nb):
        assert r["n_target"] + r["n_nontarget"] == r["n_trials"] > 20
        assert r["fn_at_eer"] <= r["n_target"] and r["fp_at_eer"] <= r["n_nontarget"]
        assert 0 <= r["min_dcf"] and 0 <= r["min_dcf_0.05"]
    assert norm["mean_target_cosine"] == raw["mean_target_cosine"]  # the embeddings' cosines
    assert norm["eer_threshold"] != raw["eer_threshold"]
    assert os.path.exists(os.path.join(workdir, "eval", "synthetic_test_as-norm_scores.txt"))
    # More neighbours than the trial lists have utterances: as many as there are, said so.
    n = len(np.load(cache)["ids"])
    cfg.eval.neighbours, cfg.eval.score_norm = 10_000, "none"
    logger = logging.getLogger("ssv_jax")  # it does not propagate to the root logger
    logger.addHandler(caplog.handler)
    try:
        res = evaluate.evaluate_workdir(cfg, workdir)
    finally:
        logger.removeHandler(caplog.handler)
    assert list(res) == ["synthetic_test", f"synthetic_test/neighbours_{n - 1}"]
    assert f"eval.neighbours=10000, but the trial lists name only {n} utterances" in caplog.text
    cfg.eval.neighbours, cfg.eval.score_norm = 0, "as-norm"
    cfg.eval.cohort_size = 10_000
    with pytest.raises(ValueError, match="eval.cohort_size=10000 is larger"):
        evaluate.evaluate_workdir(cfg, workdir)


@pytest.mark.slow
def test_export_round_trip(main_run, tmp_path):
    """ssv-jax export: the jax.export artifact and the TF SavedModel, reloaded without the
    model code, give the workdir's embeddings (evaluation's own extraction) on two lengths."""
    import tensorflow as tf

    from ssv_jax import embedding, export
    from ssv_jax.checkpoints import load_network
    from ssv_jax.workdir import read_config

    out = tmp_path / "exported"
    proc = _ssv_jax("export", f"--workdir={main_run}", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "export.json").read_text())
    assert info["embedding_dim"] == 32 and info["platforms"] == ["cpu", "cuda", "tpu"]
    cfg = read_config(main_run)
    mesh = data_mesh()
    net = load_network(cfg, str(main_run), mesh)[:3]
    rng = np.random.default_rng(0)
    jax_fn, saved = export.load(str(out)), tf.saved_model.load(str(out / "saved_model"))
    for n in (16000, 27123):
        waves = (0.1 * rng.standard_normal((2, n))).astype(np.float32)
        ref = embedding.embed_utterances(cfg, *net, mesh, [("a", waves[0]), ("b", waves[1])])
        ref = np.stack([ref["a"], ref["b"]])
        np.testing.assert_allclose(jax_fn(waves), ref, atol=1e-5)
        np.testing.assert_allclose(saved.embed(tf.constant(waves)).numpy(), ref, atol=1e-5)
    proc = _ssv_jax("export", f"--workdir={tmp_path}", f"--out={out}")
    assert proc.returncode != 0 and "config.json not found" in proc.stderr
