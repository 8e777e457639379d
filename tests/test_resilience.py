"""Runs that are stopped, killed or resumed through main.py lose nothing: SIGTERM saves and
exits, a kill during an asynchronous save leaves the last complete checkpoint, resumed ==
uninterrupted; several processes stop at one agreed step; a workdir refuses another config."""

import json
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from ssv_jax import checkpoints, evaluate
from ssv_jax import data as data_lib
from ssv_jax import workdir as workdir_lib
from tests.helpers.cases import (
    ROOT,
    TINY_RESNET,
    main_command,
    main_env,
    run_main,
    tiny_config,
    tiny_main_overrides,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    data_lib.ensure_dataset(tiny_config(d).data)
    return d


def _moco(data_dir, *extra):
    """MoCo on the tiny corpus for 6 steps: its 32-key queue wraps around once."""
    return (
        tiny_main_overrides(data_dir)
        + TINY_RESNET
        + [
            "--config.method.queue_size=32",
            "--config.train.num_steps=6",
            "--config.train.log_every=1",
            "--config.train.checkpoint_every=100",
            "--config.train.eval_every=0",
            "--mode=train",
            *extra,
        ]
    )


class Run:
    """main.py in the background, its output collected; ``wait_for(text)`` polls for it."""

    def __init__(self, argv, env, log):
        self.log = log
        self.f = open(log, "w")
        self.proc = subprocess.Popen(argv, stdout=self.f, stderr=subprocess.STDOUT, env=env)

    def output(self) -> str:
        with open(self.log) as f:
            return f.read()

    def wait_for(self, text: str, timeout: float = 300):
        t0 = time.time()
        while text not in self.output():
            assert self.proc.poll() is None, f"ended before {text!r}:\n{self.output()[-3000:]}"
            assert time.time() - t0 < timeout, f"no {text!r} in {timeout} s"
            time.sleep(0.02)

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        finally:
            self.f.close()


def _final_state(workdir, step):
    """The TrainState of ``workdir``'s checkpoint ``step`` (its latest), on the host."""
    from ssv_jax.sharding import data_mesh

    cfg = workdir_lib.read_config(str(workdir))
    mgr = checkpoints.manager(str(workdir), cfg)
    assert max(mgr.all_steps()) == step
    _, target = checkpoints.abstract_state(cfg, data_mesh())
    return jax.device_get(checkpoints.restore(mgr, step, target))


def _leaf_pairs(ref, two):
    """(name, array of ``ref``, array of ``two``) for the parameters and MoCo's two queues."""
    parts = [("params", jax.device_get(ref.params), two.params)]
    parts += [(q, ref.method_state[q], two.method_state[q]) for q in ("queue1", "queue2")]
    for name, a, b in parts:
        for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
            yield name + jax.tree_util.keystr(path), np.asarray(x, np.float64), np.asarray(y)


def _assert_same(a, b, **tol):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        if tol:
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_sigterm_and_kill_during_save_then_resume_equals_uninterrupted(data_dir, tmp_path):
    """MoCo through main.py, three runs side by side: an uninterrupted one; one sent SIGTERM
    after step 2, which stops at a step boundary with a checkpoint (exit 143); one saving every
    step, killed (-9) while an asynchronous save is half written. Rerun, the last two resume
    from their last complete checkpoint and end with the uninterrupted run's parameters,
    optimiser state, BatchNorm statistics, queues and key encoder, bit for bit (same data
    order and augmentation draws)."""
    config, env = "moco_am.py:demo", main_env(2)
    every_step = _moco(data_dir, "--config.train.checkpoint_every=1")
    runs = {
        "full": Run(main_command(config, tmp_path / "full", _moco(data_dir)), env, tmp_path / "f"),
        "term": Run(main_command(config, tmp_path / "term", _moco(data_dir)), env, tmp_path / "t"),
        "kill": Run(main_command(config, tmp_path / "kill", every_step), env, tmp_path / "k"),
    }
    ckpt = tmp_path / "kill" / "checkpoints"
    t0, termed, killed = time.time(), False, None
    try:
        while not (termed and killed) and time.time() - t0 < 300:
            if not termed and "step      2 |" in runs["term"].output():
                runs["term"].proc.send_signal(signal.SIGTERM)
                termed = True
            names = os.listdir(ckpt) if not killed and ckpt.is_dir() else []
            if any("tmp" in n for n in names) and any(n.isdigit() for n in names):
                runs["kill"].proc.kill()  # in the middle of a save
                killed = names
            time.sleep(0.002)
        codes = {k: r.finish() for k, r in runs.items()}
    finally:
        for r in runs.values():
            if r.proc.poll() is None:
                r.proc.kill()
    out = runs["term"].output()
    assert termed and killed, out[-2000:] + runs["kill"].output()[-2000:]
    assert codes == {"full": 0, "term": 128 + signal.SIGTERM, "kill": -signal.SIGKILL}, codes
    assert "stopped by SIGTERM at step" in out and "Run the same command again" in out
    assert "Traceback" not in out
    stopped = int(out.split("stopped by SIGTERM at step ")[1].split()[0])
    assert 2 <= stopped < 6
    assert sorted(int(p.name) for p in (tmp_path / "term" / "checkpoints").iterdir()) == [stopped]
    complete = max(int(n) for n in killed if n.isdigit())

    resumed = {
        "term": Run(main_command(config, tmp_path / "term", _moco(data_dir)), env, tmp_path / "t2"),
        "kill": Run(main_command(config, tmp_path / "kill", every_step), env, tmp_path / "k2"),
    }
    codes = {k: r.finish() for k, r in resumed.items()}
    assert codes == {"term": 0, "kill": 0}, resumed["kill"].output()[-3000:]
    assert f"resumed from checkpoint step {stopped} " in resumed["term"].output()
    k = int(resumed["kill"].output().split("resumed from checkpoint step ")[1].split()[0])
    assert complete <= k < 6
    assert not [n for n in os.listdir(ckpt) if "tmp" in n]  # the half-written save is gone
    full = _final_state(tmp_path / "full", 6)
    assert {"queue1", "queue2", "key_params"} <= set(full.method_state)
    for name in ("term", "kill"):
        _assert_same(full, _final_state(tmp_path / name, 6))
    # config.json is the one the run started with.
    stored = json.loads((tmp_path / "term" / "config.json").read_text())
    assert stored["train"]["num_steps"] == 6


def _stored_run(data_dir, work):
    """A workdir as a fresh run leaves it: config.json and a checkpoint (of step 0)."""
    from ssv_jax import state as state_lib
    from ssv_jax.optim import lr_schedule, make_optimizer

    cfg = tiny_config(data_dir)
    workdir_lib.prepare(cfg, str(work), mode="train")
    _, state = state_lib.create(cfg, make_optimizer(cfg.optim, lr_schedule(cfg.optim, 1, 4)))
    mgr = checkpoints.manager(str(work), cfg)
    checkpoints.save(mgr, 0, state)
    mgr.wait_until_finished()
    return cfg


def test_resume_refuses_another_network_and_names_the_fields(data_dir, tmp_path):
    """A fresh run writes config.json; resuming it with a different network, method or batch
    size is refused naming the fields; other changes are allowed (and logged), config.json
    kept."""
    work = tmp_path / "run"
    _stored_run(data_dir, work)
    stored = (work / "config.json").read_text()
    assert json.loads(stored)["model"]["embed_dim"] == 32
    for field, value, shown in [
        ("model.embed_dim", 16, "model.embed_dim: 32 there, 16 here"),
        ("method.name", "moco", "method.name: 'simclr' there, 'moco' here"),
        ("train.batch_size", 8, "train.batch_size: 16 there, 8 here"),
    ]:
        other = tiny_config(data_dir)
        section, key = field.split(".")
        other[section][key] = value
        with pytest.raises(workdir_lib.WorkdirError, match=shown.replace(".", r"\.")):
            workdir_lib.prepare(other, str(work), mode="train")
    lr = tiny_config(data_dir)
    lr.optim.lr = 1e-4
    workdir_lib.prepare(lr, str(work), mode="train")  # allowed: a warning lists optim.lr
    assert (work / "config.json").read_text() == stored


def test_a_run_from_before_the_front_end_norm_field_reads_as_instance_norm(data_dir, tmp_path):
    """config.json of a run written before ``frontend.norm`` and ``eval.neighbours`` existed:
    the run used per-band instance norm and no expansion, so the default config continues it
    and ``utterance`` is refused."""
    work = tmp_path / "run"
    _stored_run(data_dir, work)
    old = json.loads((work / "config.json").read_text())
    del old["frontend"]["norm"], old["eval"]["neighbours"]
    (work / "config.json").write_text(json.dumps(old))
    assert workdir_lib.read_config(str(work)).frontend.norm == "instance"
    assert workdir_lib.read_config(str(work)).eval.neighbours == 0
    workdir_lib.prepare(tiny_config(data_dir), str(work), mode="train")
    other = tiny_config(data_dir)
    other.frontend.norm = "utterance"
    shown = "frontend.norm: 'instance' there, 'utterance' here"
    with pytest.raises(workdir_lib.WorkdirError, match=shown.replace(".", r"\.")):
        workdir_lib.prepare(other, str(work), mode="train")


def test_unwritable_or_full_workdir_fails_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(workdir_lib.WorkdirError, match=f"cannot write in the workdir {blocker}"):
        workdir_lib.ensure_writable(str(blocker / "run"))
    with pytest.raises(workdir_lib.WorkdirError, match="mount the bucket"):
        workdir_lib.resolve("gs://bucket/runs/a")
    state = {"w": np.zeros((1024, 256), np.float32)}  # 1 MiB
    workdir_lib.check_space(str(tmp_path), state, keep=3)
    monkeypatch.setattr(
        workdir_lib.shutil, "disk_usage", lambda _: type("U", (), {"free": 3 << 20})()
    )
    with pytest.raises(workdir_lib.WorkdirError, match=r"only 3 MiB free in .*need 4 MiB"):
        workdir_lib.check_space(str(tmp_path), state, keep=3)


def test_main_without_config_or_workdir_or_with_a_bad_one_says_what_is_wrong(tmp_path):
    for args in ([], [f"--workdir={tmp_path}"], ["--config=configs/simclr_am.py:demo"]):
        proc = subprocess.run(
            main_command("simclr_am.py:demo", tmp_path, [])[:2] + args,
            capture_output=True,
            text=True,
            timeout=120,
            env=main_env(1),
        )
        missing = "config" if not any(a.startswith("--config") for a in args) else "workdir"
        assert proc.returncode == 2, proc.stderr
        assert f"--{missing} is required" in proc.stderr and "Traceback" not in proc.stderr
    for config, said in [
        ("configs/nope.py", "--config could not be loaded ([Errno 2] No such file"),
        ("configs/simclr_am.py:bogus", "unknown config argument 'bogus'"),
    ]:
        proc = subprocess.run(
            main_command("simclr_am.py", tmp_path, [])[:2]
            + [f"--config={config}", f"--workdir={tmp_path}"],
            capture_output=True,
            text=True,
            timeout=120,
            env=main_env(1),
            cwd=ROOT,
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert f"main.py: error: {said}" in proc.stderr


@pytest.mark.slow
def test_main_reports_a_users_mistake_in_one_line(data_dir, tmp_path):
    """An unwritable workdir, a missing dataset, a resume with another batch size: exit 2, a
    one-line message that names the path or field, no traceback."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    overrides = tiny_main_overrides(data_dir) + TINY_RESNET
    proc = run_main("simclr_am.py:demo", blocker / "run", overrides, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"cannot write in the workdir {blocker / 'run'}" in proc.stderr
    proc = run_main(
        "simclr_am.py:demo",
        tmp_path / "run",
        overrides + ["--config.data.name=my_voices"],
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "dataset 'my_voices' not found" in proc.stderr and "data_prep/folder.py" in proc.stderr
    # Resuming a run with another batch size: refused, the run untouched.
    work = tmp_path / "stored"
    _stored_run(data_dir, work)
    stored = (work / "config.json").read_text()
    proc = run_main(
        "simclr_am.py:demo", work, overrides + ["--config.train.batch_size=4"], check=False
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "main.py: error:" in proc.stderr and "train.batch_size" in proc.stderr
    assert (work / "checkpoints" / "0").is_dir() and (work / "config.json").read_text() == stored


@pytest.mark.slow
def test_truncated_checkpoint_is_named_with_the_fix(data_dir, tmp_path):
    from ssv_jax import train as train_lib
    from ssv_jax.sharding import data_mesh

    cfg = tiny_config(data_dir)
    work = tmp_path / "run"
    train_lib.train(cfg, str(work))  # checkpoints 2 and 4
    # Every array data file cut in half (a write that ran out of disk): which file holds the
    # network's arrays, and where in it, varies from run to run.
    data = [
        p for p in (work / "checkpoints" / "4").rglob("*") if p.is_file() and p.parent.name == "d"
    ]
    assert data
    for path in data:
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    with pytest.raises(
        checkpoints.CheckpointError,
        match=r"checkpoint 4 in .* cannot be read .*move .*4 aside to continue from checkpoint 2",
    ):
        checkpoints.load_network(cfg, str(work), data_mesh())
    assert all(p.exists() for p in data)  # nothing deleted


@pytest.mark.slow
def test_two_processes_stop_together_and_resume_equal_to_one(data_dir, tmp_path):
    """``main.py --distributed``, 2 processes x 4 CPU devices on localhost: a SIGTERM to
    process 1 alone stops both at one agreed step with one checkpoint; the resumed run trains
    and evaluates, ending equal to 1 process x 8 devices (parameters, MoCo queues, results).
    Process 0 alone prints the start-up line, the step lines and the results."""
    from ssv_jax import train as train_lib
    from tests.helpers.multiprocess import free_port

    sgd = ["--config.optim.name=sgd", "--config.optim.lr=0.05"]
    overrides = _moco(data_dir, *sgd)
    work = tmp_path / "two"

    def launch(mode, tag):
        port = free_port()
        return [
            Run(
                main_command("moco_am.py:demo", work, overrides)
                + [
                    f"--mode={mode}",
                    "--distributed",
                    f"--coordinator_address=127.0.0.1:{port}",
                    "--num_processes=2",
                    f"--process_id={i}",
                ],
                main_env(4),
                tmp_path / f"{tag}.{i}.log",
            )
            for i in range(2)
        ]

    runs = launch("train", "stopped")
    try:
        runs[0].wait_for("step      2 |")
        runs[1].proc.send_signal(signal.SIGTERM)
    finally:
        codes = [r.finish() for r in runs]
    outs = [r.output() for r in runs]
    assert codes == [128 + signal.SIGTERM] * 2, outs[1][-3000:]
    stopped = int(outs[0].split("stopped by SIGTERM at step ")[1].split()[0])
    assert 2 <= stopped < 6 and "stopped by" not in outs[1]
    assert sorted(int(p.name) for p in (work / "checkpoints").iterdir()) == [stopped]

    runs = launch("train_and_evaluate", "resumed")
    codes = [r.finish() for r in runs]
    outs = [r.output() for r in runs]
    assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "2 process(es)" in outs[0] and "step      6 |" in outs[0] and "results (" in outs[0]
    for line in ("process(es)", "step      6 |", "results ("):  # process 0's alone
        assert line not in outs[1]

    cfg = workdir_lib.read_config(str(work))
    _, ref, _ = train_lib.train(cfg, str(tmp_path / "one"))
    two = _final_state(work, 6)
    # Across processes the gradients' all-reduce adds the devices' parts in another order, and
    # six SGD steps at lr 0.05 of a train-mode BatchNorm network amplify that float32 rounding
    # in a few elements, by how much depends on the CPU's kernels (up to 5.5e-5 on an AMD EPYC
    # Zen 5, 2.6e-4 on a Zen 3 with AVX2 alone, below 1e-5 on an Intel Xeon). So each array is
    # compared as a whole (all parameters; each queue), against the change that training made
    # to it: 5.0e-3 of it on the Zen 3, where a missed or repeated batch (about a sixth of the
    # change) or a wrong reduction moves it by far more.
    _, init, _ = train_lib.train(cfg, str(tmp_path / "init"), max_steps=0)
    parts = {}
    for (name, a, b), (_, a0, _) in zip(_leaf_pairs(ref, two), _leaf_pairs(init, two)):
        group = parts.setdefault(name.split("[")[0], ([], []))
        group[0].append(np.ravel(a - b))
        group[1].append(np.ravel(a - a0))
    for group, (diff, change) in parts.items():
        rel = np.linalg.norm(np.concatenate(diff)) / np.linalg.norm(np.concatenate(change))
        print(f"{group}: difference {rel:.2e} of the trained change")
        assert rel < 2e-2, (group, rel)
    one = evaluate.evaluate_workdir(cfg, str(tmp_path / "one"))
    results = json.loads((work / "results.json").read_text())
    assert results.keys() == one.keys() and results["synthetic_test"]["n_trials"] > 20
    for k in one:
        assert results[k]["eer"] == pytest.approx(one[k]["eer"], abs=1e-6)
