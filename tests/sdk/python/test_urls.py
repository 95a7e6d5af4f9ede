"""Delivery URLs an app builds itself (not the `url` of an upload answer), with the Python SDK
and with django-cloudinary-storage. By default they point at res.cloudinary.com; with `cname`
set to nephos's `host:port` and `secure` left off, the SDK builds
`http://<host:port>/<cloud>/<resource_type>/<type>/…`, which nephos serves: plain, signed and
transformed. (`secure`, `private_cdn` and `cdn_subdomain` must stay off: https would go to
`secure_distribution` or res.cloudinary.com, `private_cdn` drops the cloud from the path and
`cdn_subdomain` prefixes the host with `a1.`…`a5.`.)"""
import importlib
import re
import struct
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import cloudinary
import cloudinary.uploader
import cloudinary.utils
import pytest


def unique(name):
    return f"{name}_{int(time.time() * 1000)}"


def fetch(url):
    """(status, Content-Type, body) of a plain GET, errors included."""
    try:
        with urllib.request.urlopen(url) as r:
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


@pytest.fixture
def restore_config():
    """Puts the SDK's global configuration back as the session set it."""
    saved = dict(cloudinary.config().__dict__)
    yield
    cfg = cloudinary.config()
    cfg.__dict__.clear()
    cfg.__dict__.update(saved)


@pytest.fixture
def host(base):
    return urlsplit(base).netloc


@pytest.fixture
def nephos_urls(host, restore_config):
    """What an app configures once: `cname` = nephos's host:port (the session's CLOUDINARY_URL
    already has the upload_prefix)."""
    cloudinary.config(cname=host)
    return host


def test_cname_in_cloudinary_url(base, host, monkeypatch, restore_config):
    monkeypatch.setenv("CLOUDINARY_URL", f"cloudinary://1234567890:abcd@demo?upload_prefix={base}&cname={host}")
    cloudinary.reset_config()
    assert cloudinary.utils.cloudinary_url("sample.png")[0] == f"{base}/demo/image/upload/sample.png"
    assert cloudinary.CloudinaryImage("f/sample").build_url(width=50, crop="scale") == \
        f"{base}/demo/image/upload/c_scale,w_50/v1/f/sample"
    # Query values are strings: `secure=false` (or `private_cdn=false`) in the URL turns them on.
    monkeypatch.setenv("CLOUDINARY_URL", f"cloudinary://1234567890:abcd@demo?cname={host}&secure=false")
    cloudinary.reset_config()
    assert cloudinary.utils.cloudinary_url("sample.png")[0] == "https://res.cloudinary.com/demo/image/upload/sample.png"


def test_plain_signed_and_transformed_urls_load(base, nephos_urls, asset):
    original = open(asset("logo.png"), "rb").read()
    up = cloudinary.uploader.upload(asset("logo.png"), public_id=unique("urls/logo"))
    pid = up["public_id"]
    # Built with the version of the upload, the URL is the one the upload answered.
    assert cloudinary.utils.cloudinary_url(pid, version=up["version"], format="png")[0] == up["url"]

    plain = cloudinary.utils.cloudinary_url(pid, format="png")[0]
    assert plain == f"{base}/demo/image/upload/v1/{pid}.png"
    for url in (plain, cloudinary.utils.cloudinary_url(pid)[0], cloudinary.CloudinaryImage(pid).build_url(format="png")):
        assert fetch(url) == (200, "image/png", original), url

    signed = cloudinary.utils.cloudinary_url(pid, format="png", sign_url=True)[0]
    assert signed.startswith(f"{base}/demo/image/upload/s--")
    assert fetch(signed) == (200, "image/png", original)

    fill = dict(width=50, height=50, crop="fill")
    transformed = cloudinary.utils.cloudinary_url(pid, format="png", **fill)[0]
    assert transformed == f"{base}/demo/image/upload/c_fill,h_50,w_50/v1/{pid}.png"
    signed_transformed = cloudinary.CloudinaryImage(pid).build_url(format="png", sign_url=True, **fill)
    assert "/s--" in signed_transformed
    for url in (transformed, signed_transformed):
        status, ctype, body = fetch(url)
        assert (status, ctype, png_size(body)) == (200, "image/png", (50, 50)), url

    # Another extension converts.
    status, ctype, body = fetch(cloudinary.utils.cloudinary_url(pid, format="jpg", width=32, crop="scale")[0])
    assert (status, ctype, jpeg_size(body)) == (200, "image/jpeg", (32, 16))


