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
    assert r["derived"] == []
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


def test_rename(asset):
    base = f"py_ren_{int(time.time() * 1000)}"
    a = cloudinary.uploader.upload(asset("logo.png"), public_id=f"{base}/a", tags=["keep"])
    r = cloudinary.uploader.rename(f"{base}/a", f"{base}/b")
    assert (r["public_id"], r["asset_id"]) == (f"{base}/b", a["asset_id"])
    assert status_of(r["secure_url"]) == 200
    assert status_of(a["secure_url"]) == 404
    with pytest.raises(exceptions.NotFound):
        cloudinary.uploader.rename(f"{base}/a", f"{base}/c")
    cloudinary.uploader.upload(asset("logo.png"), public_id=f"{base}/c")
    with pytest.raises(exceptions.BadRequest, match="already exists"):
        cloudinary.uploader.rename(f"{base}/b", f"{base}/c")
    r = cloudinary.uploader.rename(f"{base}/b", f"{base}/c", overwrite=True)
    assert r["asset_id"] == a["asset_id"]
    assert cloudinary.api.resource(f"{base}/c")["tags"] == ["keep"]
    r = cloudinary.uploader.rename(f"{base}/c", f"{base}/c", to_type="private")
    assert r["type"] == "private" and "/image/private/s--" in r["secure_url"]


def test_tags_context_and_explicit(asset):
    a = cloudinary.uploader.upload(asset("logo.png"), tags=["one"])
    b = cloudinary.uploader.upload(asset("logo.png"))
    ids = [a["public_id"], b["public_id"]]
    res = cloudinary.uploader.add_tag("two", ids + ["noSuchId"])
    assert sorted(res["public_ids"]) == sorted(ids)
    assert cloudinary.api.resource(a["public_id"])["tags"] == ["one", "two"]
    cloudinary.uploader.remove_tag("one", [a["public_id"]])
    assert cloudinary.api.resource(a["public_id"])["tags"] == ["two"]
    cloudinary.uploader.replace_tag("three", [a["public_id"]])
    assert cloudinary.api.resource(a["public_id"])["tags"] == ["three"]
    excl = f"excl_{int(time.time() * 1000)}"
    cloudinary.uploader.add_tag(excl, ids)
    cloudinary.uploader.add_tag(excl, [b["public_id"]], exclusive=True)
    assert excl not in cloudinary.api.resource(a["public_id"]).get("tags", [])
    assert excl in cloudinary.api.resource(b["public_id"])["tags"]
    cloudinary.uploader.remove_all_tags([a["public_id"]])
    assert "tags" not in cloudinary.api.resource(a["public_id"])
    cloudinary.uploader.add_context({"alt": "x=y", "caption": "c"}, [a["public_id"]])
    cloudinary.uploader.add_context({"caption": ""}, [a["public_id"]])
    assert cloudinary.api.resource(a["public_id"])["context"] == {"custom": {"alt": "x=y"}}
    cloudinary.uploader.remove_all_context([a["public_id"]])
    assert "context" not in cloudinary.api.resource(a["public_id"])
    r = cloudinary.uploader.explicit(a["public_id"], type="upload", tags=["ex1", "ex2"], context={"k": "v"})
    assert sorted(r["tags"]) == ["ex1", "ex2"] and r["context"] == {"custom": {"k": "v"}}
    with pytest.raises(exceptions.NotFound, match="^Resource not found"):
        cloudinary.uploader.explicit("missing_for_explicit", type="upload")


def test_update_tags_listing_and_usage(asset):
    a = cloudinary.uploader.upload(asset("logo.png"))
    tag = f"upd_{int(time.time() * 1000)}"
    r = cloudinary.api.update(a["public_id"], tags=f"{tag},b", context="alt=upd", display_name="Nice")
    assert r["tags"] == sorted([tag, "b"]) and r["context"] == {"custom": {"alt": "upd"}}
    assert r["display_name"] == "Nice"
    assert tag in cloudinary.api.tags(prefix="upd_", max_results=500)["tags"]
    assert cloudinary.api.tags(prefix="zzz_none")["tags"] == []
    usage = cloudinary.api.usage()
    assert usage["resources"] >= 1 and usage["storage"]["usage"] > 0
    with pytest.raises(exceptions.BadRequest, match="Illegal value"):
        cloudinary.api.update(a["public_id"], auto_tagging=0.5)


