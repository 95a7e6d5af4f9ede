// Account-level features through the official Node SDK (cloudinary 2.11.x): structured
// metadata, named transformations, streaming profiles, upload mappings, archives, text /
// sprite / multi, moderation, backups, rate limits, config/usage and responsive breakpoints.
// The SDK picks http or https when it is first required, so CLOUDINARY_URL is set before the
// require. Node SDK 2.11.0 has no Admin API triggers calls (create_trigger & co.), so
// triggers are not covered here.
'use strict';
const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const zlib = require('node:zlib');
const { startServer, asset } = require('./server');

let server;
let cloudinary;

before(async () => {
  server = await startServer();
  process.env.CLOUDINARY_URL = `cloudinary://1234567890:abcd@demo?upload_prefix=${server.base}`;
  cloudinary = require('cloudinary').v2;
});

after(() => server && server.stop());

const RUN = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
const uid = (p) => `${p}_${RUN}_${Math.floor(Math.random() * 1e6)}`;
const LOGO = fs.readFileSync(asset('logo.png'));

async function fetchBytes(url) {
  const r = await fetch(url);
  return { status: r.status, body: Buffer.from(await r.arrayBuffer()) };
}

// Admin API errors reject with the parsed answer ({error: {message, http_code}}); Upload API
// errors reject with the error object itself ({message, http_code}).
const adminError = (code, re) => (e) => e.error.http_code === code && (!re || re.test(e.error.message));
const uploadError = (code, re) => (e) => e.http_code === code && (!re || re.test(e.message));

