"""The container image and the compose file, checked without a Docker engine: the files'
structure, and the binary built by the image's own build script run the way the image runs
it (its ENV, its CMD, its HEALTHCHECK command)."""
import os
import pathlib
import re
import shlex
import socket
import subprocess
import tempfile
import time

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]


def dockerfile():
    """The Dockerfile as (instruction, argument) pairs, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages():
    """The instructions of each stage."""
    result, current = [], None
    for ins, arg in dockerfile():
        if ins == "FROM":
            current = {"from": arg, "ins": []}
            result.append(current)
        elif current is not None:
            current["ins"].append((ins, arg))
    return result


def runtime_env():
    env = {}
    for ins, arg in stages()[-1]["ins"]:
        if ins == "ENV":
            for item in shlex.split(arg):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_the_image_is_multi_stage_small_and_not_root():
    s = stages()
    assert len(s) >= 2, "a build stage and a runtime stage"
    assert " AS " in s[0]["from"].upper()
    assert "slim" in s[-1]["from"], "a small runtime image"
    build_runs = [arg for ins, arg in s[0]["ins"] if ins == "RUN"]
    assert build_runs == ["scripts/container/build.sh /out"], build_runs
    final = dict((ins, arg) for ins, arg in s[-1]["ins"])
    assert "ca-certificates" in final["RUN"], "HTTPS object stores need the system's CA list"
    assert final["USER"] not in ("root", "0")
    assert "8777" in final["EXPOSE"]
    assert "/data" in final["VOLUME"]
    assert final["HEALTHCHECK"].endswith('CMD ["nephos", "healthcheck"]')
    assert "COPY" in final and "/out/nephos" in final["COPY"]
    env = runtime_env()
    assert env["NEPHOS_LISTEN"].startswith("0.0.0.0:")
    assert env["NEPHOS_DATA_DIR"] == "/data"


def test_the_build_context_leaves_out_build_output_and_dependencies():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in ["target/", ".venv/", "**/node_modules/", ".git/"]:
        assert entry in ignored


def test_the_compose_file_runs_sqlite_by_default_and_postgres_in_a_profile():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    default = [name for name, s in services.items() if not s.get("profiles")]
    assert default == ["nephos"], "only nephos on SQLite runs by default"
    nephos = services["nephos"]
    assert nephos["build"] == "."
    assert "8777:8777" in nephos["ports"]
    assert nephos["healthcheck"]["test"] == ["CMD", "nephos", "healthcheck"]
    assert "NEPHOS_DATABASE_URL" not in nephos["environment"]
    assert any(v.endswith(":/data") for v in nephos["volumes"])
    pg = services["postgres"]
    assert "postgres" in pg["profiles"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    with_pg = services["nephos-postgres"]
    assert with_pg["profiles"] == ["postgres"]
    assert with_pg["depends_on"]["postgres"]["condition"] == "service_healthy"
    url = with_pg["environment"]["NEPHOS_DATABASE_URL"]
    env = pg["environment"]
    assert url == (f"postgres://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}"
                   f"@postgres:5432/{env['POSTGRES_DB']}")
    for volume in [v.split(":")[0] for s in services.values() for v in s.get("volumes", [])]:
        if volume.startswith((".", "/")):
            assert (ROOT / volume).exists(), volume
        else:
            assert volume in compose["volumes"], volume
    # Every NEPHOS_* variable the files set is one nephos knows.
    binary = os.environ.get("NEPHOS_CONTAINER_BIN") or os.environ.get("NEPHOS_BIN")
    if binary:
        known = set(re.findall(r"NEPHOS_[A-Z_]+", subprocess.run(
            [binary, "serve", "--help"], capture_output=True, text=True, check=True).stdout))
        known |= {"NEPHOS_LOG"}
        used = set(runtime_env()) | {k for s in services.values()
                                     for k in s.get("environment", {}) if k.startswith("NEPHOS_")}
        assert used <= known, used - known


def test_the_cluster_profile_runs_two_instances_on_postgres_and_s3_behind_a_proxy():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    cluster = {name for name, s in services.items() if "cluster" in s.get("profiles", [])}
    assert {"postgres", "minio", "minio-bucket", "nephos-a", "nephos-b", "proxy"} <= cluster
    a, b = services["nephos-a"], services["nephos-b"]
    assert a["environment"] == b["environment"]
    env = a["environment"]
    assert env["NEPHOS_STORAGE_URL"].startswith("s3://")
    assert env["NEPHOS_DATABASE_URL"].startswith("postgres://")
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    minio = services["minio"]["environment"]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"])
    bucket = env["NEPHOS_STORAGE_URL"][len("s3://"):].split("/")[0]
    assert f"local/{bucket}" in " ".join(services["minio-bucket"]["entrypoint"])
    assert a["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert a["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
    proxy = services["proxy"]
    assert "8779:8779" in proxy["ports"]
    assert env["NEPHOS_PUBLIC_URL"].endswith(":8779")
    conf_path = proxy["volumes"][0].split(":")[0]
    conf = (ROOT / conf_path).read_text()
    assert "server nephos-a:8777;" in conf and "server nephos-b:8777;" in conf
    # The parts of one chunked upload stay on one instance.
    assert "map $http_x_unique_upload_id $affinity" in conf
    assert "hash $affinity consistent;" in conf
    assert "proxy_request_buffering off;" in conf


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_built_binary_runs_as_the_image_runs_it():
    binary = os.environ.get("NEPHOS_CONTAINER_BIN")
    if not binary:
        if os.environ.get("NEPHOS_REQUIRE_CONTAINER") == "1":
            pytest.fail("NEPHOS_CONTAINER_BIN is not set (scripts/test builds it)")
        pytest.skip("NEPHOS_CONTAINER_BIN is not set: run scripts/container/build.sh first")
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        env = {"PATH": os.environ.get("PATH", "")}
        env.update(runtime_env())
        # The image's listen address (all interfaces), on a free port; its data dir here.
        env["NEPHOS_LISTEN"] = f"0.0.0.0:{port}"
        env["NEPHOS_DATA_DIR"] = data
        cmd = [binary] + [a.strip('" ') for a in dict(stages()[-1]["ins"])["CMD"].strip("[]").split(",")]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = proc.stdout.readline()
            assert first.startswith("nephos listening on http://127.0.0.1:"), first
            health = subprocess.run([binary, "healthcheck"], env=env, capture_output=True, text=True,
                                     timeout=10)
            assert health.returncode == 0, health.stderr
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        # Stopped: the health check now fails, as Docker would see it.
        down = subprocess.run([binary, "healthcheck"], env=env, capture_output=True, text=True,
                              timeout=10)
        assert down.returncode != 0
        assert f"127.0.0.1:{port}" in down.stderr
