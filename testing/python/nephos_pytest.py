"""Test helpers for applications that talk to nephos (a local Cloudinary stand-in).

Use it as a pytest plugin, with this folder on ``sys.path``::

    pytest -p nephos_pytest

or import the fixtures in a ``conftest.py``::

    from nephos_pytest import *  # noqa: F401,F403

Fixtures
--------
``nephos`` (session)
    Starts ``nephos serve --ephemeral --listen 127.0.0.1:0`` once per test session (the binary
    named by ``NEPHOS_BIN``, else ``nephos`` on ``PATH``) and yields a :class:`Nephos`: its
    ``base_url``, ``cloudinary_url`` and the control API (``create_cloud()``, ``reset()``,
    ``requests(**filters)``, ``add_fault(**rule)``, ...). The server is stopped, and its
    temporary folder removed, when the session ends. Extra command-line options come from the
    ``nephos_args`` fixture (override it in a conftest) or the ``NEPHOS_*`` environment
    variables nephos itself reads.

``nephos_cloud`` (function)
    A fresh cloud for one test, made through the control API. The ``cloudinary`` SDK is
    configured for it (``cloud_name``, ``api_key``, ``api_secret``, ``upload_prefix``, plus
    ``cname`` so URLs the SDK builds point at nephos) and ``CLOUDINARY_URL`` is set; both are
    restored after the test, and the cloud is removed with the fault rules limited to it.

When a test fails, what nephos logged meanwhile is added to its report ("Captured nephos
log"); ``NEPHOS_TEST_LOG=1`` also copies the server's log to stderr as it comes.

The module needs only the standard library; ``cloudinary`` is imported by ``nephos_cloud``.
:class:`Nephos` also works without pytest (``with Nephos.start() as nephos: ...``).
"""

from __future__ import annotations

import atexit
import collections
import datetime
import json
import os
import queue
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

import pytest

__all__ = ["Nephos", "NephosCloud", "NephosError", "nephos", "nephos_args", "nephos_cloud",
           "pytest_runtest_setup", "pytest_runtest_makereport"]

CONTROL_HEADER = "X-Nephos-Control"
_READY_TIMEOUT = 30.0