describe('structured metadata', () => {
  const ids = {
    str: uid('md_str'), int: uid('md_int'), enm: uid('md_enum'), set: uid('md_set'), bad: uid('md_bad'),
  };
  const uploaded = [];

  after(async () => {
    if (uploaded.length) await cloudinary.api.delete_resources(uploaded);
    for (const id of Object.values(ids)) {
      await cloudinary.api.delete_metadata_field(id).catch(() => {});
    }
  });

  test('create string, integer (less_than), enum and set fields; list and read them', async () => {
    const s = await cloudinary.api.add_metadata_field({ external_id: ids.str, type: 'string', label: `Str ${RUN}` });
    assert.deepEqual([s.external_id, s.type, s.label, s.mandatory], [ids.str, 'string', `Str ${RUN}`, false]);
    const i = await cloudinary.api.add_metadata_field({
      external_id: ids.int, type: 'integer', label: `Int ${RUN}`, validation: { type: 'less_than', value: 100 },
    });
    assert.equal(i.type, 'integer');
    assert.deepEqual(i.validation, { type: 'less_than', value: 100 });
    const e = await cloudinary.api.add_metadata_field({
      external_id: ids.enm,
      type: 'enum',
      label: `Enum ${RUN}`,
      datasource: { values: [{ external_id: 'red', value: 'Red' }, { external_id: 'green', value: 'Green' }] },
    });
    assert.deepEqual(e.datasource.values.map((v) => [v.external_id, v.value]), [['red', 'Red'], ['green', 'Green']]);
    const st = await cloudinary.api.add_metadata_field({
      external_id: ids.set,
      type: 'set',
      label: `Set ${RUN}`,
      datasource: { values: [{ external_id: 'a', value: 'Alpha' }, { external_id: 'b', value: 'Beta' }, { external_id: 'c', value: 'Gamma' }] },
    });
    assert.equal(st.datasource.values.length, 3);

    const list = await cloudinary.api.list_metadata_fields();
    const listed = list.metadata_fields.map((f) => f.external_id);
    for (const id of [ids.str, ids.int, ids.enm, ids.set]) assert.ok(listed.includes(id), `${id} listed`);

    const one = await cloudinary.api.metadata_field_by_field_id(ids.int);
    assert.deepEqual([one.external_id, one.type, one.label], [ids.int, 'integer', `Int ${RUN}`]);
    assert.deepEqual(one.validation, { type: 'less_than', value: 100 });
  });

  test('an invalid default_value is refused', async () => {
    await assert.rejects(
      cloudinary.api.add_metadata_field({
        external_id: ids.bad, type: 'integer', label: `Bad ${RUN}`, default_value: 500,
        validation: { type: 'less_than', value: 100 },
      }),
      adminError(400, /default_value is invalid/),
    );
    await assert.rejects(cloudinary.api.metadata_field_by_field_id(ids.bad), adminError(404));
    await assert.rejects(
      cloudinary.api.update_metadata_field(ids.enm, { default_value: 'purple' }),
      adminError(400, /default_value is invalid/),
    );
  });

  test('update a field and its datasource; soft delete, restore and order entries', async () => {
    const upd = await cloudinary.api.update_metadata_field(ids.str, { label: `Renamed ${RUN}` });
    assert.equal(upd.label, `Renamed ${RUN}`);
    assert.equal((await cloudinary.api.metadata_field_by_field_id(ids.str)).label, `Renamed ${RUN}`);

    // Existing external ids are updated in place, new ones are appended.
    const merged = await cloudinary.api.update_metadata_field_datasource(ids.enm, {
      values: [{ external_id: 'red', value: 'Crimson' }, { external_id: 'blue', value: 'Blue' }],
    });
    assert.deepEqual(merged.values.map((v) => [v.external_id, v.value]),
      [['red', 'Crimson'], ['green', 'Green'], ['blue', 'Blue']]);

    const deleted = await cloudinary.api.delete_datasource_entries(ids.enm, ['green']);
    assert.deepEqual(deleted.values.map((v) => v.external_id), ['red', 'blue']);
    const afterDelete = await cloudinary.api.metadata_field_by_field_id(ids.enm);
    const green = afterDelete.datasource.values.find((v) => v.external_id === 'green');
    assert.ok(green, 'a soft-deleted entry is kept');
    assert.equal(green.state, 'inactive');

    const restored = await cloudinary.api.restore_metadata_field_datasource(ids.enm, ['green']);
    assert.deepEqual(restored.values.map((v) => v.external_id).sort(), ['blue', 'green', 'red']);
    const greenAgain = (await cloudinary.api.metadata_field_by_field_id(ids.enm)).datasource.values
      .find((v) => v.external_id === 'green');
    assert.equal(greenAgain.state, 'active');

    const desc = await cloudinary.api.order_metadata_field_datasource(ids.enm, 'value', 'desc');
    assert.deepEqual(desc.values.map((v) => v.value), ['Green', 'Crimson', 'Blue']);
    const asc = await cloudinary.api.order_metadata_field_datasource(ids.enm, 'value', 'asc');
    assert.deepEqual(asc.values.map((v) => v.value), ['Blue', 'Crimson', 'Green']);
  });

  test('upload with metadata, update_metadata on two assets, invalid values, listing with metadata', async () => {
    const prefix = `md_assets_${RUN}`;
    const a = await cloudinary.uploader.upload(asset('logo.png'), {
      public_id: `${prefix}/a`,
      metadata: { [ids.str]: 'hello', [ids.int]: 42, [ids.enm]: 'red', [ids.set]: ['a', 'c'] },
    });
    uploaded.push(a.public_id);
    assert.deepEqual(a.metadata, { [ids.str]: 'hello', [ids.int]: 42, [ids.enm]: 'red', [ids.set]: ['a', 'c'] });
    const b = await cloudinary.uploader.upload(asset('logo.png'), { public_id: `${prefix}/b` });
    uploaded.push(b.public_id);

    const upd = await cloudinary.uploader.update_metadata({ [ids.str]: 'both', [ids.enm]: 'blue' }, [a.public_id, b.public_id]);
    assert.deepEqual([...upd.public_ids].sort(), [a.public_id, b.public_id].sort());

    await assert.rejects(
      cloudinary.uploader.update_metadata({ [ids.enm]: 'no_such_entry' }, [a.public_id]),
      uploadError(400),
    );
    await assert.rejects(
      cloudinary.uploader.upload(asset('logo.png'), { public_id: `${prefix}/c`, metadata: { [ids.int]: 100 } }),
      uploadError(400),
    );
    await assert.rejects(cloudinary.api.resource(`${prefix}/c`), adminError(404));

    const listed = await cloudinary.api.resources({ type: 'upload', prefix: `${prefix}/`, metadata: true });
    const byId = Object.fromEntries(listed.resources.map((r) => [r.public_id, r.metadata]));
    assert.deepEqual(Object.keys(byId).sort(), [a.public_id, b.public_id].sort());
    assert.deepEqual(byId[a.public_id], { [ids.str]: 'both', [ids.int]: 42, [ids.enm]: 'blue', [ids.set]: ['a', 'c'] });
    assert.deepEqual(byId[b.public_id], { [ids.str]: 'both', [ids.enm]: 'blue' });
  });

  test('delete a metadata field', async () => {
    assert.deepEqual(await stripRate(cloudinary.api.delete_metadata_field(ids.set)), { message: 'ok' });
    await assert.rejects(cloudinary.api.metadata_field_by_field_id(ids.set), adminError(404));
    const listed = (await cloudinary.api.list_metadata_fields()).metadata_fields.map((f) => f.external_id);
    assert.ok(!listed.includes(ids.set));
  });
});

