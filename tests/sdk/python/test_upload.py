"""The official Python SDK (cloudinary 1.46.x) against a running nephos."""
import hashlib
import http.server
import io
import re
import threading
import time
import urllib.error
import urllib.request

import cloudinary
import cloudinary.api
import cloudinary.uploader
import cloudinary.utils
import pytest
from cloudinary import exceptions


def fetch(url):
    with urllib.request.urlopen(url) as r:
        return r.read()


def read(path):
    with open(path, "rb") as fh:
        return fh.read()


def md5(data):
    return hashlib.md5(data).hexdigest()


def unique(prefix):
    return f"{prefix}_{int(time.time() * 1000) % 10_000_000}_{id(object()) % 10_000}"


def test_upload_path_verifies_and_downloads(asset):
    data = read(asset("logo.png"))
    pid = unique("py/path")
    r = cloudinary.uploader.upload(asset("logo.png"), public_id=pid)
    assert r["public_id"] == pid
    assert (r["width"], r["height"], r["format"], r["resource_type"]) == (64, 32, "png", "image")
    assert r["bytes"] == len(data) and r["etag"] == md5(data)
    assert r["original_filename"] == "logo"
    assert r["request_id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["created_at"])
    assert cloudinary.utils.verify_api_response_signature(r["public_id"], r["version"], r["signature"])
    assert not cloudinary.utils.verify_api_response_signature(r["public_id"], r["version"] + 1, r["signature"])
    assert fetch(r["secure_url"]) == data
    assert fetch(r["url"]) == data


def test_upload_bytes_stream_and_open_file(asset):
    data = read(asset("logo.png"))
    r = cloudinary.uploader.upload(data)
    assert r["original_filename"] == "file" and r["width"] == 64
    r = cloudinary.uploader.upload(io.BytesIO(data))
    assert r["original_filename"] == "stream"
    with open(asset("logo.png"), "rb") as fh:
        r = cloudinary.uploader.upload(fh)
    assert r["original_filename"] == "logo"
    assert fetch(r["secure_url"]) == data


def test_upload_data_uri(asset):
    import base64
    data = read(asset("logo.png"))
    r = cloudinary.uploader.upload("data:image/png;base64," + base64.b64encode(data).decode())
    assert r["width"] == 64 and r["etag"] == md5(data)


def test_upload_from_local_http_url(asset):
    directory = str(__import__("pathlib").Path(asset("logo.png")).parent)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=directory, **kw)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/logo.png"
        r = cloudinary.uploader.upload(url, use_filename=True, unique_filename=False, folder=unique("py_remote"))
        assert r["public_id"].endswith("/logo")
        assert r["original_filename"] == "logo"
        assert fetch(r["secure_url"]) == read(asset("logo.png"))
        with pytest.raises(exceptions.NotFound) as e:
            cloudinary.uploader.upload(f"http://127.0.0.1:{httpd.server_address[1]}/missing.png")
        assert str(e.value).startswith("Resource not found - ")
    finally:
        httpd.shutdown()


def test_folder_and_public_id(asset):
    folder = unique("py_folder")
    r = cloudinary.uploader.upload(asset("logo.png"), folder=folder, public_id="inner")
    assert r["public_id"] == f"{folder}/inner"
    assert r["asset_folder"] == folder
    assert r["display_name"] == "inner"
    assert r["url"].endswith(f"/demo/image/upload/v{r['version']}/{folder}/inner.png")


def test_use_filename_and_unique_filename(asset):
    r = cloudinary.uploader.upload(asset("logo.png"), use_filename=True)
    assert re.fullmatch(r"logo_[a-z0-9]{6}", r["public_id"])
    folder = unique("py_uf")
    r = cloudinary.uploader.upload(asset("logo.png"), use_filename=True, unique_filename=False, folder=folder)
    assert r["public_id"] == f"{folder}/logo"
    r = cloudinary.uploader.upload(asset("logo.png"))
    assert re.fullmatch(r"[a-z0-9]{20}", r["public_id"])


def test_overwrite_and_existing(asset):
    pid = unique("py_ow")
    first = cloudinary.uploader.upload(asset("logo.png"), public_id=pid)
    again = cloudinary.uploader.upload(asset("anim.gif"), public_id=pid, overwrite=False)
    assert again["existing"] is True
    assert again["etag"] == first["etag"] and again["version"] == first["version"]
    time.sleep(0.01)
    replaced = cloudinary.uploader.upload(asset("anim.gif"), public_id=pid)
    assert replaced["overwritten"] is True
    assert replaced["asset_id"] == first["asset_id"]
    assert replaced["version"] > first["version"]
    assert replaced["format"] == "gif" and replaced["pages"] == 3
    assert fetch(replaced["secure_url"]) == read(asset("anim.gif"))