class NephosError(RuntimeError):
    """Starting nephos failed, or the control API answered an error."""

    def __init__(self, message: str, status: Optional[int] = None, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass
class NephosCloud:
    """A cloud as the control API describes it, with shortcuts scoped to that cloud."""

    cloud_name: str
    api_key: str
    api_secret: str = field(repr=False)
    upload_prefix: str = ""
    cloudinary_url: str = field(default="", repr=False)
    signature_algorithm: str = "sha1"
    server: Optional["Nephos"] = field(default=None, repr=False, compare=False)

    @property
    def cname(self) -> str:
        """``host:port`` of nephos, for the SDKs' ``cname`` option (delivery URLs)."""
        return urllib.parse.urlsplit(self.upload_prefix).netloc

    def sdk_config(self) -> Dict[str, Any]:
        """Keyword arguments for ``cloudinary.config(**...)`` that point the SDK at this cloud."""
        return {
            "cloud_name": self.cloud_name,
            "api_key": self.api_key,
            "api_secret": self.api_secret,
            "upload_prefix": self.upload_prefix,
            "signature_algorithm": self.signature_algorithm,
            "cname": self.cname,
            "secure": False,
            "private_cdn": False,
            "secure_distribution": None,
            "cdn_subdomain": False,
        }

    def _server(self) -> "Nephos":
        if self.server is None:
            raise NephosError("this cloud is not attached to a running nephos")
        return self.server

    def requests(self, **filters: Any) -> List[Dict[str, Any]]:
        """The requests nephos recorded for this cloud (see :meth:`Nephos.requests`)."""
        filters.setdefault("cloud", self.cloud_name)
        return self._server().requests(**filters)

    def add_fault(self, **rule: Any) -> Dict[str, Any]:
        """A fault rule limited to this cloud (see :meth:`Nephos.add_fault`); it goes with the
        cloud when :meth:`delete` (or the ``nephos_cloud`` fixture) removes it."""
        rule.setdefault("cloud", self.cloud_name)
        return self._server().add_fault(**rule)

    def reset(self) -> Dict[str, Any]:
        """Empties this cloud (``POST /_nephos/clouds/<cloud>/reset``)."""
        return self._server().reset_cloud(self.cloud_name)

    def seed(self, path: str) -> Dict[str, Any]:
        """Uploads a folder into this cloud (public IDs from the relative paths)."""
        return self._server().seed(self.cloud_name, path)

    def delete(self) -> None:
        """Removes this cloud, everything in it and its fault rules (see
        :meth:`Nephos.delete_cloud`)."""
        self._server().delete_cloud(self.cloud_name)


class Nephos:
    """A nephos process started for tests, and a client of its control API (``/_nephos/``)."""

    def __init__(self, process: subprocess.Popen, ready: Dict[str, Any], control_token: Optional[str],
                 log: "_Log"):
        self.process = process
        self.base_url: str = ready["base_url"]
        self.cloudinary_url: str = ready["cloudinary_url"]
        self.control_url: str = ready.get("control_url") or self.base_url + "/_nephos/"
        self.ca_cert: Optional[str] = ready.get("ca_cert")
        self.ready_lines: List[str] = ready["lines"]
        self.control_token = control_token
        self.log = log

    # ---------------------------------------------------------------- process

    @classmethod
    def start(cls, binary: Optional[str] = None, args: Iterable[str] = (),
              env: Optional[Dict[str, str]] = None, timeout: float = _READY_TIMEOUT,
              forward_log: Optional[bool] = None) -> "Nephos":
        """Starts ``nephos serve --ephemeral --listen 127.0.0.1:0 [args]`` and waits until it is
        ready. ``binary`` defaults to ``$NEPHOS_BIN``, then ``nephos`` on ``PATH``. The server's
        log (stderr) is kept in :attr:`log` (the plugin adds a test's part of it to the report
        of a failing test) and, with ``forward_log`` (default: ``NEPHOS_TEST_LOG=1``), also
        copied to this process's stderr as it comes."""
        binary = binary or os.environ.get("NEPHOS_BIN") or shutil.which("nephos")
        if not binary:
            raise NephosError("nephos not found: set NEPHOS_BIN or put nephos on PATH")
        full_env = dict(os.environ if env is None else env)
        if forward_log is None:
            forward_log = full_env.get("NEPHOS_TEST_LOG") == "1"
        args = list(args)
        cmd = [binary, "serve", "--ephemeral", "--listen", "127.0.0.1:0", *args]
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=full_env)
        except OSError as e:
            raise NephosError(f"could not run {binary}: {e}") from e

        log = _Log()
        threading.Thread(target=_pump_stderr, args=(proc.stderr, log, forward_log),
                         name="nephos-stderr", daemon=True).start()
        lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=_pump_stdout, args=(proc.stdout, lines),
                         name="nephos-stdout", daemon=True).start()

        tls = "--tls" in args or _truthy(full_env.get("NEPHOS_TLS"))
        own_cert = "--tls-cert" in args or bool(full_env.get("NEPHOS_TLS_CERT"))
        ready: Dict[str, Any] = {"lines": []}
        deadline = time.monotonic() + timeout
        while True:
            if "cloudinary_url" in ready and (not tls or own_cert or "ca_cert" in ready):
                break
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                _terminate(proc)
                raise NephosError(f"nephos was not ready within {timeout:g}s\n" + log.tail_text())
            if line is None:  # stdout closed: the process ended
                code = proc.wait()
                time.sleep(0.05)  # let the stderr pump catch the last message
                raise NephosError(f"nephos exited with status {code} before it was ready\n"
                                  + log.tail_text())
            ready["lines"].append(line)
            _parse_ready_line(line, ready)

        token = full_env.get("NEPHOS_CONTROL_TOKEN")
        if "--control-token" in args:
            token = args[args.index("--control-token") + 1]
        nephos = cls(proc, ready, token or None, log)
        atexit.register(nephos.stop)
        return nephos

    def stop(self) -> None:
        """Stops nephos (SIGTERM, then SIGKILL after 10 s); it removes its temporary folder."""
        if self.process.poll() is None:
            _terminate(self.process)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 200) -> str:
        """The last lines nephos logged (stderr)."""
        return "".join(self.log.tail(lines))

    def __enter__(self) -> "Nephos":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------ control API

    def control(self, method: str, path: str, body: Any = None,
                query: Optional[Dict[str, Any]] = None) -> Any:
        """Calls ``/_nephos/<path>`` and returns the decoded JSON answer; an error answer raises
        :class:`NephosError` with ``status`` and ``body``."""
        url = self.base_url + "/_nephos/" + path.lstrip("/")
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        headers = {CONTROL_HEADER: "1", "Accept": "application/json"}
        if self.control_token:
            headers["Authorization"] = f"Bearer {self.control_token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method.upper(), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                text = resp.read().decode()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                decoded = json.loads(text)
                message = decoded.get("error", {}).get("message", text)
            except (ValueError, AttributeError):
                decoded, message = text, text
            raise NephosError(f"{method.upper()} /_nephos/{path.lstrip('/')}: {e.code} {message}",
                              status=e.code, body=decoded) from None
        except urllib.error.URLError as e:
            state = "running" if self.running else f"exited with status {self.process.returncode}"
            raise NephosError(f"{method.upper()} /_nephos/{path.lstrip('/')}: {e.reason} "
                              f"(nephos {state})\n{self.log.tail_text()}") from None

    def create_cloud(self, name: Optional[str] = None, api_key: Optional[str] = None,
                     api_secret: Optional[str] = None) -> NephosCloud:
        """A new cloud; the name and credentials are generated unless given."""
        body = {k: v for k, v in (("name", name), ("api_key", api_key), ("api_secret", api_secret))
                if v is not None}
        return self._cloud(self.control("POST", "clouds", body))

    def delete_cloud(self, cloud: "str | NephosCloud") -> Dict[str, Any]:
        """Removes a cloud and everything in it, and the fault rules limited to that cloud (nephos
        keeps those, and they would apply to a later cloud of the same name). A cloud that is
        already gone is not an error."""
        name = _cloud_name(cloud)
        result: Dict[str, Any] = {"deleted": None}
        try:
            result = self.control("DELETE", "clouds/" + urllib.parse.quote(name, safe=""))
        except NephosError as e:
            if e.status != 404:
                raise
        for rule in self.faults():
            if rule.get("cloud") == name:
                try:
                    self.delete_fault(rule["id"])
                except NephosError as e:
                    if e.status != 404:
                        raise
        return result

    def clouds(self) -> List[NephosCloud]:
        """Every cloud, configured (``--account``) and made at run time."""
        return [self._cloud(c) for c in self.control("GET", "clouds")["clouds"]]

    def reset(self) -> Dict[str, Any]:
        """Back to the start: clouds made at run time removed, data wiped (configured clouds are
        seeded again if ``--seed`` is set), request records, notifications and faults cleared."""
        return self.control("POST", "reset")

    def reset_cloud(self, cloud: "str | NephosCloud") -> Dict[str, Any]:
        return self.control("POST", f"clouds/{urllib.parse.quote(_cloud_name(cloud), safe='')}/reset")

    def seed(self, cloud: "str | NephosCloud", path: Optional[str] = None) -> Dict[str, Any]:
        """Uploads the files of ``path`` (default: the ``--seed`` folder) into ``cloud``."""
        body = {"path": os.fspath(path)} if path is not None else {}
        return self.control("POST", f"clouds/{urllib.parse.quote(_cloud_name(cloud), safe='')}/seed",
                            body)

    def requests(self, **filters: Any) -> List[Dict[str, Any]]:
        """Recorded requests, oldest first: ``{seq, time, request_id, method, path, cloud, params,
        status, error, duration_ms}`` (secrets masked). Filters: ``cloud`` (name or
        :class:`NephosCloud`), ``method``, ``path_prefix``, ``status``, ``since`` (Unix seconds
        or milliseconds, RFC 3339 or a ``datetime``) and ``limit`` (the latest N; by default
        every recorded one, at most the 2000 nephos keeps)."""
        filters.setdefault("limit", 2000)
        if "cloud" in filters and filters["cloud"] is not None:
            filters["cloud"] = _cloud_name(filters["cloud"])
        since = filters.get("since")
        if isinstance(since, datetime.datetime):
            if since.tzinfo is None:
                since = since.astimezone()
            filters["since"] = since.isoformat()
        return self.control("GET", "requests", query=filters)["requests"]

    def clear_requests(self) -> None:
        self.control("DELETE", "requests")

    def notifications(self, **filters: Any) -> List[Dict[str, Any]]:
        """Notifications (webhooks) nephos sent or tried; filters ``cloud`` and ``limit``."""
        filters.setdefault("limit", 2000)
        if filters.get("cloud") is not None:
            filters["cloud"] = _cloud_name(filters["cloud"])
        return self.control("GET", "notifications", query=filters)["notifications"]

    def clear_notifications(self) -> None:
        self.control("DELETE", "notifications")

    def add_fault(self, **rule: Any) -> Dict[str, Any]:
        """Adds a fault rule and returns it (with its ``id``). Keys: ``method``, ``path`` (glob with
        ``*``), ``cloud``, ``param`` (``"name=value"``), ``status``, ``message``, ``headers``,
        ``delay_ms``, ``times``, ``preset`` (``"rate_limit"``). A rule stays until it is deleted
        (:meth:`delete_fault`, :meth:`clear_faults`, :meth:`reset`); one limited to a cloud also
        goes with :meth:`delete_cloud`, hence ``nephos_cloud.add_fault``."""
        if rule.get("cloud") is not None:
            rule["cloud"] = _cloud_name(rule["cloud"])
        return self.control("POST", "faults", rule)

    def faults(self) -> List[Dict[str, Any]]:
        return self.control("GET", "faults")["faults"]

    def delete_fault(self, fault_id: "str | int | Dict[str, Any]") -> None:
        if isinstance(fault_id, dict):
            fault_id = fault_id["id"]
        self.control("DELETE", f"faults/{urllib.parse.quote(str(fault_id), safe='')}")

    def clear_faults(self) -> None:
        self.control("DELETE", "faults")

    def hold_async(self) -> None:
        """Holds asynchronous uploads and eager jobs until :meth:`release_async`."""
        self.control("POST", "async/hold")

    def release_async(self) -> None:
        self.control("POST", "async/release")

    def async_held(self) -> bool:
        return bool(self.control("GET", "async")["held"])

    def _cloud(self, data: Dict[str, Any]) -> NephosCloud:
        return NephosCloud(
            cloud_name=data["cloud_name"], api_key=data["api_key"], api_secret=data["api_secret"],
            upload_prefix=data.get("upload_prefix") or self.base_url,
            cloudinary_url=data["cloudinary_url"],
            signature_algorithm=data.get("signature_algorithm") or "sha1", server=self)


