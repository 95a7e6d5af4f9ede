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

test('rename, tags, context, explicit and update', async () => {
  const base = `node_ren_${Date.now()}`;
  const a = await cloudinary.uploader.upload(asset('logo.png'), { public_id: `${base}/a` });
  const r = await cloudinary.uploader.rename(`${base}/a`, `${base}/b`, { tags: true, context: true });
  assert.equal(r.public_id, `${base}/b`);
  assert.equal(r.asset_id, a.asset_id);
  assert.ok('tags' in r);
  await assert.rejects(cloudinary.uploader.rename(`${base}/a`, `${base}/x`), (e) => e.http_code === 404);
  const t = await cloudinary.uploader.add_tag('nt1', [`${base}/b`, 'noSuchId']);
  assert.deepEqual(t.public_ids, [`${base}/b`]);
  await cloudinary.uploader.add_context({ alt: 'a|b' }, [`${base}/b`]);
  const res = await cloudinary.api.resource(`${base}/b`);
  assert.deepEqual(res.tags, ['nt1']);
  assert.deepEqual(res.context, { custom: { alt: 'a|b' } });
  const ex = await cloudinary.uploader.explicit(`${base}/b`, { type: 'upload', tags: ['e1'] });
  assert.deepEqual(ex.tags, ['e1']);
  const up = await cloudinary.api.update(`${base}/b`, { tags: 'u1,u2' });
  assert.deepEqual(up.tags, ['u1', 'u2']);
  const tags = await cloudinary.api.tags({ prefix: 'u', max_results: 500 });
  assert.ok(tags.tags.includes('u1'));
});

test('upload presets: create unsigned, upload with it, delete', async () => {
  const created = await cloudinary.api.create_upload_preset({ unsigned: true, folder: 'node_preset_folder', tags: 'np' });
  assert.equal(created.message, 'created');
  const r = await cloudinary.uploader.unsigned_upload(asset('logo.png'), created.name, { tags: ['mine'] });
  assert.match(r.public_id, /^node_preset_folder\/[a-z0-9]+$/);
  assert.deepEqual([...r.tags].sort(), ['mine', 'np']);
  const got = await cloudinary.api.upload_preset(created.name);
  assert.equal(got.settings.folder, 'node_preset_folder');
  assert.equal((await cloudinary.api.delete_upload_preset(created.name)).message, 'deleted');
  const usage = await cloudinary.api.usage();
  for (const k of ['plan', 'last_updated', 'transformations', 'objects', 'bandwidth', 'storage', 'requests', 'resources', 'derived_resources', 'media_limits']) {
    assert.ok(k in usage, k);
  }
});
