"""`hybridps run --local`: nothing any rank listens on is reachable beyond 127.0.0.1 (the
rendezvous store is unauthenticated; gloo's sockets likewise)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]

from runtime.testing import spec_args, write_specs  # noqa: E402

LISTEN = "0A"


def _listening(pids: list[int]) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} write them) of the sockets these processes listen on."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == LISTEN and f[9] in inodes:
                out.append(f[1].split(":")[0])
    return out


def test_local_run_listens_on_loopback_only(tmp_path):
    write_specs(tmp_path, [("w0", 32, 256), ("w1", 32, 256)], sync="asp", epochs=30, slowdown={"w0": 20.0, "w1": 20.0})
    out = tmp_path / "out"
    launcher = subprocess.Popen([sys.executable, "-m", "hybridps", "run", *map(str, spec_args(tmp_path)), "--out",
                                 str(out), "--local", "--eval-every", "0"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((out / "trace.jsonl").exists() and '"update"' in (out / "trace.jsonl").read_text()):
            assert time.monotonic() < deadline and launcher.poll() is None, launcher.communicate()
            time.sleep(0.1)
        pids = [int(p) for p in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True,
                                               text=True).stdout.split()]
        assert len(pids) == 3
        addrs = _listening(pids)
    finally:
        launcher.kill()
        launcher.communicate()
    assert addrs  # the store and gloo do listen ...
    loopback = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1
    assert set(addrs) <= loopback, addrs  # ... on loopback only
