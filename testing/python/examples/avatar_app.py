"""A stand-in for application code: it only knows the `cloudinary` SDK, not nephos."""
import time

import cloudinary
import cloudinary.api
import cloudinary.uploader
import cloudinary.utils
from cloudinary.exceptions import GeneralError


def save_avatar(user_id, image, retries=1):
    """Uploads a user's avatar (a path, bytes or file object) and returns its delivery URL.
    Retries once when Cloudinary answers a server error."""
    if hasattr(image, "read"):
        image = image.read()  # a stream is used up by the first attempt; bytes can be resent
    for attempt in range(retries + 1):
        try:
            result = cloudinary.uploader.upload(
                image, public_id=f"avatars/{user_id}", overwrite=True,
                tags=["avatar", f"user_{user_id}"])
            return result
        except GeneralError:
            if attempt == retries:
                raise
            time.sleep(0.05)


def avatar_thumbnail_url(user_id):
    """The URL the app puts in <img> tags: a 32x32 crop built by the SDK."""
    url, _ = cloudinary.utils.cloudinary_url(
        f"avatars/{user_id}", format="png", width=32, height=32, crop="fill")
    return url


def list_avatars():
    """Public IDs of every avatar (an Admin API call)."""
    page = cloudinary.api.resources(type="upload", prefix="avatars/", max_results=100)
    return sorted(r["public_id"] for r in page["resources"])