def test_upload_presets_through_the_admin_api(asset):
    name = f"py_preset_{int(time.time() * 1000)}"
    created = cloudinary.api.create_upload_preset(name=name, unsigned=True, folder="from_api", tags="p1,p2")
    assert created["message"] == "created" and created["name"] == name
    got = cloudinary.api.upload_preset(name)
    assert got["unsigned"] is True
    assert got["settings"]["folder"] == "from_api" and got["settings"]["tags"] == ["p1", "p2"]
    assert name in [p["name"] for p in cloudinary.api.upload_presets()["presets"]]
    up = cloudinary.uploader.unsigned_upload(asset("logo.png"), name)
    assert up["public_id"].startswith("from_api/") and sorted(up["tags"]) == ["p1", "p2"]
    with pytest.raises(exceptions.AlreadyExists):
        cloudinary.api.create_upload_preset(name=name)
    cloudinary.api.update_upload_preset(name, unsigned=False)
    with pytest.raises(exceptions.BadRequest, match="whitelisted for unsigned uploads"):
        cloudinary.uploader.unsigned_upload(asset("logo.png"), name)
    assert cloudinary.api.delete_upload_preset(name)["message"] == "deleted"
    with pytest.raises(exceptions.NotFound):
        cloudinary.api.upload_preset(name)


def test_folders(asset):
    root = f"pyf_{int(time.time() * 1000)}"
    created = cloudinary.api.create_folder(f"{root}/empty")
    assert created["success"] is True and created["path"] == f"{root}/empty" and created["name"] == "empty"
    cloudinary.uploader.upload(asset("logo.png"), asset_folder=f"{root}/full")
    assert root in [f["name"] for f in cloudinary.api.root_folders()["folders"]]
    subs = cloudinary.api.subfolders(root)
    assert [f["path"] for f in subs["folders"]] == [f"{root}/empty", f"{root}/full"]
    with pytest.raises(exceptions.NotFound, match="Can't find folder with path"):
        cloudinary.api.subfolders(f"{root}/nope")
    with pytest.raises(exceptions.BadRequest, match="not empty"):
        cloudinary.api.delete_folder(f"{root}/full")
    assert cloudinary.api.delete_folder(f"{root}/empty")["deleted"] == [f"{root}/empty"]
    with pytest.raises(exceptions.AlreadyExists):
        cloudinary.api.create_folder(f"{root}/full")


def test_resources_by_context_and_resource_types(asset):
    marker = f"ctx{int(time.time() * 1000)}"
    a = cloudinary.uploader.upload(asset("logo.png"), context={marker: "yes"})
    cloudinary.uploader.upload(asset("logo.png"), context={marker: "no"})
    both = cloudinary.api.resources_by_context(marker)
    assert len(both["resources"]) == 2
    only = cloudinary.api.resources_by_context(marker, "yes")
    assert [r["public_id"] for r in only["resources"]] == [a["public_id"]]
    assert only["resources"][0]["context"] == {"custom": {marker: "yes"}}
    assert "image" in cloudinary.api.resource_types()["resource_types"]


def test_listing_options(asset):
    base = f"pyl_{int(time.time() * 1000)}"
    ups = [cloudinary.uploader.upload(asset("logo.png"), public_id=f"{base}/{i}", context={"n": str(i)}) for i in range(3)]
    ids = [u["public_id"] for u in ups]
    by_ids = cloudinary.api.resources_by_ids(ids, context=True)
    assert sorted(r["public_id"] for r in by_ids["resources"]) == sorted(ids)
    assert all("context" in r for r in by_ids["resources"])
    plain = cloudinary.api.resources(type="upload", prefix=base)
    assert all("context" not in r and "tags" not in r for r in plain["resources"])
    asc = cloudinary.api.resources(type="upload", prefix=base, direction="asc")["resources"]
    desc = cloudinary.api.resources(type="upload", prefix=base, direction="desc")["resources"]
    assert [r["public_id"] for r in asc] == list(reversed([r["public_id"] for r in desc]))
    later = cloudinary.api.resources(type="upload", prefix=base, start_at="2100-01-01T00:00:00Z")
    assert later["resources"] == []
    assert cloudinary.api.resources(type="upload", prefix=base, start_at="2100-01-01 00:00:00")["resources"] == []
    earlier = cloudinary.api.resources(type="upload", prefix=base, start_at="2000-01-01T00:00:00Z")
    assert len(earlier["resources"]) == 3
    raw = cloudinary.uploader.upload(asset("notes.txt"), resource_type="raw")
    gone = cloudinary.api.delete_all_resources(resource_type="raw")
    assert gone["deleted"][raw["public_id"]] == "deleted"
    assert cloudinary.api.resources(resource_type="raw")["resources"] == []


