// How an application's Jest suite uses nephos. jest/global-setup.js has started nephos and put
// its CLOUDINARY_URL in the environment, so the SDK (and the app) can be required at the top.
// Each test gets its own cloud, so test files may run in parallel workers.
'use strict';
const cloudinary = require('cloudinary').v2;
const { connectNephos, configureCloudinary } = require('../nephos');
const app = require('./avatar-app');
const { png, pngSize } = require('./png');

const nephos = connectNephos(); // the server from global-setup.js (NEPHOS_BASE_URL)
let cloud;
let restoreConfig;

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

test('upload, then fetch a transformed URL from nephos', async () => {
  const result = await app.saveAvatar('alice', png(40, 20));
  expect(result).toMatchObject({ public_id: 'avatars/alice', width: 40, height: 20 });
  expect(result.secure_url.startsWith(`${nephos.baseUrl}/${cloud.cloud_name}/`)).toBe(true);

  const res = await fetch(app.avatarThumbnailUrl('alice'));
  expect(res.status).toBe(200);
  expect(pngSize(Buffer.from(await res.arrayBuffer()))).toEqual([32, 32]);
});

test.each(['bob', 'carol'])('each test starts with an empty cloud (%s)', async (user) => {
  await expect(app.listAvatars()).resolves.toEqual([]);
  await app.saveAvatar(user, png(8, 8));
  await expect(app.listAvatars()).resolves.toEqual([`avatars/${user}`]);
});

test('assert what the app sent', async () => {
  await app.saveAvatar('dave', png(8, 8));

  const sent = await nephos.requests({ cloud, method: 'POST' });
  expect(sent).toHaveLength(1);
  expect(sent[0]).toMatchObject({
    path: `/v1_1/${cloud.cloud_name}/image/upload`,
    status: 200,
    params: { public_id: 'avatars/dave', tags: 'avatar,user_dave', signature: '***' },
  });
});

test('a rate-limited Admin API call', async () => {
  // Limited to this test's cloud: tests in other workers are not affected.
  await nephos.addFault({ preset: 'rate_limit', cloud, path: '/v1_1/*/resources*' });
  await expect(app.listAvatars()).rejects.toMatchObject({ error: { http_code: 420 } });
});

test('the app retries one server error', async () => {
  await nephos.addFault({ cloud, method: 'POST', path: '*/image/upload', status: 500, times: 1 });
  await expect(app.saveAvatar('frank', png(8, 8))).resolves.toMatchObject({ public_id: 'avatars/frank' });
  expect((await nephos.requests({ cloud, method: 'POST' })).map((r) => r.status)).toEqual([500, 200]);
});