@pytest.mark.parametrize("delivery_type", ["private", "authenticated"])
def test_signed_urls_of_restricted_assets(base, nephos_urls, asset, delivery_type):
    original = open(asset("logo.png"), "rb").read()
    pid = cloudinary.uploader.upload(asset("logo.png"), public_id=unique("urls/restricted"), type=delivery_type)["public_id"]
    url = lambda **o: cloudinary.utils.cloudinary_url(pid, type=delivery_type, format="png", **o)[0]

    assert fetch(url())[0] == 401
    for signed in (url(sign_url=True), url(sign_url=True, long_url_signature=True),
                   url(sign_url=True, signature_algorithm="sha256")):
        assert signed.startswith(f"{base}/demo/image/{delivery_type}/s--")
        assert fetch(signed) == (200, "image/png", original), signed
    status, _, body = fetch(url(sign_url=True, width=50, height=50, crop="fill"))
    assert (status, png_size(body)) == (200, (50, 50))
    # A signature made with another secret, or for another transformation, is refused.
    assert fetch(url(sign_url=True, api_secret="not-the-secret"))[0] == 401
    sig = lambda u: re.search(r"/(s--[^/]+--)/", u).group(1)
    w50, w40 = url(sign_url=True, width=50, crop="scale"), url(sign_url=True, width=40, crop="scale")
    assert fetch(w50.replace(sig(w50), sig(w40)))[0] == 401


# The SDK's other URL forms: shortened (`iu`), root path and SEO suffixes, plain, signed and
# transformed; a suffixed private image too.
@pytest.mark.parametrize("option", [{"shorten": True}, {"use_root_path": True}, {"url_suffix": "friendly-name"}],
                         ids=["shorten_iu", "use_root_path", "url_suffix_seo"])
def test_other_url_forms(nephos_urls, asset, option):
    original = open(asset("logo.png"), "rb").read()
    pid = cloudinary.uploader.upload(asset("logo.png"), public_id=unique("urls/forms"))["public_id"]
    url = cloudinary.utils.cloudinary_url(pid, format="png", **option)[0]
    assert fetch(url) == (200, "image/png", original), url
    for extra in ({"sign_url": True}, {"width": 20, "crop": "scale"}, {"sign_url": True, "width": 20, "crop": "scale"}):
        url = cloudinary.utils.cloudinary_url(pid, format="png", **option, **extra)[0]
        status, ctype, body = fetch(url)
        assert status == 200, (url, ctype)


def test_suffixed_urls_keep_their_signature_checked(nephos_urls, asset):
    pid = cloudinary.uploader.upload(asset("logo.png"), public_id=unique("urls/pform"))["public_id"]
    url = lambda **o: cloudinary.utils.cloudinary_url(pid, format="png", url_suffix="nice", sign_url=True, **o)[0]
    w20, w30 = url(width=20, crop="scale"), url(width=30, crop="scale")
    assert "/images/s--" in w20 and w20.endswith("/nice.png")
    assert fetch(w20)[0] == 200
    sig = lambda u: re.search(r"/(s--[^/]+--)/", u).group(1)
    assert fetch(w20.replace(sig(w20), sig(w30)))[0] == 401


# django-cloudinary-storage 0.3: its app settings call cloudinary.config(secure=SECURE) when
# imported, SECURE defaulting to True, so SECURE must be False; `cname` (and `upload_prefix`)
# come from CLOUDINARY_URL or the Django setting CLOUDINARY (CLOUDINARY_STORAGE reads only
# CLOUD_NAME, API_KEY, API_SECRET and SECURE).

@pytest.fixture
def django_settings(restore_config):
    from django.conf import settings
    if not settings.configured:
        settings.configure(MEDIA_URL="/media/")
    return settings


def storage_round_trip(base, asset):
    from django.core.files.base import ContentFile
    from cloudinary_storage.storage import MediaCloudinaryStorage, RawMediaCloudinaryStorage

    original = open(asset("logo.png"), "rb").read()
    storage = MediaCloudinaryStorage()
    name = storage.save(f"{unique('avatars')}/logo.png", ContentFile(original))
    assert name.startswith("media/avatars_") and "/logo" in name
    assert storage.url(name) == f"{base}/demo/image/upload/v1/{name}"
    assert fetch(storage.url(name)) == (200, "image/png", original)
    assert storage.exists(name) and storage.size(name) == len(original)
    assert storage.open(name).read() == original

    text = open(asset("notes.txt"), "rb").read()
    raw = RawMediaCloudinaryStorage()
    raw_name = raw.save(f"{unique('docs')}/notes.txt", ContentFile(text))
    assert raw_name.endswith(".txt")
    assert raw.url(raw_name) == f"{base}/demo/raw/upload/v1/{raw_name}"
    status, _, body = fetch(raw.url(raw_name))
    assert (status, body) == (200, text)

    assert storage.delete(name) and not storage.exists(name)
    assert raw.delete(raw_name) and not raw.exists(raw_name)


def test_django_storage_with_cloudinary_url(base, host, django_settings, monkeypatch, asset):
    from django.test import override_settings
    monkeypatch.setenv("CLOUDINARY_URL", f"cloudinary://1234567890:abcd@demo?upload_prefix={base}&cname={host}")
    with override_settings(CLOUDINARY_STORAGE={"SECURE": False}):
        cloudinary.reset_config()
        from cloudinary_storage import app_settings
        importlib.reload(app_settings)
        storage_round_trip(base, asset)


def test_django_storage_with_django_settings(base, host, django_settings, monkeypatch, asset):
    from django.test import override_settings
    with override_settings(
        CLOUDINARY_STORAGE={"CLOUD_NAME": "demo", "API_KEY": "1234567890", "API_SECRET": "abcd", "SECURE": False},
        CLOUDINARY={"upload_prefix": base, "cname": host},
    ), monkeypatch.context() as env:
        # As in a Django process without CLOUDINARY_URL: the SDK reads settings.CLOUDINARY when
        # it is imported, then cloudinary_storage applies CLOUDINARY_STORAGE. (The variable is
        # back before the settings are, which reloads cloudinary_storage's settings again.)
        env.delenv("CLOUDINARY_URL")
        cloudinary.reset_config()
        from cloudinary_storage import app_settings
        importlib.reload(app_settings)
        storage_round_trip(base, asset)


def test_layers_effects_and_named_transformations_the_sdk_builds(base, nephos_urls, asset):
    """What apps write with the SDK's options (overlay/underlay dicts, chained transformations
    with `flags="layer_apply"`, effects, angles, named transformations, `fetch_format="auto"`)
    renders: each URL the SDK builds loads, signed ones too."""
    import cloudinary.api
    base_id = unique("urls/base")
    mark = unique("urls/mark")
    cloudinary.uploader.upload(asset("logo.png"), public_id=base_id)
    cloudinary.uploader.upload(asset("logo.png"), public_id=mark)
    name = unique("thumb")
    cloudinary.api.create_transformation(name, {"width": 20, "height": 20, "crop": "fill"})
    layer = mark.replace("/", ":")
    cases = [
        (dict(overlay=layer, width=16, crop="scale", gravity="north_east"), (64, 32)),
        (dict(transformation=[{"overlay": layer}, {"width": 10, "crop": "scale"}, {"effect": "negate"},
                              {"flags": "layer_apply", "gravity": "south_west", "x": 2, "y": 2}]), (64, 32)),
        (dict(underlay=layer, width=64, height=32, crop="pad"), (64, 32)),
        (dict(overlay={"font_family": "Arial", "font_size": 12, "text": "Hi, there"}, gravity="south"), (64, 32)),
        (dict(effect="brightness:30", width=32, crop="scale"), (32, 16)),
        (dict(transformation=[{"effect": "blackwhite"}, {"effect": "vignette:40"}, {"effect": "pixelate:4"}]), (64, 32)),
        (dict(angle="auto_right", width=10, height=40, crop="fit"), (10, 20)),
        (dict(transformation=name), (20, 20)),
        (dict(transformation=[name, {"effect": "sepia"}]), (20, 20)),
        (dict(gravity="faces", width=20, height=20, crop="thumb"), (20, 20)),
    ]
    for options, size in cases:
        for sign in (False, True):
            url = cloudinary.utils.cloudinary_url(base_id, format="png", sign_url=sign, **options)[0]
            status, ctype, body = fetch(url)
            assert status == 200, (url, ctype)
            assert png_size(body) == size, url
    # fetch_format="auto": WebP for a browser that takes it.
    url = cloudinary.utils.cloudinary_url(base_id, fetch_format="auto", width=32, crop="scale")[0]
    assert "f_auto" in url
    req = urllib.request.Request(url, headers={"Accept": "image/webp,*/*"})
    with urllib.request.urlopen(req) as r:
        assert r.headers["Content-Type"] == "image/webp"
        assert "Accept" in r.headers.get("Vary", "")


def webp_kind(body):
    """The first picture chunk of a still WebP: b"VP8 " (lossy) or b"VP8L" (lossless)."""
    assert body[:4] == b"RIFF" and body[8:12] == b"WEBP"
    at = 12
    while at + 8 <= len(body):
        name, size = body[at:at + 4], struct.unpack("<I", body[at + 4:at + 8])[0]
        if name in (b"VP8 ", b"VP8L"):
            return name
        at += 8 + size + (size & 1)
    raise AssertionError("no picture chunk")


def test_f_auto_webp_and_avif_as_browsers_ask(nephos_urls, asset):
    """`fetch_format="auto"` (and `format="webp"`) give a photograph a lossy WebP smaller than
    its JPEG; a PNG stays lossless unless `quality` or `flags="lossy"` ask otherwise; a browser
    that takes AVIF gets AVIF."""
    png_id = cloudinary.uploader.upload(asset("logo.png"), public_id=unique("urls/graphic"))["public_id"]
    # A JPEG source: nephos's own JPEG of the PNG, uploaded again.
    status, _, jpeg_bytes = fetch(cloudinary.utils.cloudinary_url(png_id, format="jpg", width=320,
                                                                  crop="scale")[0])
    assert status == 200
    jpg_id = cloudinary.uploader.upload(jpeg_bytes, public_id=unique("urls/photo"))["public_id"]

    def get(pid, accept="image/webp,*/*", **options):
        url = cloudinary.utils.cloudinary_url(pid, width=160, crop="scale", **options)[0]
        req = urllib.request.Request(url, headers={"Accept": accept})
        with urllib.request.urlopen(req) as r:
            return r.headers["Content-Type"], r.read()

    ctype, auto = get(jpg_id, fetch_format="auto")
    assert ctype == "image/webp" and webp_kind(auto) == b"VP8 "
    ctype, jpeg = get(jpg_id, format="jpg", accept="image/jpeg")
    assert ctype == "image/jpeg" and len(auto) < len(jpeg), (len(auto), len(jpeg))
    assert get(jpg_id, fetch_format="auto", accept="image/jpeg,*/*")[0] == "image/jpeg"
    _, low = get(jpg_id, fetch_format="auto", quality=20)
    assert webp_kind(low) == b"VP8 " and len(low) < len(auto)
    assert webp_kind(get(jpg_id, format="webp")[1]) == b"VP8 "
    assert webp_kind(get(png_id, fetch_format="auto")[1]) == b"VP8L"
    assert webp_kind(get(png_id, fetch_format="auto", quality="auto")[1]) == b"VP8 "
    assert webp_kind(get(png_id, format="webp", flags="lossy")[1]) == b"VP8 "
    # AVIF: for browsers that take it, and as an extension; animations stay animated WebP.
    avif_accept = "image/avif,image/webp,image/apng,*/*;q=0.8"
    ctype, avif = get(jpg_id, fetch_format="auto", accept=avif_accept)
    assert ctype == "image/avif" and avif[4:12] == b"ftypavif"
    ctype, avif = get(png_id, format="avif", accept="*/*")
    assert ctype == "image/avif" and avif[4:12] == b"ftypavif"
    gif_id = cloudinary.uploader.upload(asset("anim.gif"), public_id=unique("urls/anim"))["public_id"]
    ctype, animated = get(gif_id, fetch_format="auto", accept=avif_accept)
    assert ctype == "image/webp" and b"ANMF" in animated


