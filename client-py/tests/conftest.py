"""A real mediator for the tests: VGPU_BIN names the directory with vgpu-mediator and
ivshmem-setup (scripts/test-python.sh sets it)."""

import json
import os
import pathlib
import subprocess
import tempfile
import time

import pytest

BIN = pathlib.Path(os.environ.get("VGPU_BIN", "target/debug"))


def _served(setup, region):
    out = subprocess.run([setup, "inspect", "--json", region], capture_output=True, text=True)
    return out.returncode == 0 and json.loads(out.stdout).get("mediator") is not None


@pytest.fixture
def region():
    """The region of VM 5 (pool A, priority 1), served by a mediator."""
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        config = pathlib.Path(d) / "vgpu.toml"
        config.write_text(
            f'[regions]\ndir = "{d}"\nsize = "1M"\nring_entries = 64\narena_size = "512K"\n'
            '[mediator]\nheartbeat_interval_ms = 20\n[pools.A]\n'
            '[[vm]]\nid = 5\npool = "A"\npriority = 1\n'
        )
        setup = str(BIN / "ivshmem-setup")
        subprocess.run([setup, "create", "--config", str(config)], check=True, capture_output=True)
        region = str(pathlib.Path(d) / "vgpu-vm5")
        log = open(pathlib.Path(d) / "mediator.log", "w")
        mediator = subprocess.Popen([str(BIN / "vgpu-mediator"), "--config", str(config)],
                                    stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while not _served(setup, region):
                assert mediator.poll() is None, "the mediator exited"
                assert time.monotonic() < deadline, "the mediator never attached"
                time.sleep(0.02)
            yield region
        finally:
            mediator.terminate()
            mediator.wait(timeout=20)
            log.close()
