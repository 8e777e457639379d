"""Launch N local JAX processes (gloo CPU collectives, localhost coordinator) for tests."""

import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_worker(*extra_args: str):
    """In a worker started by ``launch``: parse its flags (plus ``--NAME`` for each of
    ``extra_args``), join the other processes (gloo CPU collectives) and return the flags."""
    import argparse

    import jax

    p = argparse.ArgumentParser()
    for name in ("coordinator", "process_id", "num_processes", *extra_args):
        p.add_argument(f"--{name}", type=int if name in ("process_id", "num_processes") else str)
    args = p.parse_args()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    return args


def launch(script: str, args: list[str], n_proc: int, devices_per_proc: int, timeout: float = 240):
    """Run `python script --coordinator=... --process_id=i --num_processes=n ARGS` n times.

    Returns the list of completed processes; raises with every process's output on failure.
    """
    port = free_port()
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_per_proc}"
    env["JAX_PLATFORMS"] = "cpu"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                script,
                f"--coordinator=127.0.0.1:{port}",
                f"--process_id={i}",
                f"--num_processes={n_proc}",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in range(n_proc)
    ]
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(p.returncode for p in procs):
        raise RuntimeError(
            "multi-process run failed:\n"
            + "\n".join(f"--- process {i}\n{o}" for i, o in enumerate(outs))
        )
    return outs
