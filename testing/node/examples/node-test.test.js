// How an application's node:test suite uses nephos: one nephos for the file, a fresh cloud
// per test, the app's code unchanged on the official `cloudinary` SDK, and the control API to
// see what the app sent and to inject failures. Run: node --test examples/*.test.js
'use strict';
const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { startNephos, configureCloudinary } = require('../nephos');
const { png, pngSize } = require('./png');

let nephos;
let cloudinary;
let app;
let cloud;
let restoreConfig;

before(async () => {
  nephos = await startNephos();
  // The Node SDK picks http or https when it is first required, from CLOUDINARY_URL's
  // upload_prefix: nephos's URL (http) must be there before the SDK, or the app that requires
  // it, is loaded. Hence the requires here, not at the top of the file.
  process.env.CLOUDINARY_URL = nephos.cloudinaryUrl;
  cloudinary = require('cloudinary').v2;
  app = require('./avatar-app');
});

after(async () => {
  if (nephos) await nephos.stop();
});

beforeEach(async () => {
  cloud = await nephos.createCloud();
  restoreConfig = configureCloudinary(cloudinary, cloud);
});

afterEach(async () => {
  if (restoreConfig) restoreConfig();
  if (cloud) await nephos.deleteCloud(cloud); // also removes the fault rules limited to it
  cloud = undefined;
  restoreConfig = undefined;
});

test('upload, then fetch the original and a transformed URL from nephos', async () => {
  const result = await app.saveAvatar('alice', png(40, 20));
  assert.deepEqual([result.public_id, result.width, result.height], ['avatars/alice', 40, 20]);
  assert.ok(result.secure_url.startsWith(`${nephos.baseUrl}/${cloud.cloud_name}/`));

  const original = await fetch(result.secure_url);
  assert.equal(original.status, 200);
  assert.equal(original.headers.get('content-type'), 'image/png');

  const thumb = app.avatarThumbnailUrl('alice');
  assert.ok(thumb.startsWith(`${nephos.baseUrl}/${cloud.cloud_name}/image/upload/c_fill,h_32,w_32/`), thumb);
  const res = await fetch(thumb);
  assert.equal(res.status, 200);
  assert.deepEqual(pngSize(Buffer.from(await res.arrayBuffer())), [32, 32]);

  assert.deepEqual(await app.listAvatars(), ['avatars/alice']);
});

// These two upload into their own clouds: neither sees the other's avatar.
for (const user of ['bob', 'carol']) {
  test(`each test starts with an empty cloud (${user})`, async () => {
    assert.deepEqual(await app.listAvatars(), []);
    await app.saveAvatar(user, png(8, 8));
    assert.deepEqual(await app.listAvatars(), [`avatars/${user}`]);
    assert.equal(cloudinary.config().cloud_name, cloud.cloud_name);
  });
}

test('clouds are isolated', async () => {
  const other = await nephos.createCloud();
  try {
    const creds = { cloud_name: other.cloud_name, api_key: other.api_key, api_secret: other.api_secret };
    await cloudinary.uploader.upload(`data:image/png;base64,${png(4, 4).toString('base64')}`,
      { public_id: 'only-in-other', ...creds });
    const theirs = await cloudinary.api.resources(creds);
    assert.deepEqual(theirs.resources.map((r) => r.public_id), ['only-in-other']);
    assert.deepEqual((await cloudinary.api.resources()).resources, []);
    // Another cloud's credentials are refused for this one.
    await assert.rejects(cloudinary.api.resources({ api_key: other.api_key, api_secret: other.api_secret }),
      (err) => err.error.http_code === 401);
  } finally {
    await nephos.deleteCloud(other);
  }
});

test('assert what the app sent', async () => {
  await app.saveAvatar('dave', png(8, 8));

  const sent = await nephos.requests({ cloud, method: 'POST' });
  assert.deepEqual(sent.map((r) => [r.path, r.status]), [[`/v1_1/${cloud.cloud_name}/image/upload`, 200]]);
  const { params } = sent[0];
  assert.equal(params.public_id, 'avatars/dave');
  assert.equal(params.tags, 'avatar,user_dave');
  assert.ok(['1', 'true'].includes(params.overwrite));
  assert.equal(params.signature, '***'); // secrets are masked in the record
  assert.equal(params.api_key, cloud.api_key);
});

test('a rate-limited Admin API call', async () => {
  const fault = await nephos.addFault({ preset: 'rate_limit', cloud, path: '/v1_1/*/resources*' });
  assert.equal(fault.status, 420);

  await assert.rejects(app.listAvatars(), (err) => err.error.http_code === 420);
  // Uploads are not matched by the rule's path and still work.
  await app.saveAvatar('erin', png(8, 8));

  const seen = await nephos.requests({ cloud, path_prefix: `/v1_1/${cloud.cloud_name}/resources` });
  assert.deepEqual(seen.map((r) => r.status), [420]);
});

test('the app retries one server error', async () => {
  await nephos.addFault({ cloud, method: 'POST', path: '*/image/upload', status: 500, message: 'try again', times: 1 });

  const result = await app.saveAvatar('frank', png(8, 8));

  assert.equal(result.public_id, 'avatars/frank');
  assert.deepEqual((await nephos.requests({ cloud, method: 'POST' })).map((r) => r.status), [500, 200]);
});

test('a fault the app does not survive', async () => {
  await nephos.addFault({ cloud, method: 'POST', path: '*/image/upload', status: 500, message: 'down' });
  await assert.rejects(app.saveAvatar('gina', png(8, 8)), (err) => err.http_code === 500 && /down/.test(err.message));
  assert.deepEqual((await nephos.requests({ cloud, method: 'POST' })).map((r) => r.status), [500, 500]);
});
