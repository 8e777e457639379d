"""Worker processes seen through Linux /proc: the tests' view of the data workers."""

import os
import time


def worker_pids(parent=None):
    """Live (not zombie) spawned worker processes of ``parent`` (default: this one)."""
    parent = os.getpid() if parent is None else parent
    pids = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, ValueError):
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if int(fields[1]) == parent and fields[0] != "Z" and b"spawn_main" in cmd:
            pids.append(int(d))
    return pids


def gone(pids, seconds=20.0):
    """Whether every pid has exited (or is a zombie) within ``seconds``."""
    t = time.time()
    while time.time() - t < seconds:
        alive = []
        for p in pids:
            try:
                with open(f"/proc/{p}/stat") as f:
                    if f.read().rsplit(")", 1)[-1].split()[0] != "Z":
                        alive.append(p)
            except OSError:
                pass
        if not alive:
            return True
        time.sleep(0.2)
    return False
