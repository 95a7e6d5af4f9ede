"""The Python SDK calls its own test suite runs only against mocks: metadata rules, related
assets, publishing, backups by asset ID, explode, download_folder and the refusals of what
nephos does not provide."""
import io
import time
import urllib.error
import urllib.request
import zipfile

import cloudinary
import cloudinary.api
import cloudinary.uploader
import cloudinary.utils
import pytest
from cloudinary import exceptions


def unique(name):
    return f"{name}_{int(time.time() * 1000)}"


def fetch(url):
    with urllib.request.urlopen(url) as r:
        return r.status, r.read()


def test_metadata_rules_lifecycle():
    field = unique("rule_field")
    cloudinary.api.add_metadata_field({"type": "string", "external_id": field, "label": field})
    try:
        rule = cloudinary.api.add_metadata_rule({
            "metadata_field_id": field,
            "name": "when populated",
            "condition": {"metadata_field_id": field, "populated": True},
            "result": {"enable": True},
        })
        assert rule["state"] == "active"
        assert rule["condition"] == {"metadata_field_id": field, "populated": True}
        listed = cloudinary.api.list_metadata_rules()["metadata_rules"]
        assert rule["external_id"] in [r["external_id"] for r in listed]
        updated = cloudinary.api.update_metadata_rule(rule["external_id"], {"name": "renamed", "state": "inactive"})
        assert (updated["name"], updated["state"]) == ("renamed", "inactive")
        assert cloudinary.api.delete_metadata_rule(rule["external_id"]) == {"success": True}
        with pytest.raises(exceptions.NotFound):
            cloudinary.api.delete_metadata_rule(rule["external_id"])
    finally:
        cloudinary.api.delete_metadata_field(field)


def test_clear_invalid_drops_values_fields_no_longer_accept(asset):
    field = unique("ci_field")
    cloudinary.api.add_metadata_field({
        "type": "enum", "external_id": field, "label": field,
        "datasource": {"values": [{"external_id": "x", "value": "X"}, {"external_id": "y", "value": "Y"}]},
    })
    try:
        up = cloudinary.uploader.upload(asset("logo.png"), metadata={field: "x"})
        assert up["metadata"] == {field: "x"}
        cloudinary.api.delete_datasource_entries(field, ["x"])
        cloudinary.api.update(up["public_id"], clear_invalid=True)
        assert "metadata" not in cloudinary.api.resource(up["public_id"])
        with pytest.raises(exceptions.BadRequest):
            cloudinary.uploader.update_metadata({field: "x"}, [up["public_id"]])
    finally:
        cloudinary.api.delete_metadata_field(field)


def test_related_assets_and_publishing(asset):
    a = cloudinary.uploader.upload(asset("logo.png"), public_id=unique("rel_a"))
    b = cloudinary.uploader.upload(asset("logo.png"), public_id=unique("rel_b"))
    res = cloudinary.api.add_related_assets(a["public_id"], [f"image/upload/{b['public_id']}"])
    assert res["success"][0]["asset"] == f"image/upload/{b['public_id']}"
    related = cloudinary.api.resource(b["public_id"], related=True)["related_assets"]
    assert [r["asset_id"] for r in related] == [a["asset_id"]]
    cloudinary.api.delete_related_assets_by_asset_ids(a["asset_id"], [b["asset_id"]])
    assert cloudinary.api.resource(a["public_id"], related=True)["related_assets"] == []
    # An authenticated asset's URL is signed; publishing makes it public. (The Python SDK has no
    # update_access_mode function: the Admin API call is made through its generic client.)
    from cloudinary.api_client.call_api import call_json_api
    call_json_api("post", ["resources", "image", "upload", "update_access_mode"],
                  {"access_mode": "authenticated", "public_ids": [b["public_id"]]})
    assert "/s--" in cloudinary.api.resource(b["public_id"])["secure_url"]
    with pytest.raises(urllib.error.HTTPError):
        fetch(b["secure_url"])
    published = cloudinary.api.publish_by_ids([b["public_id"]])["published"]
    assert published[0]["access_mode"] == "public"
    status, _ = fetch(cloudinary.api.resource(b["public_id"])["secure_url"])
    assert status == 200


def test_backups_by_asset_id(asset):
    up = cloudinary.uploader.upload(asset("logo.png"), public_id=unique("bk"), backup=True)
    cloudinary.api.delete_resources([up["public_id"]])
    restored = cloudinary.api.restore_by_asset_ids([up["asset_id"]])
    assert restored[up["asset_id"]]["bytes"] == up["bytes"]
    cloudinary.api.delete_resources([up["public_id"]])
    gone = cloudinary.api.delete_backed_up_assets(up["asset_id"], [up["version_id"]])
    assert gone["asset_id"] == up["asset_id"]
    assert cloudinary.api.restore_by_asset_ids([up["asset_id"]])[up["asset_id"]] == {"error": "no_backup"}


def test_explode_makes_a_derived_image_per_frame(asset):
    up = cloudinary.uploader.upload(asset("anim.gif"), public_id=unique("anim"))
    res = cloudinary.uploader.explode(up["public_id"], page="all", format="png")
    assert res["status"] == "processing"
    derived = cloudinary.api.resource(up["public_id"])["derived"]
    assert len(derived) == up["pages"] > 1
    status, body = fetch(derived[1]["secure_url"])
    assert status == 200 and body.startswith(b"\x89PNG")


def test_download_folder_is_a_zip_of_the_folder(asset):
    folder = unique("dl")
    for i in range(2):
        cloudinary.uploader.upload(asset("logo.png"), public_id=f"{folder}/img{i}")
    url = cloudinary.utils.download_folder(folder)
    status, body = fetch(url)
    assert status == 200
    names = sorted(zipfile.ZipFile(io.BytesIO(body)).namelist())
    assert names == [f"{folder}/img0.png", f"{folder}/img1.png"]


def test_what_nephos_does_not_provide_is_refused():
    with pytest.raises(exceptions.BadRequest, match="not supported"):
        cloudinary.uploader.create_slideshow(manifest_json={"w": 100})
    with pytest.raises(exceptions.BadRequest, match="not enabled"):
        cloudinary.api.visual_search(text="a dog")