def test_return_delete_token_and_delete_by_token(base, asset):
    import json
    up = cloudinary.uploader.upload(asset("logo.png"), return_delete_token=True)
    token = up["delete_token"]
    req = urllib.request.Request(f"{base}/v1_1/demo/delete_by_token", data=json.dumps({"token": token}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req) as r:
        assert json.loads(r.read())["result"] == "ok"
    assert status_of(up["secure_url"]) == 404


def test_search_expressions_sorting_paging_and_fields(asset):
    run = f"pys{int(time.time() * 1000)}"
    ups = [cloudinary.uploader.upload(asset(name), public_id=f"{run}/{i}", asset_folder=f"{run}/f{i % 2}",
                                      tags=[run, f"k{i}"], context={"alt": f"shot {i}"}, resource_type=rt)
           for i, (name, rt) in enumerate([("logo.png", "image"), ("anim.gif", "image"),
                                           ("logo.png", "image"), ("notes.txt", "raw")])]
    everything = cloudinary.Search().expression(f"tags={run}").sort_by("public_id", "asc").execute()
    assert everything["total_count"] == 4
    assert [r["public_id"] for r in everything["resources"]] == [u["public_id"] for u in ups]
    first = everything["resources"][0]
    assert (first["asset_id"], first["folder"], first["filename"]) == (ups[0]["asset_id"], f"{run}/f0", "0")
    assert first["secure_url"] == ups[0]["secure_url"] and first["status"] == "active"
    assert "tags" not in first

    images = cloudinary.Search().expression(f"tags={run} AND resource_type:image AND format:png").execute()
    assert sorted(r["public_id"] for r in images["resources"]) == [f"{run}/0", f"{run}/2"]
    folder = cloudinary.Search().expression(f"folder:{run}/f1 AND -format:gif").execute()
    assert [r["public_id"] for r in folder["resources"]] == [f"{run}/3"]
    below = cloudinary.Search().expression(f"folder:{run}/*").execute()
    assert below["total_count"] == 4
    either = cloudinary.Search().expression(f"(tags=k0 OR tags=k3) AND tags={run}").execute()
    assert sorted(r["public_id"] for r in either["resources"]) == [f"{run}/0", f"{run}/3"]
    recent = cloudinary.Search().expression(f"tags={run} AND created_at>1h AND bytes>10").execute()
    assert recent["total_count"] == 4
    assert cloudinary.Search().expression(f"tags={run} AND created_at<1h").execute()["total_count"] == 0

    pages, cursor = [], None
    while True:
        s = cloudinary.Search().expression(f"tags={run}").sort_by("public_id", "desc").max_results(3)
        if cursor:
            s = s.next_cursor(cursor)
        page = s.with_field("tags").with_field("context").execute()
        pages.append([r["public_id"] for r in page["resources"]])
        assert all(r["tags"] == sorted([run, f"k{r['public_id'][-1]}"]) for r in page["resources"])
        assert all(r["context"] == {"alt": f"shot {r['public_id'][-1]}"} for r in page["resources"])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert pages == [[f"{run}/3", f"{run}/2", f"{run}/1"], [f"{run}/0"]]
    counts = cloudinary.Search().expression(f"tags={run}").aggregate("format").execute()["aggregations"]
    assert counts["format"] == {"png": 2, "gif": 1}

    with pytest.raises(exceptions.BadRequest):
        cloudinary.Search().expression("tags:(unclosed").execute()
    with pytest.raises(exceptions.BadRequest):
        cloudinary.Search().expression("nosuchfield:1").execute()


def test_lookups_by_asset_id_and_asset_folder(asset):
    run = f"pya{int(time.time() * 1000)}"
    ups = [cloudinary.uploader.upload(asset("logo.png"), public_id=f"{run}_{i}", asset_folder=f"{run}/box", tags=["x"])
           for i in range(3)]
    one = cloudinary.api.resource_by_asset_id(ups[1]["asset_id"])
    assert (one["public_id"], one["tags"], one["derived"]) == (ups[1]["public_id"], ["x"], [])
    with pytest.raises(exceptions.NotFound):
        cloudinary.api.resource_by_asset_id("0" * 32)
    some = cloudinary.api.resources_by_asset_ids([ups[0]["asset_id"], ups[2]["asset_id"]], tags=True)
    assert sorted(r["public_id"] for r in some["resources"]) == [ups[0]["public_id"], ups[2]["public_id"]]
    assert all(r["tags"] == ["x"] for r in some["resources"])
    page = cloudinary.api.resources_by_asset_folder(f"{run}/box", max_results=2)
    rest = cloudinary.api.resources_by_asset_folder(f"{run}/box", max_results=2, next_cursor=page["next_cursor"])
    assert "next_cursor" not in rest
    listed = [r["public_id"] for r in page["resources"] + rest["resources"]]
    assert len(page["resources"]) == 2 and sorted(listed) == sorted(u["public_id"] for u in ups)


def test_rename_and_search_folders(asset):
    run = f"pyf{int(time.time() * 1000)}"
    cloudinary.api.create_folder(f"{run}/a/b")
    up = cloudinary.uploader.upload(asset("logo.png"), asset_folder=f"{run}/a/b")
    found = cloudinary.SearchFolders().expression(f"path:{run}/*").execute()
    assert [f["path"] for f in found["folders"]] == [run, f"{run}/a", f"{run}/a/b"]
    assert found["total_count"] == 3
    by_name = cloudinary.SearchFolders().expression(f"name:b AND path:{run}/*").execute()
    assert [f["path"] for f in by_name["folders"]] == [f"{run}/a/b"]

    moved = cloudinary.api.rename_folder(f"{run}/a", f"{run}/z")
    assert moved == {"from": {"name": "a", "path": f"{run}/a"}, "to": {"name": "z", "path": f"{run}/z"}}
    assert [f["path"] for f in cloudinary.api.subfolders(f"{run}/z")["folders"]] == [f"{run}/z/b"]
    again = cloudinary.api.resource(up["public_id"])
    assert again["asset_folder"] == f"{run}/z/b" and again["secure_url"] == up["secure_url"]
    assert status_of(up["secure_url"]) == 200
    with pytest.raises(exceptions.NotFound):
        cloudinary.api.rename_folder(f"{run}/a", f"{run}/q")
    cloudinary.api.create_folder(f"{run}/taken")
    with pytest.raises(exceptions.AlreadyExists):
        cloudinary.api.rename_folder(f"{run}/z", f"{run}/taken")


def test_delete_by_asset_ids_and_keep_original(asset):
    run = f"pyd{int(time.time() * 1000)}"
    ups = [cloudinary.uploader.upload(asset("logo.png"), public_id=f"{run}/{i}") for i in range(3)]
    kept = cloudinary.api.delete_resources([ups[0]["public_id"]], keep_original=True)
    assert kept["deleted"] == {ups[0]["public_id"]: "deleted"}
    assert kept["deleted_counts"][ups[0]["public_id"]] == {"original": 0, "derived": 0}
    assert status_of(ups[0]["secure_url"]) == 200
    result = cloudinary.api.delete_resources_by_asset_ids([ups[1]["asset_id"], ups[2]["asset_id"], "f" * 32])
    assert result["deleted"] == {ups[1]["asset_id"]: "deleted", ups[2]["asset_id"]: "deleted", "f" * 32: "not_found"}
    assert result["partial"] is False
    assert [status_of(u["secure_url"]) for u in ups] == [200, 404, 404]
