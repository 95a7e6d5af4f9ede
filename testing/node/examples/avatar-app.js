// A stand-in for application code: it only knows the official `cloudinary` SDK, not nephos.
'use strict';
const cloudinary = require('cloudinary').v2;

function uploadBuffer(buffer, options) {
  return new Promise((resolve, reject) => {
    const stream = cloudinary.uploader.upload_stream(options, (err, res) => (err ? reject(err) : resolve(res)));
    stream.end(buffer);
  });
}

// Uploads a user's avatar; retries once when Cloudinary answers a server error.
async function saveAvatar(userId, png, retries = 1) {
  const options = { public_id: `avatars/${userId}`, overwrite: true, tags: ['avatar', `user_${userId}`] };
  for (let attempt = 0; ; attempt += 1) {
    try {
      return await uploadBuffer(png, options);
    } catch (err) {
      if (attempt >= retries || !(err.http_code >= 500)) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

// The URL the app puts in <img> tags: a 32x32 crop. cloudinary.url() ignores `secure` from the
// configuration, so the call says secure: false (nephos and the app's CDN cname are plain http).
function avatarThumbnailUrl(userId) {
  return cloudinary.url(`avatars/${userId}`, {
    format: 'png', width: 32, height: 32, crop: 'fill', secure: false, analytics: false,
  });
}

// Public IDs of every avatar (an Admin API call).
async function listAvatars() {
  const page = await cloudinary.api.resources({ type: 'upload', prefix: 'avatars/', max_results: 100 });
  return page.resources.map((r) => r.public_id).sort();
}

module.exports = { saveAvatar, avatarThumbnailUrl, listAvatars };
