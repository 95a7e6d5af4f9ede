// The official Node SDK (cloudinary 2.11.x) against a running nephos. The SDK picks http or
// https when it is first required, so CLOUDINARY_URL is set before the require.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const { startServer, asset } = require('./server');

let server;
let cloudinary;

before(async () => {
  server = await startServer();
  process.env.CLOUDINARY_URL = `cloudinary://1234567890:abcd@demo?upload_prefix=${server.base}`;
  cloudinary = require('cloudinary').v2;
});

after(() => server && server.stop());

const md5 = (b) => crypto.createHash('md5').update(b).digest('hex');
const uid = (p) => `${p}_${Date.now()}_${Math.floor(Math.random() * 1e6)}`;

async function fetchBytes(url) {
  const r = await fetch(url);
  return { status: r.status, body: Buffer.from(await r.arrayBuffer()) };
}

function uploadStream(buffer, options) {
  return new Promise((resolve, reject) => {
    const s = cloudinary.uploader.upload_stream(options || {}, (err, res) => (err ? reject(err) : resolve(res)));
    s.end(buffer);
  });
}

test('upload from a path, verify the signature, download identical bytes', async () => {
  const data = fs.readFileSync(asset('logo.png'));
  const pid = uid('node/path');
  const r = await cloudinary.uploader.upload(asset('logo.png'), { public_id: pid });
  assert.equal(r.public_id, pid);
  assert.deepEqual([r.width, r.height, r.format, r.resource_type], [64, 32, 'png', 'image']);
  assert.equal(r.etag, md5(data));
  assert.equal(r.original_filename, 'logo');
  assert.ok(cloudinary.utils.verify_api_response_signature(r.public_id, r.version, r.signature));
  assert.ok(!cloudinary.utils.verify_api_response_signature(r.public_id, r.version + 1, r.signature));
  const got = await fetchBytes(r.secure_url);
  assert.equal(got.status, 200);
  assert.ok(got.body.equals(data));
});

test('upload_stream with a Buffer and with a piped file', async () => {
  const data = fs.readFileSync(asset('logo.png'));
  const r = await uploadStream(data);
  assert.equal(r.original_filename, 'file');
  assert.equal(r.width, 64);
  const piped = await new Promise((resolve, reject) => {
    const s = cloudinary.uploader.upload_stream({ filename: 'piped.png' }, (e, res) => (e ? reject(e) : resolve(res)));
    fs.createReadStream(asset('anim.gif')).pipe(s);
  });
  assert.equal(piped.format, 'gif');
  assert.equal(piped.pages, 3);
  assert.ok((await fetchBytes(piped.secure_url)).body.equals(fs.readFileSync(asset('anim.gif'))));
});

test('upload a data URI', async () => {
  const data = fs.readFileSync(asset('logo.png'));
  const r = await cloudinary.uploader.upload(`data:image/png;base64,${data.toString('base64')}`);
  assert.equal(r.etag, md5(data));
});

