"""README's recipe for a user's own folder of recordings, run as README writes it."""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Only sizes shrink (steps, network, the procedural augmentation banks): no data location, split
# or trial list is added to README's commands.
SHRINK = [
    "--config.train.num_steps=2",
    "--config.train.batch_size=8",
    "--config.train.progress_bar=False",
    "--config.data.crop_seconds=0.5",
    "--config.model.channels=(8,16,16,16)",
    "--config.model.blocks=(1,1,1,1)",
    "--config.model.embed_dim=32",
    "--config.data.synthetic.noise_clips=4",
    "--config.data.synthetic.speech_clips=4",
    "--config.data.synthetic.music_clips=4",
    "--config.data.synthetic.rirs=4",
    "--config.data.synthetic.bank_seconds=1.0",
]


def readme_commands(section: str) -> list[list[str]]:
    """The indented command lines of README's ``## section``, split into arguments."""
    text = open(os.path.join(ROOT, "README.md")).read()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [shlex.split(line) for line in re.findall(r"^    (\.venv/bin/\S+ .*)$", body, re.M)]


def write_folder(root, rng):
    """6 speakers x 2 sessions x 3 utterances; speakers differ in pitch and timbre."""
    for s in range(6):
        f0 = 90 + 25 * s
        for e in range(2):
            os.makedirs(root / f"spk{s}" / f"sess{e}", exist_ok=True)
            for u in range(3):
                sr = 16000 if (s + e + u) % 3 else 22050
                t = np.arange(int(sr * rng.uniform(1.2, 2.0))) / sr
                x = sum(np.sin(2 * np.pi * f0 * k * t) / k ** (1 + 0.2 * s) for k in range(1, 8))
                x = 0.3 * x / np.abs(x).max() + 0.01 * rng.standard_normal(t.size)
                sf.write(root / f"spk{s}" / f"sess{e}" / f"u{u}.wav", x.astype(np.float32), sr)


def seed_pretrained_cache(main_command, cache) -> str:
    """Put a network of the README run's (shrunk) architecture where ``train.init_from=embedded``
    looks for it under ``cache``; returns that folder."""
    import importlib.util

    from ssv_jax import checkpoints, pretrained
    from ssv_jax import state as state_lib
    from ssv_jax.optim import lr_schedule, make_optimizer

    path, _, arg = main_command[2].split("=", 1)[1].partition(":")
    spec = importlib.util.spec_from_file_location("recipe", os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config(arg)
    assert cfg.train.init_from == "embedded"
    for flag in SHRINK:
        key, value = flag[len("--config.") :].split("=")
        if key.startswith("model."):
            parsed = tuple(int(v) for v in value.strip("()").split(","))
            cfg.model[key[len("model.") :]] = parsed if "," in value else parsed[0]
    os.environ["SSV_JAX_PRETRAINED_DIR"] = str(cache)
    try:
        folder = pretrained.cache_dir(cfg)
    finally:
        del os.environ["SSV_JAX_PRETRAINED_DIR"]
    os.makedirs(folder)
    pre = pretrained.pretrain_config(cfg)
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(pre.to_json_best_effort())
    _, state = state_lib.create(pre, make_optimizer(pre.optim, lr_schedule(pre.optim, 1, 1)))
    mgr = checkpoints.manager(folder, pre)
    checkpoints.save(mgr, 1, state)
    mgr.wait_until_finished()
    with open(os.path.join(folder, "pretrained.json"), "w") as f:
        json.dump({"steps": 1}, f)
    return folder


@pytest.mark.slow
def test_readme_folder_recipe_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    audio, data, work = tmp_path / "audio", tmp_path / "data", tmp_path / "runs" / "my_voices"
    write_folder(audio, rng)
    trials = []
    for a in range(3):
        for b in range(3):
            trials.append(f"1 spk4/sess0/u{a}.wav spk4/sess1/u{b}.wav")
            trials.append(f"0 spk4/sess0/u{a}.wav spk5/sess1/u{b}.wav")
            trials.append(f"1 spk5/sess0/u{a}.wav spk5/sess1/u{b}.wav")
    (tmp_path / "MY_TRIALS.txt").write_text("\n".join(trials) + "\n")

    commands = readme_commands("Your own recordings")
    assert [c[1] for c in commands] == ["data_prep/folder.py", "main.py"]
    places = {
        "MY_AUDIO": str(audio),
        "MY_DATA": str(data),
        "MY_TRIALS.txt": str(tmp_path / "MY_TRIALS.txt"),
        "runs/my_voices": str(work),
    }
    # The pretrained network :small starts from, cached ahead (pretraining it is the demo's
    # 7-10 minutes): an initialised network of the shrunk architecture in the cache's place.
    cache = tmp_path / "pretrained"
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        SSV_JAX_PRETRAINED_DIR=str(cache),
    )
    cached = seed_pretrained_cache(commands[1], cache)
    for cmd in commands:
        args = [sys.executable, os.path.join(ROOT, cmd[1])]
        for a in cmd[2:]:
            for k, v in places.items():
                a = a.replace(k, v)
            args.append(
                a
                if not a.startswith("--config=")
                else "--config=" + os.path.join(ROOT, a.split("=", 1)[1])
            )
        if cmd[1] == "main.py":
            args += SHRINK
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr[-4000:]

        if cmd[1] == "main.py":
            assert f"starting from checkpoint 1 of {cached}" in proc.stderr, proc.stderr[-4000:]

    results = json.loads((work / "results.json").read_text())
    # The stored trial list, plain and with :small's neighbour expansion.
    assert set(results) == {"my_trials", "my_trials/neighbours_3"}, results
    for r in results.values():
        assert r["n_trials"] == len(trials) and 0 <= r["eer"] <= 100
    stored = json.loads((work / "config.json").read_text())["data"]
    assert stored["name"] == "my_voices" and stored["trials"] is None
