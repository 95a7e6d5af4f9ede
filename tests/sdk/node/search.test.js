// The Search API, folder search, lookups by asset ID / asset folder and folder renames
// through the official Node SDK.
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

test('search expressions, sorting, paging, with_field and aggregate', async () => {
  const run = `ns${Date.now()}`;
  const ups = [];
  for (const [i, name] of ['logo.png', 'anim.gif', 'logo.png'].entries()) {
    ups.push(await cloudinary.uploader.upload(asset(name), {
      public_id: `${run}/${i}`, asset_folder: `${run}/f${i % 2}`, tags: [run, `k${i}`],
    }));
  }
  const all = await cloudinary.search.expression(`tags=${run}`).sort_by('public_id', 'asc').execute();
  assert.equal(all.total_count, 3);
  assert.deepEqual(all.resources.map((r) => r.public_id), ups.map((u) => u.public_id));
  assert.equal(all.resources[1].format, 'gif');
  assert.equal(all.resources[1].folder, `${run}/f1`);

  const pngs = await cloudinary.search.expression(`folder:${run}/* AND format:png`).execute();
  assert.deepEqual(pngs.resources.map((r) => r.public_id).sort(), [`${run}/0`, `${run}/2`]);

  const first = await cloudinary.search.expression(`tags=${run}`).sort_by('public_id', 'desc')
    .max_results(2).with_field('tags').execute();
  assert.deepEqual(first.resources.map((r) => r.public_id), [`${run}/2`, `${run}/1`]);
  assert.deepEqual(first.resources[0].tags, [`k2`, run].sort());
  const second = await cloudinary.search.expression(`tags=${run}`).sort_by('public_id', 'desc')
    .max_results(2).next_cursor(first.next_cursor).execute();
  assert.deepEqual(second.resources.map((r) => r.public_id), [`${run}/0`]);
  assert.equal(second.next_cursor, undefined);

  const agg = await cloudinary.search.expression(`tags=${run}`).aggregate('format').execute();
  assert.deepEqual(agg.aggregations.format, { png: 2, gif: 1 });
  await assert.rejects(cloudinary.search.expression('tags:(').execute(), (e) => e.error.http_code === 400);
});

test('resources by asset ID, asset IDs and asset folder', async () => {
  const run = `na${Date.now()}`;
  const ups = [];
  for (let i = 0; i < 3; i++) {
    ups.push(await cloudinary.uploader.upload(asset('logo.png'), { public_id: `${run}_${i}`, asset_folder: `${run}/box` }));
  }
  const one = await cloudinary.api.resource_by_asset_id(ups[0].asset_id);
  assert.equal(one.public_id, ups[0].public_id);
  const some = await cloudinary.api.resources_by_asset_ids([ups[1].asset_id, ups[2].asset_id]);
  assert.deepEqual(some.resources.map((r) => r.public_id).sort(), [ups[1].public_id, ups[2].public_id]);
  const inFolder = await cloudinary.api.resources_by_asset_folder(`${run}/box`);
  assert.deepEqual(inFolder.resources.map((r) => r.public_id).sort(), ups.map((u) => u.public_id).sort());
});

test('folder search and rename', async () => {
  const run = `nf${Date.now()}`;
  await cloudinary.api.create_folder(`${run}/a/b`);
  const up = await cloudinary.uploader.upload(asset('logo.png'), { asset_folder: `${run}/a` });
  const found = await cloudinary.search_folders.expression(`path:${run}/*`).execute();
  assert.deepEqual(found.folders.map((f) => f.path), [run, `${run}/a`, `${run}/a/b`]);
  const moved = await cloudinary.api.rename_folder(`${run}/a`, `${run}/c`);
  // The SDK adds the Admin API's rate-limit headers to every result.
  assert.deepEqual({ from: moved.from, to: moved.to }, { from: { name: 'a', path: `${run}/a` }, to: { name: 'c', path: `${run}/c` } });
  assert.equal(typeof moved.rate_limit_remaining, 'number');
  assert.equal((await cloudinary.api.resource(up.public_id)).asset_folder, `${run}/c`);
  const sub = await cloudinary.api.sub_folders(`${run}/c`);
  assert.deepEqual(sub.folders.map((f) => f.path), [`${run}/c/b`]);
});

test('delete by asset IDs', async () => {
  const a = await cloudinary.uploader.upload(asset('logo.png'));
  const b = await cloudinary.uploader.upload(asset('logo.png'));
  const result = await cloudinary.api.delete_resources_by_asset_ids([a.asset_id]);
  assert.deepEqual(result.deleted, { [a.asset_id]: 'deleted' });
  await assert.rejects(cloudinary.api.resource(a.public_id), (e) => e.error.http_code === 404);
  assert.equal((await cloudinary.api.resource(b.public_id)).asset_id, b.asset_id);
});