test('upload from a local HTTP URL', async () => {
  const data = fs.readFileSync(asset('logo.png'));
  const srv = http.createServer((req, res) => {
    if (req.url === '/img/remote.png') {
      res.writeHead(200, { 'content-type': 'image/png' });
      res.end(data);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  try {
    const url = `http://127.0.0.1:${srv.address().port}/img/remote.png`;
    const r = await cloudinary.uploader.upload(url, { use_filename: true, unique_filename: false, folder: uid('node_remote') });
    assert.match(r.public_id, /\/remote$/);
    assert.ok((await fetchBytes(r.secure_url)).body.equals(data));
    await assert.rejects(
      cloudinary.uploader.upload(`http://127.0.0.1:${srv.address().port}/nothing.png`),
      (e) => e.http_code === 404 && e.message.startsWith('Resource not found - '),
    );
  } finally {
    srv.close();
  }
});

test('folder, tags and context', async () => {
  const folder = uid('node_folder');
  const r = await cloudinary.uploader.upload(asset('logo.png'), {
    folder, public_id: 'inner', tags: ['t1', 't two'], context: { alt: 'x=y|z', caption: 'hi' },
  });
  assert.equal(r.public_id, `${folder}/inner`);
  assert.equal(r.asset_folder, folder);
  assert.deepEqual([...r.tags].sort(), ['t two', 't1']);
  assert.deepEqual(r.context, { custom: { alt: 'x=y|z', caption: 'hi' } });
});

test('use_filename with and without unique_filename', async () => {
  const r = await cloudinary.uploader.upload(asset('logo.png'), { use_filename: true });
  assert.match(r.public_id, /^logo_[a-z0-9]{6}$/);
  const folder = uid('node_uf');
  const r2 = await cloudinary.uploader.upload(asset('logo.png'), { use_filename: true, unique_filename: false, folder });
  assert.equal(r2.public_id, `${folder}/logo`);
});

test('overwrite false answers the existing asset; overwrite replaces it', async () => {
  const pid = uid('node_ow');
  const first = await cloudinary.uploader.upload(asset('logo.png'), { public_id: pid });
  const again = await cloudinary.uploader.upload(asset('anim.gif'), { public_id: pid, overwrite: false });
  assert.equal(again.existing, true);
  assert.equal(again.etag, first.etag);
  const replaced = await cloudinary.uploader.upload(asset('anim.gif'), { public_id: pid, overwrite: true });
  assert.equal(replaced.overwritten, true);
  assert.equal(replaced.asset_id, first.asset_id);
  assert.ok(replaced.version > first.version);
});

test('raw, video and auto uploads', async () => {
  const raw = await cloudinary.uploader.upload(asset('notes.txt'), { resource_type: 'raw' });
  assert.match(raw.public_id, /^[a-z0-9]{20}\.txt$/);
  assert.equal(raw.format, undefined);
  assert.ok((await fetchBytes(raw.secure_url)).body.equals(fs.readFileSync(asset('notes.txt'))));
  const video = await cloudinary.uploader.upload(asset('clip.mp4'), { resource_type: 'video' });
  assert.deepEqual([video.format, video.width, video.height, video.duration], ['mp4', 640, 360, 3.5]);
  assert.ok((await fetchBytes(video.secure_url)).body.equals(fs.readFileSync(asset('clip.mp4'))));
  const auto = await cloudinary.uploader.upload(asset('clip.webm'), { resource_type: 'auto' });
  assert.deepEqual([auto.resource_type, auto.format, auto.duration], ['video', 'webm', 2.25]);
  const autoImage = await cloudinary.uploader.upload(asset('anim.gif'), { resource_type: 'auto' });
  assert.equal(autoImage.resource_type, 'image');
});

test('SHA-256 signatures, including an account on a second cloud', async () => {
  const r = await cloudinary.uploader.upload(asset('logo.png'), { signature_algorithm: 'sha256' });
  assert.equal(r.signature.length, 64);
  const other = await cloudinary.uploader.upload(asset('logo.png'), {
    cloud_name: 'other', api_key: '5555', api_secret: 'sha256secret', signature_algorithm: 'sha256',
  });
  assert.match(other.secure_url, /\/other\/image\/upload\//);
  assert.equal((await fetchBytes(other.secure_url)).status, 200);
});

test('unsigned upload through a preset', async () => {
  const r = await cloudinary.uploader.unsigned_upload(asset('logo.png'), 'sdk_unsigned', { tags: ['mine'] });
  assert.match(r.public_id, /^unsigned_folder\/[a-z0-9]+$/);
  assert.deepEqual([...r.tags].sort(), ['mine', 'preset_tag']);
  await assert.rejects(
    cloudinary.uploader.unsigned_upload(asset('logo.png'), 'sdk_signed_only'),
    (e) => e.http_code === 400 && /whitelisted for unsigned uploads/.test(e.message),
  );
});

test('private assets are delivered through the signed URL of the answer', async () => {
  const r = await cloudinary.uploader.upload(asset('logo.png'), { type: 'private', public_id: uid('node_private') });
  assert.match(r.secure_url, /\/image\/private\/s--[A-Za-z0-9_-]{8}--\/v\d+\//);
  assert.equal((await fetchBytes(r.secure_url)).status, 200);
  const bare = r.secure_url.replace(/s--[^/]+--\//, '');
  assert.equal((await fetchBytes(bare)).status, 401);
});

test('upload_large of a small file sends one whole-file request', async () => {
  const r = await new Promise((resolve, reject) => {
    cloudinary.uploader.upload_large(asset('notes.txt'), {}, (e, res) => (e ? reject(e) : resolve(res)));
  });
  assert.equal(r.resource_type, 'raw');
  assert.ok((await fetchBytes(r.secure_url)).body.equals(fs.readFileSync(asset('notes.txt'))));
});

test('errors reach the caller with their status', async () => {
  await assert.rejects(
    cloudinary.uploader.upload(asset('logo.png'), { api_secret: 'wrong' }),
    (e) => e.http_code === 401 && e.message.startsWith('Invalid Signature'),
  );
  await assert.rejects(
    cloudinary.uploader.upload(asset('notes.txt'), { resource_type: 'image' }),
    (e) => e.http_code === 400 && e.message === 'Invalid image file',
  );
});

function bigFiles() {
  const os = require('node:os');
  const path = require('node:path');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nephos-big-'));
  const raw = path.join(dir, 'big.bin');
  fs.writeFileSync(raw, crypto.randomBytes(26 * 1000 * 1000 + 17));
  const pad = crypto.randomBytes(26 * 1000 * 1000);
  const header = Buffer.alloc(8);
  header.writeUInt32BE(pad.length + 8, 0);
  header.write('free', 4, 'latin1');
  const video = path.join(dir, 'big.mp4');
  fs.writeFileSync(video, Buffer.concat([fs.readFileSync(asset('clip.mp4')), header, pad]));
  return { dir, raw, video };
}

for (const resourceType of ['raw', 'video']) {
  test(`upload_large (-1 totals) of a 26 MB ${resourceType} file in 5.3 MB chunks`, async () => {
    const files = bigFiles();
    try {
      const file = resourceType === 'raw' ? files.raw : files.video;
      const data = fs.readFileSync(file);
      const r = await new Promise((resolve, reject) => {
        cloudinary.uploader.upload_large(file, { chunk_size: 5300000, resource_type: resourceType },
          (e, res) => (e ? reject(e) : resolve(res)));
      });
      assert.equal(r.done, true);
      assert.equal(r.bytes, data.length);
      assert.equal(r.etag, md5(data));
      assert.equal(r.resource_type, resourceType);
      if (resourceType === 'video') assert.deepEqual([r.format, r.width, r.duration], ['mp4', 640, 3.5]);
      assert.ok((await fetchBytes(r.secure_url)).body.equals(data));
    } finally {
      fs.rmSync(files.dir, { recursive: true, force: true });
    }
  });

  test(`upload_chunked_stream of a 26 MB ${resourceType} file in 5.3 MB chunks`, async () => {
    const files = bigFiles();
    try {
      const file = resourceType === 'raw' ? files.raw : files.video;
      const data = fs.readFileSync(file);
      const r = await new Promise((resolve, reject) => {
        const s = cloudinary.uploader.upload_chunked_stream({ chunk_size: 5300000, resource_type: resourceType },
          (e, res) => (e ? reject(e) : resolve(res)));
        fs.createReadStream(file).pipe(s);
      });
      assert.equal(r.done, true);
      assert.equal(r.etag, md5(data));
      assert.ok((await fetchBytes(r.secure_url)).body.equals(data));
    } finally {
      fs.rmSync(files.dir, { recursive: true, force: true });
    }
  });
}

test('notification_url receives the signed upload result', async () => {
  let resolveHook;
  const arrived = new Promise((resolve) => { resolveHook = resolve; });
  const hook = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      res.end('ok');
      resolveHook({ body, timestamp: req.headers['x-cld-timestamp'], signature: req.headers['x-cld-signature'] });
    });
  });
  await new Promise((resolve) => hook.listen(0, '127.0.0.1', resolve));
  try {
    const url = `http://127.0.0.1:${hook.address().port}/cld`;
    const result = await cloudinary.uploader.upload(asset('logo.png'), { notification_url: url });
    const got = await arrived;
    assert.ok(cloudinary.utils.verifyNotificationSignature(got.body, got.timestamp, got.signature));
    const payload = JSON.parse(got.body);
    assert.equal(payload.notification_type, 'upload');
    assert.equal(payload.public_id, result.public_id);
    assert.equal(payload.etag, result.etag);
  } finally {
    hook.close();
  }
});

test('SDK-built transformation URLs load', async () => {
  const up = await cloudinary.uploader.upload(asset('logo.png'), { public_id: `node_tr/${Date.now()}` });
  const at = { cname: server.base.replace('http://', ''), secure: false };
  const url = cloudinary.url(up.public_id, { ...at, width: 16, height: 16, crop: 'fill', format: 'png' });
  const res = await fetch(url);
  assert.equal(res.status, 200);
  const bytes = Buffer.from(await res.arrayBuffer());
  assert.deepEqual([bytes.readUInt32BE(16), bytes.readUInt32BE(20)], [16, 16]);
  const webp = await fetch(cloudinary.url(up.public_id, { ...at, width: 10, fetch_format: 'webp' }));
  assert.equal(webp.headers.get('content-type'), 'image/webp');
  const bad = await fetch(cloudinary.url(up.public_id, { ...at, effect: 'cartoonify' }));
  assert.equal(bad.status, 400);
  assert.match(bad.headers.get('x-cld-error'), /e_cartoonify/);
});

test('eager results match the SDK-built URLs', async () => {
  const pid = `node_eager/${Date.now()}`;
  const r = await cloudinary.uploader.upload(asset('logo.png'), {
    public_id: pid, eager: [{ width: 16, height: 16, crop: 'fill' }, { width: 32, format: 'webp' }],
  });
  assert.equal(r.eager.length, 2);
  const at = { cname: server.base.replace('http://', ''), secure: false, version: r.version, urlAnalytics: false };
  assert.equal(r.eager[0].url, cloudinary.url(pid, { ...at, width: 16, height: 16, crop: 'fill', format: 'png' }));
  assert.deepEqual([r.eager[1].width, r.eager[1].format], [32, 'webp']);
  const res = await fetch(r.eager[1].secure_url);
  assert.equal((await res.arrayBuffer()).byteLength, r.eager[1].bytes);
  assert.equal((await cloudinary.api.resource(pid)).derived.length, 2);
});

test('private_download_url serves the private asset', async () => {
  const pid = `node_dl/${Date.now()}`;
  await cloudinary.uploader.upload(asset('logo.png'), { public_id: pid, type: 'private' });
  const res = await fetch(cloudinary.utils.private_download_url(pid, 'png', { type: 'private', attachment: true }));
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-disposition'), /^attachment; filename=".*\.png"$/);
  assert.deepEqual(Buffer.from(await res.arrayBuffer()), fs.readFileSync(asset('logo.png')));
});
