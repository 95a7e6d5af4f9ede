"""Admin API calls and destroy through the official Python SDK."""
import time
import urllib.error
import urllib.request

import cloudinary
import cloudinary.api
import cloudinary.uploader
import pytest
from cloudinary import exceptions


def status_of(url):
    try:
        with urllib.request.urlopen(url) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_ping():
    assert cloudinary.api.ping()["status"] == "ok"


def test_teardown_pattern_lists_pages_and_deletes_by_tag(asset):
    tag = f"py_t_{int(time.time() * 1000)}"
    prefix = f"{tag}/"
    uploaded = [cloudinary.uploader.upload(asset("logo.png"), public_id=f"{prefix}{i:02d}", tags=[tag, "z", "a"])
                for i in range(12)]
    seen, cursor, pages = [], None, 0
    while True:
        kw = {"type": "upload", "prefix": prefix, "max_results": 5, "tags": True}
        if cursor:
            kw["next_cursor"] = cursor
        page = cloudinary.api.resources(**kw)
        pages += 1
        seen += [r["public_id"] for r in page["resources"]]
        assert all(r["tags"] == sorted([tag, "z", "a"]) for r in page["resources"])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert pages == 3 and sorted(seen) == sorted(u["public_id"] for u in uploaded)
    by_tag = cloudinary.api.resources_by_tag(tag, max_results=500)
    assert len(by_tag["resources"]) == 12
    result = cloudinary.api.delete_resources_by_tag(tag)
    assert sorted(result["deleted"]) == sorted(seen)
    assert set(result["deleted"].values()) == {"deleted"}
    assert result["partial"] is False
    assert cloudinary.api.resources(type="upload", prefix=prefix)["resources"] == []
    assert all(status_of(u["secure_url"]) == 404 for u in uploaded)


def test_resource_and_missing_resource(asset):
    pid = f"py_res/{int(time.time() * 1000)}"
    up = cloudinary.uploader.upload(asset("logo.png"), public_id=pid, tags=["b", "a"], context={"alt": "x"})
    r = cloudinary.api.resource(pid)
    assert (r["public_id"], r["asset_id"], r["version"]) == (pid, up["asset_id"], up["version"])
    assert (r["width"], r["height"], r["format"], r["bytes"]) == (64, 32, "png", up["bytes"])
    assert r["tags"] == ["a", "b"]
    assert r["context"] == {"custom": {"alt": "x"}}
    assert r["secure_url"] == up["secure_url"]
    plain = cloudinary.uploader.upload(asset("logo.png"))
    assert "tags" not in cloudinary.api.resource(plain["public_id"])
    with pytest.raises(exceptions.NotFound, match="Resource not found"):
        cloudinary.api.resource("no/such/asset")


def test_destroy_and_delete_resources(asset):
    a = cloudinary.uploader.upload(asset("logo.png"))
    assert cloudinary.uploader.destroy(a["public_id"])["result"] == "ok"
    assert status_of(a["secure_url"]) == 404
    assert cloudinary.uploader.destroy(a["public_id"])["result"] == "not found"
    raw = cloudinary.uploader.upload(asset("notes.txt"), resource_type="raw")
    assert cloudinary.uploader.destroy(raw["public_id"], resource_type="raw")["result"] == "ok"
    b = cloudinary.uploader.upload(asset("logo.png"))
    c = cloudinary.uploader.upload(asset("logo.png"))
    result = cloudinary.api.delete_resources([b["public_id"], c["public_id"], "missing_one"])
    assert result["deleted"] == {b["public_id"]: "deleted", c["public_id"]: "deleted", "missing_one": "not_found"}
    assert result["deleted_counts"]["missing_one"] == {"original": 0, "derived": 0}
    prefix = f"py_pref_{int(time.time() * 1000)}"
    for i in range(3):
        cloudinary.uploader.upload(asset("logo.png"), public_id=f"{prefix}/{i}")
    assert len(cloudinary.api.delete_resources_by_prefix(prefix)["deleted"]) == 3


def test_admin_credentials_are_checked():
    with pytest.raises(exceptions.AuthorizationRequired):
        cloudinary.api.ping(api_secret="wrong")