def test_tags_and_context_round_trip(asset):
    r = cloudinary.uploader.upload(
        asset("logo.png"),
        tags=["tag1", "tag two"],
        context={"caption": "some caption", "alt": "alternative|alt=a"},
    )
    assert sorted(r["tags"]) == ["tag two", "tag1"]
    assert r["context"] == {"custom": {"caption": "some caption", "alt": "alternative|alt=a"}}


def test_raw_upload_keeps_extension(asset):
    r = cloudinary.uploader.upload(asset("notes.txt"), resource_type="raw", use_filename=True)
    assert re.fullmatch(r"notes_[a-z0-9]{6}\.txt", r["public_id"])
    assert "format" not in r and "width" not in r
    assert fetch(r["secure_url"]) == read(asset("notes.txt"))


def test_video_upload_reads_duration_and_size(asset):
    r = cloudinary.uploader.upload(asset("clip.mp4"), resource_type="video")
    assert r["resource_type"] == "video" and r["format"] == "mp4"
    assert (r["width"], r["height"], r["duration"]) == (640, 360, 3.5)
    assert isinstance(r["bit_rate"], int)
    assert fetch(r["secure_url"]) == read(asset("clip.mp4"))
    r = cloudinary.uploader.upload(asset("clip.webm"), resource_type="video")
    assert (r["format"], r["width"], r["duration"]) == ("webm", 320, 2.25)


def test_auto_detection(asset):
    assert cloudinary.uploader.upload(asset("logo.png"), resource_type="auto")["resource_type"] == "image"
    assert cloudinary.uploader.upload(asset("clip.mp4"), resource_type="auto")["resource_type"] == "video"
    r = cloudinary.uploader.upload(asset("notes.txt"), resource_type="auto")
    assert r["resource_type"] == "raw" and r["public_id"].endswith(".txt")


def test_sha256_signatures(asset):
    cloudinary.config(signature_algorithm="sha256")
    try:
        r = cloudinary.uploader.upload(asset("logo.png"))
        assert len(r["signature"]) == 64
        assert cloudinary.utils.verify_api_response_signature(r["public_id"], r["version"], r["signature"])
    finally:
        cloudinary.config(signature_algorithm="sha1")
    # A second cloud whose account is configured for SHA-256, passed per call.
    r = cloudinary.uploader.upload(
        asset("logo.png"), cloud_name="other", api_key="5555", api_secret="sha256secret",
        signature_algorithm="sha256", public_id="in_other_cloud",
    )
    assert "/other/image/upload/" in r["secure_url"]
    assert fetch(r["secure_url"]) == read(asset("logo.png"))


def test_signature_version_1_with_ampersand(asset):
    # Version 1 does not escape `&`: a key must allow it (`?signature_version=1`) ...
    r = cloudinary.uploader.upload(asset("logo.png"), public_id=unique("a&b"), signature_version=1,
                                   api_key="7777", api_secret="v1secret")
    assert "&" in r["public_id"]
    assert fetch(r["secure_url"]) == read(asset("logo.png"))
    # ... other keys take version 2 only (a `&` in a value would let v1 merge parameters).
    with pytest.raises(exceptions.AuthorizationRequired, match="Invalid Signature"):
        cloudinary.uploader.upload(asset("logo.png"), public_id=unique("a&b"), signature_version=1)
    # Without `&` in a value, both versions sign the same string.
    r = cloudinary.uploader.upload(asset("logo.png"), public_id=unique("plain"), signature_version=1)
    assert fetch(r["secure_url"]) == read(asset("logo.png"))


def test_unsigned_upload_with_preset(asset):
    r = cloudinary.uploader.unsigned_upload(asset("logo.png"), "sdk_unsigned", tags=["mine"])
    assert re.fullmatch(r"unsigned_folder/[a-z0-9]{20}", r["public_id"])
    assert sorted(r["tags"]) == ["mine", "preset_tag"]
    assert fetch(r["secure_url"]) == read(asset("logo.png"))
    with pytest.raises(exceptions.BadRequest, match="whitelisted for unsigned uploads"):
        cloudinary.uploader.unsigned_upload(asset("logo.png"), "sdk_signed_only")


