// Cloudinary's Asset Management MCP server (@cloudinary/asset-management-mcp 0.11.x) against a
// running nephos. The MCP server runs as a child process over stdio (`mcp-server.js start`),
// pointed at nephos with `--server-url <origin>` (it appends `/v1_1/<cloud>/…` itself), and is
// driven by the MCP client SDK (@modelcontextprotocol/sdk). Every call it makes is JSON with
// HTTP Basic credentials, uploads included: a `file://` path is read by the MCP server and sent
// as a base64 data URI. What the tools did is checked both in their answers and by asking nephos
// directly.

'use strict';
const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
const { StdioClientTransport, getDefaultEnvironment } = require('@modelcontextprotocol/sdk/client/stdio.js');
const { startServer, asset } = require('./server');

const MCP_BIN = require.resolve('@cloudinary/asset-management-mcp/bin/mcp-server.js');
const KEY = '1234567890';
const SECRET = 'abcd';
const CLOUD = 'demo';

const RUN = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
const P = `mcp_${RUN}`; // public ID prefix of everything this file uploads
const TAG = `mcptag_${RUN}`;
const LOGO = fs.readFileSync(asset('logo.png'));
const md5 = (b) => crypto.createHash('md5').update(b).digest('hex');

let server;
let mcp;
const clients = [];

// Starts the MCP server over stdio. Only the variables given here reach it (plus PATH, HOME and
// the like), so no CLOUDINARY_* of the calling shell leaks in.
async function connectMcp(extraArgs = [], env = {}) {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [MCP_BIN, 'start', '--server-url', server.base, ...extraArgs],
    env: { ...getDefaultEnvironment(), ...env },
    stderr: 'inherit',
  });
  const client = new Client({ name: 'nephos-sdk-tests', version: '1.0.0' });
  await client.connect(transport);
  clients.push(client);
  return client;
}

// A tool call: its text content, parsed as JSON when it is JSON.
async function call(name, args = {}, client = mcp) {
  const r = await client.callTool({ name, arguments: args });
  const text = r.content.filter((c) => c.type === 'text').map((c) => c.text).join('\n');
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { isError: Boolean(r.isError), text, json, content: r.content };
}

async function ok(name, args, client) {
  const r = await call(name, args, client);
  assert.ok(!r.isError, `${name} failed: ${r.text}`);
  return r.json;
}

// Nephos's Admin API directly, to check what a tool did.
async function admin(method, path, body) {
  const headers = { authorization: `Basic ${Buffer.from(`${KEY}:${SECRET}`).toString('base64')}` };
  if (body) headers['content-type'] = 'application/json';
  const r = await fetch(`${server.base}/v1_1/${CLOUD}/${path}`, { method, headers, body: body && JSON.stringify(body) });
  return { status: r.status, json: await r.json() };
}

async function fetchBytes(url) {
  const r = await fetch(url);
  return { status: r.status, body: Buffer.from(await r.arrayBuffer()) };
}

const fileUrl = (p) => `file://${p}`;
const ids = (resources) => resources.map((r) => r.public_id);

before(async () => {
  server = await startServer();
  mcp = await connectMcp([], { CLOUDINARY_URL: `cloudinary://${KEY}:${SECRET}@${CLOUD}` });
});

after(async () => {
  for (const c of clients) await c.close().catch(() => {});
  if (server) server.stop();
});

const uploaded = {}; // name -> upload answer

test('lists its tools, with the upload tool taking a file', async () => {
  const { tools } = await mcp.listTools();
  const names = tools.map((t) => t.name);
  for (const n of ['upload-asset', 'list-images', 'list-videos', 'list-files', 'search-assets', 'manage-asset-tags',
    'list-tags', 'asset-rename', 'asset-update', 'get-asset-details', 'delete-asset', 'transform-asset',
    'generate-archive', 'create-folder', 'move-folder', 'delete-folder', 'search-folders', 'get-usage-details']) {
    assert.ok(names.includes(n), `tool ${n} listed`);
  }
  const up = tools.find((t) => t.name === 'upload-asset');
  assert.deepEqual(up.inputSchema.properties.upload_request.required, ['file']);
});