// Admin answers carry the rate limit properties the SDK adds; compare the rest.
async function stripRate(promise) {
  const r = await promise;
  const { rate_limit_allowed, rate_limit_remaining, rate_limit_reset_at, ...rest } = r;
  return rest;
}

describe('named transformations', () => {
  const name = uid('nt');

  after(async () => {
    await cloudinary.api.delete_transformation(name).catch(() => {});
  });

  test('create, get, update with unsafe_update, list, delete', async () => {
    const created = await cloudinary.api.create_transformation(name, { width: 100, crop: 'scale' });
    assert.equal(created.message, 'created');

    const got = await cloudinary.api.transformation(name);
    assert.equal(got.name, `t_${name}`);
    assert.equal(got.named, true);
    assert.deepEqual(got.info, [{ crop: 'scale', width: 100 }]);

    const updated = await cloudinary.api.update_transformation(name, { unsafe_update: { width: 20, height: 10, crop: 'fill' } });
    assert.equal(updated.message, 'updated');
    assert.deepEqual((await cloudinary.api.transformation(name)).info, [{ crop: 'fill', height: 10, width: 20 }]);

    const list = await cloudinary.api.transformations({ named: true, max_results: 500 });
    const mine = list.transformations.find((t) => t.name === `t_${name}`);
    assert.ok(mine, 'listed');
    assert.equal(mine.named, true);

    assert.equal((await cloudinary.api.delete_transformation(name)).message, 'deleted');
    await assert.rejects(cloudinary.api.transformation(name), adminError(404));
  });
});

describe('streaming profiles', () => {
  const name = uid('sp');

  after(async () => {
    await cloudinary.api.delete_streaming_profile(name).catch(() => {});
  });

  test('list the predefined profiles and read hd', async () => {
    const list = await cloudinary.api.list_streaming_profiles();
    const names = list.data.map((p) => p.name);
    for (const n of ['4k', 'full_hd', 'hd', 'sd']) assert.ok(names.includes(n), `${n} listed`);
    assert.ok(list.data.filter((p) => ['4k', 'full_hd', 'hd', 'sd'].includes(p.name)).every((p) => p.predefined === true));

    const hd = await cloudinary.api.get_streaming_profile('hd');
    assert.equal(hd.data.name, 'hd');
    assert.equal(hd.data.predefined, true);
    assert.ok(hd.data.representations.length > 1);
    for (const r of hd.data.representations) {
      assert.ok(Array.isArray(r.transformation));
      const t = r.transformation[0];
      assert.equal(typeof t.width, 'number');
      assert.equal(typeof t.height, 'number');
      assert.equal(typeof t.bit_rate, 'string');
      assert.equal(typeof t.crop, 'string');
    }
  });

  test('create, update and delete a custom profile', async () => {
    const created = await cloudinary.api.create_streaming_profile(name, {
      display_name: 'Custom One',
      representations: [
        { transformation: { crop: 'limit', width: 1280, height: 720, bit_rate: '3m' } },
        { transformation: { crop: 'limit', width: 640, height: 360, bit_rate: '800k' } },
      ],
    });
    assert.equal(created.data.name, name);
    assert.equal(created.data.display_name, 'Custom One');
    assert.equal(created.data.predefined, false);
    assert.deepEqual(created.data.representations, [
      { transformation: [{ bit_rate: '3m', crop: 'limit', height: 720, width: 1280 }] },
      { transformation: [{ bit_rate: '800k', crop: 'limit', height: 360, width: 640 }] },
    ]);

    const updated = await cloudinary.api.update_streaming_profile(name, {
      display_name: 'Custom Two',
      representations: [{ transformation: { crop: 'scale', width: 320, height: 180, bit_rate: '250k' } }],
    });
    assert.equal(updated.data.display_name, 'Custom Two');
    const got = await cloudinary.api.get_streaming_profile(name);
    assert.equal(got.data.display_name, 'Custom Two');
    assert.deepEqual(got.data.representations, [
      { transformation: [{ bit_rate: '250k', crop: 'scale', height: 180, width: 320 }] },
    ]);
    assert.ok((await cloudinary.api.list_streaming_profiles()).data.some((p) => p.name === name));

    const del = await cloudinary.api.delete_streaming_profile(name);
    assert.equal(del.message, 'deleted');
    await assert.rejects(cloudinary.api.get_streaming_profile(name), adminError(404));
  });
});

