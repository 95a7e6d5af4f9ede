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
SDK_CONFIG = ROOT / "tests" / "sdk" / "nephos-sdk.toml"


class Nephos:
    """A running nephos: base (http://), https_base and ca (with --tls), data (its data dir)."""

    def __init__(self, proc, data, keep_data):
        self.proc, self.data, self._keep_data = proc, data, keep_data
        self.base = self.https_base = self.ca = None

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if not self._keep_data:
            shutil.rmtree(self.data, ignore_errors=True)


def _start_server(args=(), config=SDK_CONFIG, data=None):
    """Starts `nephos serve` on a free loopback port with extra `args` (e.g. "--tls").

    config=None starts without a configuration file (in the data dir, so that no
    config/nephos.toml of the working directory applies). A given `data` dir is kept at stop.
    Returns when the ready lines are out: with --tls (and no --tls-cert), once the
    `CA certificate:` line is."""
    binary = os.environ.get("NEPHOS_BIN") or str(ROOT / "target" / "debug" / "nephos")
    if not os.path.exists(binary):
        pytest.exit(f"nephos binary not found at {binary} (run cargo build or set NEPHOS_BIN)", 2)
    keep = data is not None
    data = data or tempfile.mkdtemp(prefix="nephos-sdk-py-")
    cmd = [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)]
    if config:
        cmd += ["--config", str(config)]
    cmd += list(args)
    tls = "--tls" in args
    wait_for_ca = tls and "--tls-cert" not in args
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True,
                            cwd=None if config else data)
    server = Nephos(proc, data, keep)
    ready = False
    for line in proc.stdout:
        if line.startswith("nephos listening on "):
            url = line.split(" on ", 1)[1].split()[0]
            if url.startswith("https://"):
                server.https_base = url
            elif server.base is None:
                server.base = url
        elif line.startswith("CA certificate: "):
            server.ca = line.split(": ", 1)[1].strip()
        ready = server.base and (not tls or server.https_base) and (not wait_for_ca or server.ca)
        if ready:
            break
    if not ready:
        proc.kill()
        pytest.exit("nephos did not start", 2)
    return server


@pytest.fixture(scope="session", autouse=True)
def nephos_server():
    server = _start_server()
    os.environ["CLOUDINARY_URL"] = f"cloudinary://1234567890:abcd@demo?upload_prefix={server.base}"
    import cloudinary
    cloudinary.reset_config()
    yield server.base
    server.stop()


@pytest.fixture(scope="module")
def start_nephos():
    """Starts more nephos processes for a test module, e.g. start_nephos("--tls"); see
    _start_server. They are stopped when the module's tests are done (or at stop())."""
    started = []

    def start(*args, **kwargs):
        server = _start_server(args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.stop()


@pytest.fixture
def base(nephos_server):
    return nephos_server


@pytest.fixture
def asset():
    return lambda name: str(ASSETS / name)