def test_authenticated_asset_with_sdk_signed_url(base, asset):
    pid = unique("py_auth/secret")
    r = cloudinary.uploader.upload(asset("logo.png"), public_id=pid, type="authenticated")
    assert "/image/authenticated/s--" in r["secure_url"]
    assert fetch(r["secure_url"]) == read(asset("logo.png"))
    host = base.split("://", 1)[1]
    url, _ = cloudinary.utils.cloudinary_url(pid, type="authenticated", sign_url=True, format="png",
                                             version=r["version"], cname=host)
    assert fetch(url) == read(asset("logo.png"))
    unsigned, _ = cloudinary.utils.cloudinary_url(pid, type="authenticated", format="png", cname=host)
    with pytest.raises(urllib.error.HTTPError) as e:
        fetch(unsigned)
    assert e.value.code == 401


def test_upload_large_of_a_small_file(asset):
    r = cloudinary.uploader.upload_large(asset("notes.txt"))
    assert r["resource_type"] == "raw"
    assert fetch(r["secure_url"]) == read(asset("notes.txt"))


def test_errors_are_raised_as_sdk_exceptions(asset):
    with pytest.raises(exceptions.AuthorizationRequired, match="Invalid Signature"):
        cloudinary.uploader.upload(asset("logo.png"), api_secret="wrong")
    with pytest.raises(exceptions.BadRequest, match="Empty file"):
        cloudinary.uploader.upload(io.BytesIO(b""))
    with pytest.raises(exceptions.BadRequest, match="Invalid image file"):
        cloudinary.uploader.upload(b"not an image at all")


def _big_files(tmp_path, asset):
    """A 26 MB raw file and a 26 MB MP4 (the sample clip followed by a `free` box)."""
    import struct
    rng = __import__("random").Random(42)
    blob = rng.randbytes(26 * 1000 * 1000 + 17)
    raw = tmp_path / "big.bin"
    raw.write_bytes(blob)
    pad = rng.randbytes(26 * 1000 * 1000)
    video = tmp_path / "big.mp4"
    video.write_bytes(read(asset("clip.mp4")) + struct.pack(">I", len(pad) + 8) + b"free" + pad)
    return raw, video


@pytest.mark.parametrize("resource_type", ["raw", "video"])
def test_upload_large_with_known_total(tmp_path, asset, resource_type):
    raw, video = _big_files(tmp_path, asset)
    path = raw if resource_type == "raw" else video
    data = path.read_bytes()
    r = cloudinary.uploader.upload_large(str(path), chunk_size=5_300_000, resource_type=resource_type,
                                         public_id=unique(f"py_large_{resource_type}"))
    assert r["done"] is True
    assert r["bytes"] == len(data)
    assert r["etag"] == md5(data)
    assert r["resource_type"] == resource_type
    if resource_type == "video":
        assert (r["format"], r["width"], r["duration"]) == ("mp4", 640, 3.5)
    assert fetch(r["secure_url"]) == data


class NotificationHook:
    """A local endpoint that records the notifications POSTed to it."""

    def __init__(self):
        self.received = []
        self.done = threading.Event()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                hook.received.append((body, self.headers["X-Cld-Timestamp"], self.headers["X-Cld-Signature"]))
                self.send_response(200)
                self.end_headers()
                hook.done.set()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cld?x=1"

    def first(self):
        """The first notification (body, timestamp, signature), waiting for it."""
        try:
            assert self.done.wait(10), "no notification arrived"
        finally:
            self.server.shutdown()
        return self.received[0]


def test_notification_url_receives_the_signed_upload_result(asset):
    hook = NotificationHook()
    result = cloudinary.uploader.upload(asset("logo.png"), notification_url=hook.url, tags=["hooked"])
    body, timestamp, signature = hook.first()
    assert cloudinary.utils.verify_notification_signature(body, timestamp, signature)
    assert not cloudinary.utils.verify_notification_signature(body + " ", timestamp, signature)
    import json
    payload = json.loads(body)
    assert payload["notification_type"] == "upload"
    for key in ("public_id", "asset_id", "version", "etag", "secure_url", "tags", "bytes"):
        assert payload[key] == result[key], key