describe('upload mappings', () => {
  const folder = uid('map');

  after(async () => {
    await cloudinary.api.delete_upload_mapping(folder).catch(() => {});
  });

  test('create, get, update, list and delete', async () => {
    const template = `http://127.0.0.1:9/${folder}/`;
    assert.equal((await cloudinary.api.create_upload_mapping(folder, { template })).message, 'created');
    const got = await cloudinary.api.upload_mapping(folder);
    assert.deepEqual([got.folder, got.template], [folder, template]);

    const template2 = `http://127.0.0.1:9/other/${folder}/`;
    assert.equal((await cloudinary.api.update_upload_mapping(folder, { template: template2 })).message, 'updated');
    assert.equal((await cloudinary.api.upload_mapping(folder)).template, template2);

    const list = await cloudinary.api.upload_mappings({ max_results: 500 });
    assert.deepEqual(list.mappings.filter((m) => m.folder === folder), [{ folder, template: template2 }]);

    assert.equal((await cloudinary.api.delete_upload_mapping(folder)).message, 'deleted');
    await assert.rejects(cloudinary.api.upload_mapping(folder), adminError(404));
  });
});

describe('archives', () => {
  const tag = uid('arch');

  before(async () => {
    for (let i = 0; i < 3; i++) {
      await cloudinary.uploader.upload(asset('logo.png'), { public_id: `${tag}/img${i}`, tags: [tag] });
    }
  });

  after(async () => {
    await cloudinary.api.delete_resources_by_tag(tag);
  });

  test('create_zip by tag', async () => {
    const zip = await cloudinary.uploader.create_zip({ tags: [tag] });
    assert.equal(zip.resource_type, 'raw');
    assert.equal(zip.file_count, 3);
    assert.ok(zip.bytes > 0);
    const got = await fetchBytes(zip.secure_url);
    assert.equal(got.status, 200);
    assert.equal(got.body.length, zip.bytes);
    assert.equal(got.body.subarray(0, 4).toString('latin1'), 'PK\x03\x04');
    await cloudinary.api.delete_resources([zip.public_id], { resource_type: 'raw' });
  });

  test('download_zip_url by tag', async () => {
    const url = cloudinary.utils.download_zip_url({ tags: [tag] });
    assert.ok(url.startsWith(server.base));
    const got = await fetchBytes(url);
    assert.equal(got.status, 200);
    assert.equal(got.body.subarray(0, 4).toString('latin1'), 'PK\x03\x04');
    // Three local file headers, one per tagged image.
    const headers = got.body.toString('latin1').split('PK\x03\x04').length - 1;
    assert.equal(headers, 3);
  });

  test('create_archive as tgz', async () => {
    const tgz = await cloudinary.uploader.create_archive({ tags: [tag], target_format: 'tgz' });
    assert.equal(tgz.file_count, 3);
    assert.equal(tgz.resource_type, 'raw');
    const got = await fetchBytes(tgz.secure_url);
    assert.equal(got.status, 200);
    const tar = zlib.gunzipSync(got.body);
    assert.equal(tar.subarray(257, 262).toString('latin1'), 'ustar');
    await cloudinary.api.delete_resources([tgz.public_id], { resource_type: 'raw' });
  });
});