# ------------------------------------------------------------ fixtures and hooks

_RUNNING: List[Nephos] = []  # started by the `nephos` fixture, for the report hooks
_LOG_MARKS = pytest.StashKey[Dict[int, int]]()  # per test: where each server's log stood


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_LOG_MARKS] = {id(n): n.log.count for n in _RUNNING}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any):
    """Adds what nephos logged during a failing test to its report ("Captured nephos log")."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or not _RUNNING:
        return
    title = f"Captured nephos log {report.when}"
    if any(name == title for name, _ in report.sections):
        return  # the hooks are registered twice (-p and a conftest import)
    time.sleep(0.05)  # the log line of the last request can trail its answer
    marks = item.stash.get(_LOG_MARKS, {})
    text = "".join(line for n in _RUNNING for line in n.log.since(marks.get(id(n), 0)))
    if text:
        report.sections.append((title, text))


@pytest.fixture(scope="session")
def nephos_args() -> List[str]:
    """Extra ``nephos serve`` options for the ``nephos`` fixture; override it in a conftest,
    e.g. ``return ["--seed", "tests/fixtures/media"]``."""
    return []


@pytest.fixture(scope="session")
def nephos(nephos_args: List[str]) -> Iterable[Nephos]:
    """One ephemeral nephos for the test session."""
    try:
        server = Nephos.start(args=nephos_args)
    except NephosError as e:
        pytest.fail(str(e), pytrace=False)
    _RUNNING.append(server)
    try:
        yield server
    finally:
        _RUNNING.remove(server)
        server.stop()


@pytest.fixture
def nephos_cloud(nephos: Nephos) -> Iterable[NephosCloud]:
    """A fresh cloud for this test, with the ``cloudinary`` SDK configured for it."""
    import cloudinary

    cloud = nephos.create_cloud()
    config = cloudinary.config()
    saved_config = dict(config.__dict__)
    saved_env = os.environ.get("CLOUDINARY_URL")
    sep = "&" if "?" in cloud.cloudinary_url else "?"
    os.environ["CLOUDINARY_URL"] = f"{cloud.cloudinary_url}{sep}cname={cloud.cname}"
    cloudinary.config(**cloud.sdk_config())
    try:
        yield cloud
    finally:
        current = cloudinary.config()  # the same object unless the test called reset_config()
        current.__dict__.clear()
        current.__dict__.update(saved_config)
        if saved_env is None:
            os.environ.pop("CLOUDINARY_URL", None)
        else:
            os.environ["CLOUDINARY_URL"] = saved_env
        if nephos.running:
            cloud.delete()


# ---------------------------------------------------------------------- helpers

def _cloud_name(cloud: "str | NephosCloud") -> str:
    return cloud.cloud_name if isinstance(cloud, NephosCloud) else str(cloud)


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _parse_ready_line(line: str, ready: Dict[str, Any]) -> None:
    line = line.strip()
    if line.startswith("nephos listening on http://") and "base_url" not in ready:
        ready["base_url"] = line.split(" on ", 1)[1].split()[0]
    elif line.startswith("nephos listening on https://"):
        ready["https_url"] = line.split(" on ", 1)[1].split()[0]
    elif line.startswith("control API: "):
        ready["control_url"] = line[len("control API: "):].split()[0]
    elif line.startswith("CLOUDINARY_URL="):
        url = line[len("CLOUDINARY_URL="):]
        ready.setdefault("cloudinary_urls", []).append(url)
        if "upload_prefix=http://" in url or "upload_prefix=" not in url:
            ready.setdefault("cloudinary_url", url)
    elif line.startswith("CA certificate: "):
        ready["ca_cert"] = line[len("CA certificate: "):]


def _pump_stdout(stream, lines: "queue.Queue[Optional[str]]") -> None:
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode(errors="replace").rstrip("\r\n"))
    lines.put(None)


class _Log:
    """The lines nephos wrote on stderr, numbered, the latest 10000 kept."""

    def __init__(self, keep: int = 10000):
        self._lines: "collections.deque[tuple[int, str]]" = collections.deque(maxlen=keep)
        self._lock = threading.Lock()
        self.count = 0

    def append(self, line: str) -> None:
        with self._lock:
            self._lines.append((self.count, line))
            self.count += 1

    def since(self, mark: int) -> List[str]:
        with self._lock:
            return [line for n, line in self._lines if n >= mark]

    def tail(self, lines: int = 200) -> List[str]:
        with self._lock:
            return [line for _, line in list(self._lines)[-lines:]]

    def tail_text(self) -> str:
        text = "".join(self.tail()).strip()
        return ("nephos said:\n" + text) if text else "(nephos wrote nothing on stderr)"


def _pump_stderr(stream, log: _Log, forward: bool) -> None:
    for raw in iter(stream.readline, b""):
        log.append(raw.decode(errors="replace"))
        if forward:
            try:
                os.write(2, raw)
            except OSError:
                pass


def _terminate(proc: subprocess.Popen) -> None:
    try:
        proc.terminate()
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass

