"""How an application's tests use nephos: each test gets its own cloud (`nephos_cloud`), the
app's code runs unchanged against the official `cloudinary` SDK, and the control API shows
what the app sent and injects failures."""
import io
import struct
import urllib.request
import zlib

import cloudinary
import cloudinary.api
import cloudinary.exceptions
import cloudinary.uploader
import pytest

import avatar_app


def png(width, height, rgb=(200, 40, 40)):
    """A solid-colour PNG, made here so that the example needs no files."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def fetch(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


def test_upload_and_delivery(nephos, nephos_cloud):
    result = avatar_app.save_avatar("alice", io.BytesIO(png(40, 20)))
    assert (result["public_id"], result["width"], result["height"]) == ("avatars/alice", 40, 20)
    assert result["secure_url"].startswith(f"{nephos.base_url}/{nephos_cloud.cloud_name}/")

    status, ctype, body = fetch(result["secure_url"])
    assert (status, ctype, body[:8]) == (200, "image/png", b"\x89PNG\r\n\x1a\n")

    # URLs the SDK builds (cname from the fixture) are served by nephos, transformed.
    thumb = avatar_app.avatar_thumbnail_url("alice")
    assert thumb.startswith(f"{nephos.base_url}/{nephos_cloud.cloud_name}/image/upload/c_fill,h_32,w_32/")
    status, ctype, body = fetch(thumb)
    assert (status, ctype) == (200, "image/png")
    assert struct.unpack(">II", body[16:24]) == (32, 32)

    assert avatar_app.list_avatars() == ["avatars/alice"]


# The next two tests upload the same public ID into their own clouds: neither sees the other's.
@pytest.mark.parametrize("user", ["bob", "carol"])
def test_each_test_starts_with_an_empty_cloud(nephos_cloud, user):
    assert avatar_app.list_avatars() == []
    avatar_app.save_avatar(user, io.BytesIO(png(8, 8)))
    assert avatar_app.list_avatars() == [f"avatars/{user}"]
    assert cloudinary.config().cloud_name == nephos_cloud.cloud_name


def test_clouds_are_isolated(nephos, nephos_cloud):
    other = nephos.create_cloud()
    try:
        cloudinary.uploader.upload(io.BytesIO(png(4, 4)), public_id="only-in-other",
                                   cloud_name=other.cloud_name, api_key=other.api_key,
                                   api_secret=other.api_secret)
        mine = cloudinary.api.resources()["resources"]
        theirs = cloudinary.api.resources(cloud_name=other.cloud_name, api_key=other.api_key,
                                          api_secret=other.api_secret)["resources"]
        assert [r["public_id"] for r in theirs] == ["only-in-other"]
        assert mine == []
        # Another cloud's credentials are refused for this one.
        with pytest.raises(cloudinary.exceptions.AuthorizationRequired):
            cloudinary.api.resources(api_key=other.api_key, api_secret=other.api_secret)
    finally:
        nephos.delete_cloud(other)


def test_assert_what_the_app_sent(nephos_cloud):
    avatar_app.save_avatar("dave", io.BytesIO(png(8, 8)))

    sent = nephos_cloud.requests(method="POST")
    assert [(r["path"], r["status"]) for r in sent] == [
        (f"/v1_1/{nephos_cloud.cloud_name}/image/upload", 200)]
    params = sent[0]["params"]
    assert params["public_id"] == "avatars/dave"
    assert params["tags"] == "avatar,user_dave"
    assert params["overwrite"] in ("1", "true")
    assert params["signature"] == "***"  # secrets are masked in the record
    assert params["api_key"] == nephos_cloud.api_key


def test_rate_limited_admin_api(nephos_cloud):
    fault = nephos_cloud.add_fault(preset="rate_limit", path="/v1_1/*/resources*")
    assert fault["status"] == 420

    with pytest.raises(cloudinary.exceptions.RateLimited):
        avatar_app.list_avatars()
    # Uploads are not matched by the rule's path and still work.
    avatar_app.save_avatar("erin", io.BytesIO(png(8, 8)))

    assert [r["status"] for r in nephos_cloud.requests(path_prefix=f"/v1_1/{nephos_cloud.cloud_name}/resources")] == [420]


def test_app_retries_one_server_error(nephos_cloud):
    nephos_cloud.add_fault(method="POST", path="*/image/upload", status=500,
                           message="try again", times=1)

    result = avatar_app.save_avatar("frank", io.BytesIO(png(8, 8)))

    assert result["public_id"] == "avatars/frank"
    assert [r["status"] for r in nephos_cloud.requests(method="POST")] == [500, 200]


def test_a_fault_the_app_does_not_survive(nephos_cloud):
    nephos_cloud.add_fault(method="POST", path="*/image/upload", status=500, message="down")
    with pytest.raises(cloudinary.exceptions.GeneralError, match="down"):
        avatar_app.save_avatar("gina", io.BytesIO(png(8, 8)))
    assert [r["status"] for r in nephos_cloud.requests(method="POST")] == [500, 500]