def png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_sdk_built_transformation_urls_load(base, asset):
    up = cloudinary.uploader.upload(asset("logo.png"), public_id=f"py_tr/{int(time.time() * 1000)}")
    pid, host = up["public_id"], base.split("://", 1)[1]
    url, _ = cloudinary.utils.cloudinary_url(pid, width=20, height=20, crop="fill", format="png", cname=host)
    assert png_size(fetch(url)) == (20, 20)
    url = cloudinary.CloudinaryImage(pid).build_url(transformation=[{"width": 32, "crop": "scale"}, {"angle": 90}],
                                                    cname=host)
    assert png_size(fetch(url)) == (16, 32)
    jpg = cloudinary.CloudinaryImage(pid).build_url(width=10, format="jpg", quality="auto", cname=host)
    with urllib.request.urlopen(jpg) as r:
        assert r.headers["Content-Type"] == "image/jpeg" and r.read()[:2] == b"\xff\xd8"
    signed, _ = cloudinary.utils.cloudinary_url(pid, width=8, crop="scale", format="png", sign_url=True, cname=host)
    assert "/s--" in signed and png_size(fetch(signed)) == (8, 4)
    with pytest.raises(urllib.error.HTTPError) as e:
        fetch(cloudinary.CloudinaryImage(pid).build_url(effect="cartoonify", cname=host))
    assert e.value.code == 400 and "e_cartoonify" in e.value.headers["X-Cld-Error"]


def test_eager_transformations_and_async_notification(base, asset):
    host = base.split("://", 1)[1]
    pid = f"py_eager/{int(time.time() * 1000)}"
    r = cloudinary.uploader.upload(asset("logo.png"), public_id=pid,
                                   eager=[{"width": 16, "height": 16, "crop": "fill"}, {"width": 32, "format": "webp"}])
    assert [(e["width"], e["height"], e["format"]) for e in r["eager"]] == [(16, 16, "png"), (32, 16, "webp")]
    built, _ = cloudinary.utils.cloudinary_url(pid, width=16, height=16, crop="fill", format="png",
                                               version=r["version"], cname=host)
    assert r["eager"][0]["url"] == built
    assert len(fetch(r["eager"][1]["secure_url"])) == r["eager"][1]["bytes"]
    assert len(cloudinary.api.resource(pid)["derived"]) == 2

    hook = NotificationHook()
    ex = cloudinary.uploader.explicit(pid, type="upload", eager=[{"width": 8, "crop": "scale"}],
                                      eager_async=True, eager_notification_url=hook.url)
    assert "eager" not in ex
    body, timestamp, signature = hook.first()
    assert cloudinary.utils.verify_notification_signature(body, timestamp, signature)
    import json
    note = json.loads(body)
    assert note["notification_type"] == "eager" and note["public_id"] == pid and note["batch_id"]
    assert [(e["transformation"], e["width"]) for e in note["eager"]] == [("c_scale,w_8", 8)]
    assert len(cloudinary.api.resource(pid)["derived"]) == 3


def test_async_upload_answers_pending_then_notifies(asset):
    hook = NotificationHook()
    pid = f"py_async/{int(time.time() * 1000)}"
    pending = cloudinary.uploader.upload(asset("logo.png"), public_id=pid, notification_url=hook.url,
                                         **{"async": True})
    assert (pending["status"], pending["public_id"], pending["type"]) == ("pending", pid, "upload")
    body, timestamp, signature = hook.first()
    assert cloudinary.utils.verify_notification_signature(body, timestamp, signature)
    import json
    done = json.loads(body)
    assert (done["batch_id"], done["public_id"]) == (pending["batch_id"], pid)
    assert fetch(done["secure_url"]) == read(asset("logo.png"))


def test_private_download_url(asset):
    pid = f"py_dl/{int(time.time() * 1000)}"
    cloudinary.uploader.upload(asset("logo.png"), public_id=pid, type="private")
    url = cloudinary.utils.private_download_url(pid, "png", type="private", attachment=True)
    with urllib.request.urlopen(url) as r:
        assert r.headers["Content-Disposition"] == f'attachment; filename="{pid.rsplit("/", 1)[1]}.png"'
        assert r.read() == read(asset("logo.png"))
    with urllib.request.urlopen(cloudinary.utils.private_download_url(pid, "webp", type="private")) as r:
        assert r.headers["Content-Type"] == "image/webp"
    with pytest.raises(urllib.error.HTTPError) as e:
        fetch(url.replace("attachment=1", "attachment=0"))
    assert e.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as e:
        fetch(cloudinary.utils.private_download_url(pid, "png", type="private", expires_at=int(time.time()) - 10))
    assert e.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as e:
        fetch(cloudinary.utils.private_download_url(pid + "x", "png", type="private"))
    assert e.value.code == 404
