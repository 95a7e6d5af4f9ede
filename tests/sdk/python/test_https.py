"""nephos --tls: TLS and plain HTTP on one port, with a local CA (`<data dir>/tls/ca.pem`)
made on first start.

The Python SDK (cloudinary 1.46) verifies its API calls against certifi's bundle only
(`ca_certs=certifi.where()`, set when `cloudinary.uploader` and `cloudinary.api` are
imported); SSL_CERT_FILE and REQUESTS_CA_BUNDLE do not apply to it. So it keeps an http://
upload_prefix on the TLS port for uploads and the Admin API, while the answers' `secure_url`
and the URLs built with `secure=True, secure_distribution="host:port"` are https:// and load
when the client trusts the CA."""
import os
import pathlib
import ssl
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import cloudinary
import cloudinary.api
import cloudinary.uploader
import cloudinary.utils
import pytest

ASSETS = pathlib.Path(__file__).resolve().parents[1] / "assets"
LOGO = (ASSETS / "logo.png").read_bytes()


def unique(name):
    return f"{name}_{time.time_ns()}"


def fetch(url, cafile=None, context=None):
    """(status, Content-Type, body) of a GET; https verified against `cafile` if given."""
    if context is None and cafile:
        context = ssl.create_default_context(cafile=cafile)
    try:
        with urllib.request.urlopen(url, context=context, timeout=30) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("X-Cld-Error"), e.read()


def png_size(body):
    assert body.startswith(b"\x89PNG\r\n\x1a\n")
    return struct.unpack(">II", body[16:24])