test('upload-asset from a local file:// path', async () => {
  const r = await ok('upload-asset', {
    resource_type: 'image',
    upload_request: { file: fileUrl(asset('logo.png')), public_id: `${P}/logo`, tags: ['mcp', TAG], context: 'alt=The logo' },
  });
  uploaded.logo = r;
  assert.equal(r.public_id, `${P}/logo`);
  assert.deepEqual([r.width, r.height, r.format, r.resource_type, r.type], [64, 32, 'png', 'image', 'upload']);
  assert.equal(r.bytes, LOGO.length);
  assert.equal(r.etag, md5(LOGO));
  assert.deepEqual(r.tags, ['mcp', TAG]);
  assert.deepEqual(r.context, { custom: { alt: 'The logo' } });
  assert.match(r.asset_id, /^[0-9a-f]{32}$/);
  const got = await fetchBytes(r.secure_url);
  assert.equal(got.status, 200);
  assert.ok(got.body.equals(LOGO));
  const direct = await admin('GET', `resources/image/upload/${P}/logo`);
  assert.equal(direct.status, 200);
  assert.equal(direct.json.asset_id, r.asset_id);
});

test('upload-asset from a base64 data URI (resource type auto) and from an http URL', async () => {
  const d = await ok('upload-asset', {
    upload_request: { file: `data:image/png;base64,${LOGO.toString('base64')}`, public_id: `${P}/data`, tags: TAG },
  });
  uploaded.data = d;
  assert.deepEqual([d.public_id, d.resource_type, d.format, d.width, d.etag], [`${P}/data`, 'image', 'png', 64, md5(LOGO)]);
  assert.deepEqual(d.tags, [TAG]);

  // nephos fetches remote files only from allowed networks; the test config allows loopback.
  const srv = http.createServer((req, res) => {
    if (req.url === '/remote/logo.png') {
      res.writeHead(200, { 'content-type': 'image/png' });
      res.end(LOGO);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  try {
    const u = await ok('upload-asset', {
      resource_type: 'image',
      upload_request: { file: `http://127.0.0.1:${srv.address().port}/remote/logo.png`, public_id: `${P}/remote` },
    });
    uploaded.remote = u;
    assert.deepEqual([u.public_id, u.width, u.height, u.etag], [`${P}/remote`, 64, 32, md5(LOGO)]);
  } finally {
    srv.close();
  }
});

test('list-images by prefix, with tags, paginated', async () => {
  const all = await ok('list-images', { prefix: `${P}/`, tags: true });
  assert.deepEqual(ids(all.resources).sort(), [`${P}/data`, `${P}/logo`, `${P}/remote`]);
  const logo = all.resources.find((r) => r.public_id === `${P}/logo`);
  assert.deepEqual(logo.tags, ['mcp', TAG]);
  assert.equal(logo.asset_id, uploaded.logo.asset_id);
  assert.equal(logo.secure_url, uploaded.logo.secure_url);

  const first = await ok('list-images', { prefix: `${P}/`, max_results: 2 });
  assert.equal(first.resources.length, 2);
  assert.ok(first.next_cursor, 'next_cursor when more remain');
  const rest = await ok('list-images', { prefix: `${P}/`, max_results: 2, next_cursor: first.next_cursor });
  assert.equal(rest.resources.length, 1);
  assert.deepEqual([...ids(first.resources), ...ids(rest.resources)].sort(), ids(all.resources).sort());

  const none = await ok('list-videos', { prefix: `${P}/` });
  assert.deepEqual(none.resources, []);
});

test('search-assets with an expression, fields, sorting and an aggregation', async () => {
  const r = await ok('search-assets', {
    request: {
      expression: `tags:${TAG}`,
      with_field: ['tags', 'context'],
      sort_by: [{ public_id: 'asc' }],
      aggregate: ['format'],
      max_results: 10,
    },
  });
  assert.equal(r.total_count, 2);
  assert.deepEqual(ids(r.resources), [`${P}/data`, `${P}/logo`]);
  assert.deepEqual(r.resources[1].tags, ['mcp', TAG]);
  assert.deepEqual(r.resources[1].context, { alt: 'The logo' });
  assert.deepEqual(r.aggregations.format, { png: 2 });

  const byPrefix = await ok('search-assets', { request: { expression: `public_id:${P}/* AND format:png`, max_results: 1 } });
  assert.equal(byPrefix.total_count, 3);
  assert.equal(byPrefix.resources.length, 1);
  assert.ok(byPrefix.next_cursor);

  const bad = await call('search-assets', { request: { expression: 'nosuchfield:1' } });
  assert.ok(bad.isError);
  assert.ok(bad.json.error.message, 'an {error: {message}} answer');
});

test('manage-asset-tags: add, remove, replace, remove_all; list-tags', async () => {
  const pids = [`${P}/logo`, `${P}/data`];
  const tagsOf = async (pid) => (await admin('GET', `resources/image/upload/${pid}`)).json.tags;

  const added = await ok('manage-asset-tags', {
    resource_type: 'image',
    tags_update_request: { command: 'add', public_ids: [...pids, `${P}/missing`], tags: [`${TAG}_a`, `${TAG}_b`] },
  });
  assert.deepEqual(added.public_ids.sort(), [...pids].sort(), 'a missing public ID is skipped');
  assert.deepEqual(await tagsOf(`${P}/logo`), ['mcp', TAG, `${TAG}_a`, `${TAG}_b`].sort());

  const listed = await ok('list-tags', { resource_type: 'image', prefix: `${TAG}_` });
  assert.deepEqual(listed.tags, [`${TAG}_a`, `${TAG}_b`]);

  await ok('manage-asset-tags', { resource_type: 'image', tags_update_request: { command: 'remove', public_ids: pids, tags: [`${TAG}_a`] } });
  assert.deepEqual(await tagsOf(`${P}/data`), [TAG, `${TAG}_b`]);
  const found = await ok('search-assets', { request: { expression: `tags=${TAG}_b` } });
  assert.deepEqual(ids(found.resources).sort(), [...pids].sort());

  await ok('manage-asset-tags', { resource_type: 'image', tags_update_request: { command: 'replace', public_ids: [`${P}/remote`], tags: [TAG, `${TAG}_c`] } });
  assert.deepEqual(await tagsOf(`${P}/remote`), [TAG, `${TAG}_c`]);

  await ok('manage-asset-tags', { resource_type: 'image', tags_update_request: { command: 'remove_all', public_ids: [`${P}/remote`] } });
  assert.deepEqual((await tagsOf(`${P}/remote`)) || [], []);
  const after_ = await ok('list-tags', { resource_type: 'image', prefix: `${TAG}_` });
  assert.deepEqual(after_.tags, [`${TAG}_b`]);
});

test('get-asset-details and asset-update by asset ID', async () => {
  const id = uploaded.data.asset_id;
  const d = await ok('get-asset-details', { asset_id: id });
  assert.deepEqual([d.public_id, d.width, d.height, d.bytes], [`${P}/data`, 64, 32, LOGO.length]);

  const u = await ok('asset-update', {
    asset_id: id,
    ResourceUpdateRequest: { tags: [TAG, `${TAG}_upd`], display_name: 'Data logo', context: 'caption=From data' },
  });
  assert.deepEqual(u.tags, [TAG, `${TAG}_upd`]);
  assert.equal(u.display_name, 'Data logo');
  assert.deepEqual(u.context, { custom: { caption: 'From data' } });
  const direct = await admin('GET', `resources/${id}`);
  assert.equal(direct.json.display_name, 'Data logo');

  const missing = await call('get-asset-details', { asset_id: '0123456789abcdef0123456789abcdef' });
  assert.ok(missing.isError);
  assert.match(missing.json.error.message, /not found/i);
});

test('asset-rename: the new public ID is found, the old one is gone', async () => {
  const r = await ok('asset-rename', { resource_type: 'image', RequestBody: { from_public_id: `${P}/logo`, to_public_id: `${P}/renamed` } });
  assert.equal(r.public_id, `${P}/renamed`);
  assert.equal(r.asset_id, uploaded.logo.asset_id);
  assert.match(r.secure_url, new RegExp(`/${P}/renamed\\.png$`));
  uploaded.logo = r;

  const listed = await ok('list-images', { prefix: `${P}/` });
  assert.ok(ids(listed.resources).includes(`${P}/renamed`));
  assert.ok(!ids(listed.resources).includes(`${P}/logo`));
  const found = await ok('search-assets', { request: { expression: `public_id="${P}/renamed"` } });
  assert.equal(found.total_count, 1);
  assert.equal(found.resources[0].asset_id, r.asset_id);
  assert.equal((await admin('GET', `resources/image/upload/${P}/logo`)).status, 404);
  assert.equal((await admin('GET', `resources/image/upload/${P}/renamed`)).status, 200);
  assert.equal((await fetchBytes(r.secure_url)).status, 200);

  const taken = await call('asset-rename', { resource_type: 'image', RequestBody: { from_public_id: `${P}/data`, to_public_id: `${P}/renamed` } });
  assert.ok(taken.isError);
  assert.match(taken.json.error.message, /already exists/);
  const absent = await call('asset-rename', { resource_type: 'image', RequestBody: { from_public_id: `${P}/nope`, to_public_id: `${P}/nope2` } });
  assert.ok(absent.isError);
  assert.match(absent.json.error.message, /not found/i);
});

test('transform-asset creates a derived version; generate-archive', async () => {
  const t = await ok('transform-asset', { publicId: `${P}/renamed`, transformations: 'c_fill,h_16,w_16/e_grayscale' });
  assert.equal(t.eager.length, 1);
  assert.deepEqual([t.eager[0].width, t.eager[0].height], [16, 16]);
  assert.equal((await fetchBytes(t.eager[0].secure_url)).status, 200);
  const d = await ok('get-asset-details', { asset_id: uploaded.logo.asset_id });
  assert.ok(d.derived.some((x) => x.transformation === 'c_fill,h_16,w_16/e_grayscale'));

  const a = await ok('generate-archive', {
    resource_type: 'image',
    RequestBody: { public_ids: [`${P}/renamed`, `${P}/data`], target_public_id: `${P}_archive.zip` },
  });
  assert.equal(a.resource_type, 'raw');
  assert.equal(a.file_count, 2);
  const zip = await fetchBytes(a.secure_url);
  assert.equal(zip.status, 200);
  assert.equal(zip.body.subarray(0, 2).toString(), 'PK');
});

test('create-folder, search-folders, move-folder, delete-folder', async () => {
  const c = await ok('create-folder', { folder: `${P}_dir/sub` });
  assert.equal(c.path, `${P}_dir/sub`);
  const s = await ok('search-folders', { expression: `path="${P}_dir/sub"` });
  assert.deepEqual(s.folders.map((f) => f.path), [`${P}_dir/sub`]);
  const m = await ok('move-folder', { folder: `${P}_dir/sub`, move_folder_request: { to_folder: `${P}_dir/moved` } });
  assert.equal(m.to.path, `${P}_dir/moved`);
  const del = await ok('delete-folder', { folder: `${P}_dir/moved` });
  assert.deepEqual(del.deleted, [`${P}_dir/moved`]);
});

test('delete-asset by asset ID: gone from nephos, a second delete is "not found"', async () => {
  const id = uploaded.remote.asset_id;
  const r = await ok('delete-asset', { request: { asset_id: id } });
  assert.deepEqual(r, { result: 'ok' });
  assert.equal((await admin('GET', `resources/${id}`)).status, 404);
  assert.equal((await admin('GET', `resources/image/upload/${P}/remote`)).status, 404);
  const listed = await ok('list-images', { prefix: `${P}/` });
  assert.deepEqual(ids(listed.resources).sort(), [`${P}/data`, `${P}/renamed`]);
  const gone = await ok('search-assets', { request: { expression: `public_id="${P}/remote"` } });
  assert.equal(gone.total_count, 0);
  const again = await ok('delete-asset', { request: { asset_id: id } });
  assert.deepEqual(again, { result: 'not found' });
});

test('credentials as flags, response headers collected; a wrong secret is refused', async () => {
  const flagged = await connectMcp(['--api-key', KEY, '--api-secret', SECRET, '--cloud-name', CLOUD],
    { CLOUDINARY_COLLECT_HEADERS: 'x-request-id,prefix:x-featureratelimit-' });
  const usage = await ok('get-usage-details', {}, flagged);
  assert.equal(typeof usage.plan, 'string');
  assert.ok(usage.resources >= 2);
  assert.match(usage._headers['x-request-id'], /\S/);
  assert.ok(Object.keys(usage._headers).some((h) => h.startsWith('x-featureratelimit-')));

  const wrong = await connectMcp(['--api-key', KEY, '--api-secret', 'wrong', '--cloud-name', CLOUD]);
  const r = await call('list-images', {}, wrong);
  assert.ok(r.isError);
  assert.match(r.json.error.message, /api_secret mismatch/);
});

describe('JSON-object metadata, counting searches, fields, public_ids lists, backups', () => {
  const field = `mcpcolor_${RUN}`;
  before(async () => {
    const f = await admin('POST', 'metadata_fields', { external_id: field, type: 'string', label: `Color ${RUN}` });
    assert.equal(f.status, 200);
  });

  // POST /v1_1/<cloud>/image/metadata {"metadata":{"<field>":"red"},"public_ids":[…]}: Cloudinary
  // takes metadata as a JSON object as well as a `key=value|…` string.
  test('manage-asset-metadata with a JSON object', async () => {
    const r = await ok('manage-asset-metadata', {
      resource_type: 'image',
      metadata_update_request: { metadata: { [field]: 'red' }, public_ids: [`${P}/data`] },
    });
    assert.deepEqual(r.public_ids, [`${P}/data`]);
    const d = await admin('GET', `resources/image/upload/${P}/data?metadata=true`);
    assert.equal(d.json.metadata[field], 'red');
  });

  // Same for PUT /v1_1/<cloud>/resources/<asset_id> and POST /v1_1/<cloud>/<rt>/upload.
  test('asset-update and upload-asset with metadata as a JSON object', async () => {
    const u = await ok('asset-update', { asset_id: uploaded.data.asset_id, ResourceUpdateRequest: { metadata: { [field]: 'green' } } });
    assert.equal(u.metadata[field], 'green');
    const up = await ok('upload-asset', {
      upload_request: { file: fileUrl(asset('logo.png')), public_id: `${P}_gap/meta`, metadata: { [field]: 'blue' } },
    });
    const d = await admin('GET', `resources/${up.asset_id}`);
    assert.equal(d.json.metadata[field], 'blue');
  });

  // POST resources/search {"max_results":0}: total_count (and aggregations), no resources.
  test('search-assets with max_results 0 counts only', async () => {
    const r = await ok('search-assets', { request: { expression: `public_id:${P}/*`, max_results: 0 } });
    assert.equal(r.total_count, 2);
    assert.deepEqual(r.resources || [], []);
  });

  // GET resources/image?fields=public_id,tags,context&tags=false (the tool always sends
  // tags=false): the fields named come back.
  test('list-images returns the tags and context named in fields', async () => {
    const r = await ok('list-images', { prefix: `${P}/`, fields: ['public_id', 'tags', 'context'] });
    const data = r.resources.find((x) => x.public_id === `${P}/data`);
    assert.deepEqual(data.tags, [TAG, `${TAG}_upd`]);
    assert.deepEqual(data.context, { custom: { caption: 'From data' } });
  });

  // GET resources/image?public_ids=a%2Cb (comma-joined: the OpenAPI form the tool uses,
  // explode=false), as well as `public_ids[]=a&public_ids[]=b` (the Node SDK's form).
  test('list-images by public_ids', async () => {
    const r = await ok('list-images', { public_ids: [`${P}/data`, `${P}/renamed`] });
    assert.deepEqual(ids(r.resources).sort(), [`${P}/data`, `${P}/renamed`]);
  });

  // GET resources/<asset_id>?versions=true lists the kept versions, and
  // GET download_backup?asset_id=…&version_id=… answers one's file.
  test('backed-up versions and download-asset-backup', async () => {
    const up = await ok('upload-asset', {
      upload_request: { file: fileUrl(asset('logo.png')), public_id: `${P}_gap/backed`, backup: true },
    });
    const d = await ok('get-asset-details', { asset_id: up.asset_id, versions: true });
    assert.ok(Array.isArray(d.versions), 'versions listed');
    const v = d.versions.find((x) => x.version_id === up.version_id);
    assert.ok(v, 'the uploaded version is listed');
    const b = await call('download-asset-backup', { asset_id: up.asset_id, version_id: v.version_id });
    assert.ok(!b.isError, b.text);
    const img = b.content.find((c) => c.type === 'image');
    assert.ok(img, 'the backed-up file comes back as an image');
    assert.equal(img.data, LOGO.toString('base64'));
  });
});