def test_video_posters_and_previews_the_sdk_builds(nephos_urls, asset):
    """`start_offset`, `video_sampling`, `delay` and the SDK's `video_thumbnail`."""
    pid = cloudinary.uploader.upload(asset("tiny_h264.mp4"), resource_type="video",
                                     public_id=unique("urls/clip"))["public_id"]
    url = cloudinary.utils.cloudinary_url(pid, resource_type="video", format="jpg", start_offset=1,
                                          width=80, crop="scale")[0]
    assert "so_1" in url
    status, ctype, body = fetch(url)
    assert (status, ctype, jpeg_size(body)) == (200, "image/jpeg", (80, 45)), url
    thumb = cloudinary.CloudinaryVideo(pid).video_thumbnail(width=64, crop="scale")
    status, ctype, body = fetch(thumb)
    assert (status, ctype, jpeg_size(body)) == (200, "image/jpeg", (64, 36)), thumb
    gif = cloudinary.utils.cloudinary_url(pid, resource_type="video", format="gif", video_sampling=4,
                                          delay=100, width=50, crop="scale", sign_url=True)[0]
    assert "vs_4" in gif and "dl_100" in gif
    status, ctype, body = fetch(gif)
    assert (status, ctype) == (200, "image/gif"), gif
    assert body.count(b"\x21\xf9\x04") == 4


def webp_frames(body):
    """The number of ANMF chunks of an animated WebP (0 for a still one)."""
    assert body[:4] == b"RIFF" and body[8:12] == b"WEBP"
    count, at = 0, 12
    while at + 8 <= len(body):
        name, size = body[at:at + 4], struct.unpack("<I", body[at + 4:at + 8])[0]
        count += name == b"ANMF"
        at += 8 + size + (size & 1)
    return count


def test_animations_and_pages_the_sdk_builds(nephos_urls, asset):
    """An animated GIF as animated WebP (`fetch_format`, `flags="awebp"`), its frames by `page`,
    and a video's animated WebP preview."""
    pid = cloudinary.uploader.upload(asset("anim.gif"), public_id=unique("urls/anim"))["public_id"]
    gif_frames = fetch(cloudinary.utils.cloudinary_url(pid, format="gif")[0])[2].count(b"\x21\xf9\x04")
    assert gif_frames > 1
    url = cloudinary.utils.cloudinary_url(pid, width=6, crop="scale", fetch_format="webp",
                                          flags="awebp", sign_url=True)[0]
    assert "f_webp" in url and "fl_awebp" in url
    status, ctype, body = fetch(url)
    assert (status, ctype) == (200, "image/webp"), url
    assert webp_frames(body) == gif_frames
    page = cloudinary.utils.cloudinary_url(pid, page=2, format="png")[0]
    assert "pg_2" in page
    status, ctype, body = fetch(page)
    assert (status, ctype, png_size(body)) == (200, "image/png", (8, 8)), page
    clip = cloudinary.uploader.upload(asset("tiny_h264.mp4"), resource_type="video",
                                      public_id=unique("urls/clip"))["public_id"]
    preview = cloudinary.utils.cloudinary_url(clip, resource_type="video", format="webp",
                                              flags="animated", video_sampling=3, width=40,
                                              crop="scale")[0]
    status, ctype, body = fetch(preview)
    assert (status, ctype, webp_frames(body)) == (200, "image/webp", 3), preview
    poster = cloudinary.utils.cloudinary_url(clip, resource_type="video", format="webp", width=40,
                                             crop="scale")[0]
    status, ctype, body = fetch(poster)
    assert (status, ctype, webp_frames(body)) == (200, "image/webp", 0), poster