def jpeg_size(body):
    assert body.startswith(b"\xff\xd8")
    i = 2
    while i < len(body):
        marker, length = body[i + 1], struct.unpack(">H", body[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", body[i + 5:i + 9])
            return w, h
        i += 2 + length
    raise AssertionError("no SOF marker")


def without_query(url):
    return url.split("?")[0]


@pytest.fixture(scope="module")
def tls(start_nephos):
    """A nephos --tls of this module, with the SDK configuration file."""
    return start_nephos("--tls")


@pytest.fixture(scope="module")
def host(tls):
    return urlsplit(tls.https_base).netloc


@pytest.fixture(scope="module", autouse=True)
def sdk(tls):
    """Points the SDK's uploads and Admin API at the TLS server's http:// form for this module;
    puts the session's configuration back afterwards."""
    saved = dict(cloudinary.config().__dict__)
    cloudinary.config(upload_prefix=tls.base)
    yield
    cfg = cloudinary.config()
    cfg.__dict__.clear()
    cfg.__dict__.update(saved)


@pytest.fixture
def restore_config():
    saved = dict(cloudinary.config().__dict__)
    yield
    cfg = cloudinary.config()
    cfg.__dict__.clear()
    cfg.__dict__.update(saved)


@pytest.fixture(scope="module")
def uploaded(tls):
    return cloudinary.uploader.upload(str(ASSETS / "logo.png"), public_id=unique("https/py"))


def test_one_port_serves_http_and_https(tls):
    assert tls.https_base == tls.base.replace("http://", "https://", 1)
    assert pathlib.Path(tls.ca) == pathlib.Path(tls.data) / "tls" / "ca.pem"
    assert fetch(f"{tls.base}/health")[::2] == (200, b'{"status":"ok"}')
    assert fetch(f"{tls.https_base}/health", cafile=tls.ca)[::2] == (200, b'{"status":"ok"}')
    # The certificate names 127.0.0.1 and localhost.
    port = urlsplit(tls.base).port
    assert fetch(f"https://localhost:{port}/health", cafile=tls.ca)[0] == 200


def test_https_is_refused_without_the_ca(tls):
    with pytest.raises(urllib.error.URLError) as e:
        fetch(f"{tls.https_base}/health", context=ssl.create_default_context())
    assert isinstance(e.value.reason, ssl.SSLCertVerificationError)
    assert "self-signed certificate in certificate chain" in str(e.value.reason)


def test_upload_over_http_prefix_answers_an_https_secure_url_that_loads(tls, uploaded):
    pid, v = uploaded["public_id"], uploaded["version"]
    assert uploaded["url"] == f"{tls.base}/demo/image/upload/v{v}/{pid}.png"
    assert uploaded["secure_url"] == f"{tls.https_base}/demo/image/upload/v{v}/{pid}.png"
    status, ctype, body = fetch(uploaded["secure_url"], cafile=tls.ca)
    assert (status, ctype, body == LOGO) == (200, "image/png", True)
    status, _, body = fetch(uploaded["url"])
    assert (status, body == LOGO) == (200, True)


def test_admin_api_over_http_prefix(tls, uploaded):
    r = cloudinary.api.resource(uploaded["public_id"])
    assert (r["bytes"], r["url"], r["secure_url"]) == (len(LOGO), uploaded["url"], uploaded["secure_url"])
    listed = cloudinary.api.resources(type="upload", prefix="https/py")["resources"]
    assert uploaded["secure_url"] in [x["secure_url"] for x in listed]
    cloudinary.uploader.add_tag("https_tag", [uploaded["public_id"]])
    assert cloudinary.api.resource(uploaded["public_id"])["tags"] == ["https_tag"]


def test_secure_urls_with_secure_distribution_load(tls, host, uploaded):
    pid = uploaded["public_id"]

    def url(**o):
        return cloudinary.utils.cloudinary_url(pid, **{"secure": True, "secure_distribution": host, "format": "png", **o})[0]

    assert url() == f"{tls.https_base}/demo/image/upload/v1/{pid}.png"
    assert url(version=uploaded["version"]) == uploaded["secure_url"]
    assert url(sign_url=True).startswith(f"{tls.https_base}/demo/image/upload/s--")
    image_url = cloudinary.CloudinaryImage(pid).build_url(secure=True, secure_distribution=host, format="png")
    for u in (url(), url(version=uploaded["version"]), url(sign_url=True), image_url):
        status, ctype, body = fetch(u, cafile=tls.ca)
        assert (status, ctype, body == LOGO) == (200, "image/png", True), u

    fill = dict(width=20, height=10, crop="fill")
    assert url(**fill) == f"{tls.https_base}/demo/image/upload/c_fill,h_10,w_20/v1/{pid}.png"
    for u in (url(**fill), url(sign_url=True, **fill)):
        status, ctype, body = fetch(u, cafile=tls.ca)
        assert (status, ctype, png_size(body)) == (200, "image/png", (20, 10)), u
    status, ctype, body = fetch(url(format="jpg", width=32, crop="scale"), cafile=tls.ca)
    assert (status, ctype, jpeg_size(body)) == (200, "image/jpeg", (32, 16))


def test_secure_distribution_from_the_configuration(tls, host, uploaded, restore_config, monkeypatch):
    pid = uploaded["public_id"]
    cloudinary.config(secure=True, secure_distribution=host)
    u = cloudinary.utils.cloudinary_url(pid, format="png")[0]
    assert u == f"{tls.https_base}/demo/image/upload/v1/{pid}.png"
    assert fetch(u, cafile=tls.ca)[0] == 200
    # The same from CLOUDINARY_URL, beside the http upload_prefix.
    monkeypatch.setenv("CLOUDINARY_URL", f"cloudinary://1234567890:abcd@demo?upload_prefix={tls.base}"
                                         f"&secure=true&secure_distribution={host}")
    cloudinary.reset_config()
    assert cloudinary.utils.cloudinary_url(pid, format="png")[0] == u
    again = cloudinary.uploader.upload(str(ASSETS / "logo.png"), public_id=unique("https/py_env"))
    assert again["secure_url"].startswith(f"{tls.https_base}/demo/image/upload/v")


def test_authenticated_asset_over_https_needs_the_signed_url(tls, host):
    up = cloudinary.uploader.upload(str(ASSETS / "logo.png"), public_id=unique("https/py_auth"), type="authenticated")
    assert up["secure_url"].startswith(f"{tls.https_base}/demo/image/authenticated/s--")
    assert fetch(up["secure_url"], cafile=tls.ca)[::2] == (200, LOGO)

    def url(**o):
        return cloudinary.utils.cloudinary_url(up["public_id"], secure=True, secure_distribution=host,
                                               format="png", type="authenticated", **o)[0]

    assert fetch(url(), cafile=tls.ca)[0] == 401
    for u in (url(sign_url=True), url(sign_url=True, long_url_signature=True)):
        assert fetch(u, cafile=tls.ca)[::2] == (200, LOGO), u
    status, _, body = fetch(url(sign_url=True, width=20, height=10, crop="fill"), cafile=tls.ca)
    assert (status, png_size(body)) == (200, (20, 10))


def test_clients_that_read_ssl_cert_file_or_requests_ca_bundle(tls, monkeypatch):
    """Plain Python clients trust the CA through the usual variables."""
    monkeypatch.setenv("SSL_CERT_FILE", tls.ca)
    assert fetch(f"{tls.https_base}/health", context=ssl.create_default_context())[0] == 200
    requests = pytest.importorskip("requests")
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", tls.ca)
    assert requests.get(f"{tls.https_base}/health", timeout=30).status_code == 200


# Run in a fresh interpreter: the SDK builds its HTTP pools when its modules are imported.
HTTPS_PREFIX_APP = """
import sys, cloudinary
cloudinary.config(cloud_name="demo", api_key="1234567890", api_secret="abcd", upload_prefix=sys.argv[1])
import cloudinary.api, cloudinary.uploader
try:
    print(cloudinary.uploader.upload(sys.argv[2])["secure_url"])
    print("api:", cloudinary.api.ping()["status"])
except Exception as e:
    print("FAILED", e)
    sys.exit(1)
"""


def _run_sdk_app(tls, env_extra, prelude=""):
    env = {k: v for k, v in os.environ.items() if k not in ("CLOUDINARY_URL", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", prelude + HTTPS_PREFIX_APP, tls.https_base, str(ASSETS / "logo.png")],
                          env=env, capture_output=True, text=True, timeout=60)


def test_sdk_with_https_upload_prefix_verifies_against_certifi_only(tls):
    r = _run_sdk_app(tls, {"SSL_CERT_FILE": tls.ca, "REQUESTS_CA_BUNDLE": tls.ca})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in r.stdout


def test_sdk_with_https_upload_prefix_works_when_certifis_bundle_has_the_ca(tls, tmp_path):
    """What `cat ca.pem >> "$(python -m certifi)"` does to a virtualenv, without touching
    this one: certifi.where() is pointed at a copy of its bundle with the CA appended."""
    import certifi
    bundle = tmp_path / "cacert-with-nephos.pem"
    bundle.write_bytes(pathlib.Path(certifi.where()).read_bytes() + b"\n" + pathlib.Path(tls.ca).read_bytes())
    prelude = f"import certifi\ncertifi.where = lambda: {str(bundle)!r}\n"
    r = _run_sdk_app(tls, {}, prelude)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"{tls.https_base}/demo/image/upload/v")
    assert lines[1] == "api: ok"


def test_private_cdn_with_a_single_cloud(start_nephos):
    """private_cdn drops the cloud from the path; nephos serves that only with one cloud."""
    single = start_nephos("--tls", "--account", "cloudinary://1234567890:abcd@demo", config=None)
    host = urlsplit(single.https_base).netloc
    up = cloudinary.uploader.upload(str(ASSETS / "logo.png"), public_id=unique("https/py_private_cdn"),
                                    upload_prefix=single.base)
    assert up["secure_url"].startswith(f"{single.https_base}/demo/image/upload/v")

    def url(**o):
        return cloudinary.utils.cloudinary_url(up["public_id"], secure=True, secure_distribution=host,
                                               private_cdn=True, format="png", **o)[0]

    assert url() == f"{single.https_base}/image/upload/v1/{up['public_id']}.png"
    assert fetch(url(), cafile=single.ca)[::2] == (200, LOGO)
    status, _, body = fetch(url(sign_url=True, width=20, height=10, crop="fill"), cafile=single.ca)
    assert (status, png_size(body)) == (200, (20, 10))


def test_private_cdn_is_not_served_with_two_clouds(tls, host, uploaded):
    u = cloudinary.utils.cloudinary_url(uploaded["public_id"], secure=True, secure_distribution=host,
                                        private_cdn=True, format="png")[0]
    assert u == f"{tls.https_base}/image/upload/v1/{uploaded['public_id']}.png"
    assert fetch(u, cafile=tls.ca)[0] == 404


def test_the_ca_is_made_once_and_kept_across_restarts(start_nephos, tmp_path):
    first = start_nephos("--tls", data=tmp_path)
    ca = pathlib.Path(first.ca).read_bytes()
    first.stop()
    second = start_nephos("--tls", data=tmp_path)
    assert pathlib.Path(second.ca) == tmp_path / "tls" / "ca.pem"
    assert pathlib.Path(second.ca).read_bytes() == ca
    # A client that saved the CA before the restart still trusts the server.
    saved = tmp_path / "ca-before-restart.pem"
    saved.write_bytes(ca)
    assert fetch(f"{second.https_base}/health", cafile=str(saved))[0] == 200
