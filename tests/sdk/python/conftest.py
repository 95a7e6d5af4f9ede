"""Starts the nephos binary once for the session and points the official SDK at it."""
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
ASSETS = ROOT / "tests" / "sdk" / "assets"


def _start_server():
    binary = os.environ.get("NEPHOS_BIN") or str(ROOT / "target" / "debug" / "nephos")
    if not os.path.exists(binary):
        pytest.exit(f"nephos binary not found at {binary} (run cargo build or set NEPHOS_BIN)", 2)
    data = tempfile.mkdtemp(prefix="nephos-sdk-py-")
    proc = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data,
         "--config", str(ROOT / "tests" / "sdk" / "nephos-sdk.toml")],
        stdout=subprocess.PIPE, stderr=sys.stderr, text=True,
    )
    base = None
    for line in proc.stdout:
        if line.startswith("nephos listening on "):
            base = line.split(" on ", 1)[1].strip()
            break
    if base is None:
        proc.kill()
        pytest.exit("nephos did not start", 2)
    return proc, base, data


@pytest.fixture(scope="session", autouse=True)
def nephos_server():
    proc, base, data = _start_server()
    os.environ["CLOUDINARY_URL"] = f"cloudinary://1234567890:abcd@demo?upload_prefix={base}"
    import cloudinary
    cloudinary.reset_config()
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def base(nephos_server):
    return nephos_server


@pytest.fixture
def asset():
    return lambda name: str(ASSETS / name)
