// The rest of the Upload API methods and Admin API calls through the official Node SDK.
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

test('tag and context commands', async () => {
  const a = await cloudinary.uploader.upload(asset('logo.png'), { tags: ['x', 'y'] });
  const id = a.public_id;
  await cloudinary.uploader.remove_tag('x', [id]);
  assert.deepEqual((await cloudinary.api.resource(id)).tags, ['y']);
  await cloudinary.uploader.replace_tag('z', [id]);
  assert.deepEqual((await cloudinary.api.resource(id)).tags, ['z']);
  await cloudinary.uploader.remove_all_tags([id]);
  assert.equal((await cloudinary.api.resource(id)).tags, undefined);
  await cloudinary.uploader.add_context({ k: 'v' }, [id]);
  await cloudinary.uploader.remove_all_context([id]);
  assert.equal((await cloudinary.api.resource(id)).context, undefined);
  await assert.rejects(
    cloudinary.uploader.add_tag('t', []),
    (e) => e.http_code === 400,
  );
});

test('listings by ids, context, direction; delete all of a type', async () => {
  const base = `nl_${Date.now()}`;
  const ids = [];
  for (let i = 0; i < 3; i++) {
    ids.push((await cloudinary.uploader.upload(asset('logo.png'), { public_id: `${base}/${i}`, context: { mark: base } })).public_id);
  }
  const byIds = await cloudinary.api.resources_by_ids(ids);
  assert.deepEqual(byIds.resources.map((r) => r.public_id).sort(), [...ids].sort());
  const byCtx = await cloudinary.api.resources_by_context('mark', base);
  assert.equal(byCtx.resources.length, 3);
  const asc = await cloudinary.api.resources({ type: 'upload', prefix: base, direction: 'asc', context: true });
  const desc = await cloudinary.api.resources({ type: 'upload', prefix: base, direction: 'desc' });
  assert.deepEqual(asc.resources.map((r) => r.public_id), desc.resources.map((r) => r.public_id).reverse());
  assert.deepEqual(asc.resources[0].context, { custom: { mark: base } });
  const raw = await cloudinary.uploader.upload(asset('notes.txt'), { resource_type: 'raw' });
  const all = await cloudinary.api.delete_all_resources({ resource_type: 'raw' });
  assert.equal(all.deleted[raw.public_id], 'deleted');
});

test('presets list and update, folders', async () => {
  const name = `np_${Date.now()}`;
  await cloudinary.api.create_upload_preset({ name, folder: 'a' });
  await cloudinary.api.update_upload_preset(name, { folder: 'b', unsigned: true });
  const got = await cloudinary.api.upload_preset(name);
  assert.equal(got.settings.folder, 'b');
  assert.equal(got.unsigned, true);
  const list = await cloudinary.api.upload_presets();
  assert.ok(list.presets.some((p) => p.name === name));
  const root = `nf_${Date.now()}`;
  const created = await cloudinary.api.create_folder(`${root}/sub`);
  assert.equal(created.path, `${root}/sub`);
  const subs = await cloudinary.api.sub_folders(root);
  assert.deepEqual(subs.folders.map((f) => f.path), [`${root}/sub`]);
  assert.ok((await cloudinary.api.root_folders()).folders.some((f) => f.name === root));
  assert.deepEqual((await cloudinary.api.delete_folder(`${root}/sub`)).deleted, [`${root}/sub`]);
  await assert.rejects(cloudinary.api.sub_folders(`${root}/sub`), (e) => e.error.http_code === 404);
});
