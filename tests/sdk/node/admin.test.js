// Admin API calls and destroy through the official Node SDK.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startServer, asset } = require('./server');

let server;
let cloudinary;

before(async () => {
  server = await startServer();
  process.env.CLOUDINARY_URL = `cloudinary://1234567890:abcd@demo?upload_prefix=${server.base}`;
  cloudinary = require('cloudinary').v2;
});

after(() => server && server.stop());

test('ping', async () => {
  assert.equal((await cloudinary.api.ping()).status, 'ok');
});

test('list, read and delete by tag', async () => {
  const tag = `node_t_${Date.now()}`;
  const ids = [];
  for (let i = 0; i < 7; i++) {
    const r = await cloudinary.uploader.upload(asset('logo.png'), { public_id: `${tag}/${i}`, tags: [tag] });
    ids.push(r.public_id);
  }
  const first = await cloudinary.api.resources({ type: 'upload', prefix: `${tag}/`, max_results: 5 });
  assert.equal(first.resources.length, 5);
  assert.ok(first.next_cursor);
  const second = await cloudinary.api.resources({ type: 'upload', prefix: `${tag}/`, max_results: 5, next_cursor: first.next_cursor });
  assert.equal(second.resources.length, 2);
  assert.equal(second.next_cursor, undefined);
  const one = await cloudinary.api.resource(ids[0]);
  assert.equal(one.public_id, ids[0]);
  assert.deepEqual(one.tags, [tag]);
  const deleted = await cloudinary.api.delete_resources_by_tag(tag);
  assert.deepEqual(Object.keys(deleted.deleted).sort(), [...ids].sort());
  const after = await cloudinary.api.resources_by_tag(tag);
  assert.deepEqual(after.resources, []);
  await assert.rejects(cloudinary.api.resource(ids[0]), (e) => e.error.http_code === 404);
});

test('destroy and delete_resources', async () => {
  const a = await cloudinary.uploader.upload(asset('logo.png'));
  assert.deepEqual(await cloudinary.uploader.destroy(a.public_id), { result: 'ok' });
  assert.equal((await fetch(a.secure_url)).status, 404);
  assert.equal((await cloudinary.uploader.destroy(a.public_id)).result, 'not found');
  const b = await cloudinary.uploader.upload(asset('logo.png'));
  const r = await cloudinary.api.delete_resources([b.public_id, 'nope']);
  assert.deepEqual(r.deleted, { [b.public_id]: 'deleted', nope: 'not_found' });
});