describe('text, sprite and multi', () => {
  const tag = uid('sprite');
  const pids = [];
  let textId;

  before(async () => {
    for (let i = 0; i < 2; i++) {
      pids.push((await cloudinary.uploader.upload(asset('logo.png'), { public_id: `${tag}_${i}`, tags: [tag] })).public_id);
    }
  });

  after(async () => {
    await cloudinary.api.delete_resources_by_tag(tag);
    if (textId) assert.equal((await cloudinary.api.delete_resources([textId], { type: 'text' })).deleted[textId], 'deleted');
  });

  test('text creates an image of the text', async () => {
    textId = uid('txt');
    const r = await cloudinary.uploader.text('Hello nephos', { public_id: textId, font_family: 'Arial', font_size: 24 });
    assert.equal(r.public_id, textId);
    assert.equal(r.type, 'text');
    assert.ok(r.width > 1, `width ${r.width}`);
    assert.ok(r.height > 1, `height ${r.height}`);
    const got = await fetchBytes(r.secure_url);
    assert.equal(got.status, 200);
    assert.equal(got.body.subarray(1, 4).toString('latin1'), 'PNG');
    assert.deepEqual([got.body.readUInt32BE(16), got.body.readUInt32BE(20)], [r.width, r.height]);
  });

  test('generate_sprite by tag', async () => {
    const r = await cloudinary.uploader.generate_sprite(tag);
    assert.deepEqual(Object.keys(r.image_infos).sort(), [...pids].sort());
    for (const id of pids) {
      assert.deepEqual([r.image_infos[id].width, r.image_infos[id].height], [64, 32]);
    }
    const css = await fetch(r.css_url);
    assert.equal(css.status, 200);
    const text = await css.text();
    for (const id of pids) assert.ok(text.includes(id), `css mentions ${id}`);
    assert.equal((await fetchBytes(r.image_url)).status, 200);
  });

  test('multi by tag makes an animated GIF', async () => {
    const r = await cloudinary.uploader.multi(tag);
    assert.match(r.url, /\.gif$/);
    const got = await fetchBytes(r.secure_url);
    assert.equal(got.status, 200);
    assert.equal(got.body.subarray(0, 4).toString('latin1'), 'GIF8');
  });
});

describe('manual moderation', () => {
  let pid;

  after(async () => {
    if (pid) await cloudinary.api.delete_resources([pid]);
  });

  test('approve a pending asset and list it by moderation status', async () => {
    const up = await cloudinary.uploader.upload(asset('logo.png'), { public_id: uid('mod'), moderation: 'manual' });
    pid = up.public_id;
    assert.deepEqual(up.moderation.map((m) => [m.kind, m.status]), [['manual', 'pending']]);
    const pending = await cloudinary.api.resources_by_moderation('manual', 'pending', { max_results: 500 });
    assert.ok(pending.resources.some((r) => r.public_id === pid));

    const upd = await cloudinary.api.update(pid, { moderation_status: 'approved' });
    assert.equal(upd.moderation[0].kind, 'manual');
    assert.equal(upd.moderation[0].status, 'approved');

    const approved = await cloudinary.api.resources_by_moderation('manual', 'approved', { max_results: 500 });
    assert.ok(approved.resources.some((r) => r.public_id === pid));
    const stillPending = await cloudinary.api.resources_by_moderation('manual', 'pending', { max_results: 500 });
    assert.ok(!stillPending.resources.some((r) => r.public_id === pid));
  });
});

describe('backups', () => {
  let pid;

  after(async () => {
    if (pid) await cloudinary.api.delete_resources([pid]);
  });

  test('delete leaves a placeholder; restore brings the bytes back', async () => {
    const up = await cloudinary.uploader.upload(asset('logo.png'), { public_id: uid('bk'), backup: true });
    pid = up.public_id;
    assert.equal(up.bytes, LOGO.length);
    const del = await cloudinary.api.delete_resources([pid]);
    assert.equal(del.deleted[pid], 'deleted');

    const gone = await cloudinary.api.resource(pid);
    assert.equal(gone.placeholder, true);
    assert.equal(gone.bytes, 0);

    const restored = await cloudinary.api.restore([pid]);
    assert.equal(restored[pid].bytes, LOGO.length);
    const back = await cloudinary.api.resource(pid);
    assert.equal(back.bytes, LOGO.length);
    assert.notEqual(back.placeholder, true);
    const got = await fetchBytes(back.secure_url);
    assert.equal(got.status, 200);
    assert.ok(got.body.equals(LOGO));
  });
});

describe('rate limits, config and usage', () => {
  test('Admin answers carry rate limit values', async () => {
    const first = await cloudinary.api.ping();
    assert.equal(first.status, 'ok');
    assert.equal(typeof first.rate_limit_allowed, 'number');
    assert.equal(typeof first.rate_limit_remaining, 'number');
    assert.ok(Number.isInteger(first.rate_limit_allowed) && first.rate_limit_allowed > 0);
    assert.ok(first.rate_limit_remaining >= 0 && first.rate_limit_remaining < first.rate_limit_allowed);
    assert.ok(first.rate_limit_reset_at instanceof Date);
    assert.ok(!Number.isNaN(first.rate_limit_reset_at.getTime()));
    assert.ok(first.rate_limit_reset_at.getTime() > Date.now() - 1000);
    const second = await cloudinary.api.resources({ max_results: 1 });
    assert.equal(second.rate_limit_allowed, first.rate_limit_allowed);
    if (second.rate_limit_reset_at.getTime() === first.rate_limit_reset_at.getTime()) {
      assert.ok(second.rate_limit_remaining < first.rate_limit_remaining, 'each call uses the budget');
    }
  });

  test('config with and without settings', async () => {
    const plain = await cloudinary.api.config();
    assert.equal(plain.cloud_name, 'demo');
    assert.equal(plain.settings, undefined);
    const withSettings = await cloudinary.api.config({ settings: true });
    assert.equal(withSettings.cloud_name, 'demo');
    assert.equal(typeof withSettings.settings, 'object');
    assert.equal(typeof withSettings.settings.folder_mode, 'string');
  });

  test('usage, today and for a given date', async () => {
    const keys = ['plan', 'last_updated', 'transformations', 'objects', 'bandwidth', 'storage', 'requests',
      'resources', 'derived_resources', 'media_limits'];
    const now = await cloudinary.api.usage();
    for (const k of keys) assert.ok(k in now, `usage has ${k}`);
    assert.equal(typeof now.storage.usage, 'number');
    assert.ok(now.resources > 0);
    // The SDK puts options.date in the path as given, so a Date must be formatted dd-mm-yyyy
    // first (a Date object would be sent as its toString()).
    const d = new Date();
    const dd = String(d.getUTCDate()).padStart(2, '0');
    const mm = String(d.getUTCMonth() + 1).padStart(2, '0');
    const today = await cloudinary.api.usage({ date: `${dd}-${mm}-${d.getUTCFullYear()}` });
    for (const k of keys) assert.ok(k in today, `dated usage has ${k}`);
    assert.equal(typeof today.storage.usage, 'number');
    assert.equal(typeof today.rate_limit_allowed, 'number');
  });
});

describe('responsive breakpoints on upload', () => {
  let pid;

  after(async () => {
    if (pid) await cloudinary.api.delete_resources([pid]);
  });

  test('breakpoints are computed for a transformation without derived assets', async () => {
    const up = await cloudinary.uploader.upload(asset('logo.png'), {
      public_id: uid('rb'),
      responsive_breakpoints: [{ create_derived: false, transformation: 'a_90' }],
    });
    pid = up.public_id;
    assert.equal(up.responsive_breakpoints.length, 1);
    const set = up.responsive_breakpoints[0];
    assert.equal(set.transformation, 'a_90');
    assert.ok(set.breakpoints.length >= 1);
    for (const bp of set.breakpoints) {
      assert.ok(Number.isInteger(bp.width) && bp.width > 0);
      assert.ok(Number.isInteger(bp.height) && bp.height > 0);
      assert.match(bp.secure_url, /\/image\/upload\/a_90\/c_scale,w_\d+\/v\d+\//);
      const got = await fetchBytes(bp.secure_url);
      assert.equal(got.status, 200, bp.secure_url);
      // Rotated by 90°: the 64x32 logo becomes portrait.
      assert.deepEqual([got.body.readUInt32BE(16), got.body.readUInt32BE(20)], [bp.width, bp.height]);
    }
    assert.equal(set.breakpoints[0].width, 32);
    assert.equal(set.breakpoints[0].height, 64);
  });
});
