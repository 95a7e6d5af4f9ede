// nephos --tls: TLS and plain HTTP on one port, with a local CA made on first start. The Node
// SDK (cloudinary 2.11.x) picks http or https once, when it is first required: without
// CLOUDINARY_URL at that moment it uses https, so an app that configures the SDK in code
// after the require needs an https:// upload_prefix. That app runs in a child process
// (fixtures/https-app.js) because NODE_EXTRA_CA_CERTS is read only at process start. It
// builds URLs with `secure_distribution` (cloudinary.url) and `secureDistribution`
// (@cloudinary/url-gen) and loads them; this file checks its report. `private_cdn` (no cloud
// in the path) is served only when nephos has a single cloud, hence a second server.
'use strict';
const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const https = require('node:https');
const path = require('node:path');
const { startServer, asset } = require('./server');

const APP = path.join(__dirname, 'fixtures', 'https-app.js');
const LOGO = fs.readFileSync(asset('logo.png'));
const withoutQuery = (url) => url.split('?')[0];

// Runs the app with only the given variables on top of this process's environment, never
// CLOUDINARY_URL or an inherited NODE_EXTRA_CA_CERTS. Resolves { code, stdout, stderr }.
function runApp(origin, { ca, mode = 'app' } = {}) {
  const env = { ...process.env, NEPHOS_ORIGIN: origin };
  delete env.CLOUDINARY_URL;
  delete env.NODE_EXTRA_CA_CERTS;
  if (ca) env.NODE_EXTRA_CA_CERTS = ca;
  return new Promise((resolve) => {
    execFile(process.execPath, [APP, mode], { env, timeout: 60000 }, (err, stdout, stderr) => {
      resolve({ code: err ? err.code : 0, stdout, stderr });
    });
  });
}

async function report(origin, ca) {
  const r = await runApp(origin, { ca });
  assert.equal(r.code, 0, `https-app.js failed:\n${r.stderr}`);
  const out = JSON.parse(r.stdout);
  for (const l of Object.values(out.loaded)) l.body = Buffer.from(l.body, 'base64');
  out.fetched.body = Buffer.from(out.fetched.body, 'base64');
  return out;
}

function pngSize(body) {
  assert.equal(body.subarray(0, 8).toString('hex'), '89504e470d0a1a0a');
  return [body.readUInt32BE(16), body.readUInt32BE(20)];
}

function jpegSize(body) {
  assert.equal(body.readUInt16BE(0), 0xffd8);
  for (let i = 2; i < body.length;) {
    const marker = body[i + 1];
    if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
      return [body.readUInt16BE(i + 7), body.readUInt16BE(i + 5)];
    }
    i += 2 + body.readUInt16BE(i + 2);
  }
  throw new Error('no SOF marker');
}

// https.get in this process, trusting only the given CA.
function getWithCa(url, ca) {
  return new Promise((resolve, reject) => {
    https.get(url, { ca, agent: false }, (res) => {
      const cert = res.socket.getPeerX509Certificate();
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks), cert }));
    }).on('error', reject);
  });
}

describe('nephos --tls with the SDK configuration file (two clouds)', () => {
  let server;
  let port;
  let app;

  before(async () => {
    server = await startServer({ args: ['--tls'] });
    port = new URL(server.base).port;
    app = await report(server.httpsBase, server.ca);
  });

  after(() => server && server.stop());

  test('one port: http:// and https:// ready lines, a CA certificate in the data dir', () => {
    assert.match(server.base, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(server.httpsBase, `https://127.0.0.1:${port}`);
    assert.equal(path.basename(server.ca), 'ca.pem');
    assert.equal(path.basename(path.dirname(server.ca)), 'tls');
    const ca = new crypto.X509Certificate(fs.readFileSync(server.ca));
    assert.equal(ca.ca, true);
  });

  test('config in code after the require, https upload_prefix: upload and Admin API work', () => {
    const { upload, resource } = app;
    assert.match(upload.public_id, /^https\/node_/);
    assert.equal(upload.url, `${server.base}/demo/image/upload/v${upload.version}/${upload.public_id}.png`);
    assert.equal(upload.secure_url, `${server.httpsBase}/demo/image/upload/v${upload.version}/${upload.public_id}.png`);
    assert.equal(upload.bytes, LOGO.length);
    assert.deepEqual(resource, { public_id: upload.public_id, bytes: LOGO.length, url: upload.url, secure_url: upload.secure_url });
  });

  test('the upload answer\'s secure_url loads over https', () => {
    const l = app.loaded.secure_url;
    assert.deepEqual([l.status, l.type], [200, 'image/png']);
    assert.ok(l.body.equals(LOGO));
  });

  test('cloudinary.url with secure_distribution: plain, versioned, signed URLs load the original', () => {
    const { loaded, upload } = app;
    const pid = upload.public_id;
    assert.equal(withoutQuery(loaded.plain.url), `${server.httpsBase}/demo/image/upload/v1/${pid}.png`);
    assert.equal(withoutQuery(loaded.versioned.url), upload.secure_url);
    assert.match(loaded.signed.url, new RegExp(`^${server.httpsBase}/demo/image/upload/s--[^/]+--/v1/`));
    assert.equal(withoutQuery(loaded.from_config.url), withoutQuery(loaded.plain.url));
    for (const name of ['plain', 'versioned', 'signed', 'from_config']) {
      const l = loaded[name];
      assert.deepEqual([l.status, l.type], [200, 'image/png'], l.url);
      assert.ok(l.body.equals(LOGO), l.url);
    }
  });

  test('transformed URLs, plain and signed; another extension converts', () => {
    const { loaded, upload } = app;
    assert.equal(withoutQuery(loaded.transformed.url), `${server.httpsBase}/demo/image/upload/c_fill,h_10,w_20/v1/${upload.public_id}.png`);
    for (const name of ['transformed', 'transformed_signed']) {
      const l = loaded[name];
      assert.deepEqual([l.status, l.type, pngSize(l.body)], [200, 'image/png', [20, 10]], l.url);
    }
    const j = loaded.jpg;
    assert.deepEqual([j.status, j.type, jpegSize(j.body)], [200, 'image/jpeg', [32, 16]], j.url);
  });

  test('an authenticated asset loads over https only with the signed URL', () => {
    const { authenticated, authenticated_signed: signed } = app.loaded;
    assert.equal(authenticated.status, 401, authenticated.url);
    assert.match(signed.url, new RegExp(`^${server.httpsBase}/demo/image/authenticated/s--[^/]+--/c_fill,h_10,w_20/v1/`));
    assert.deepEqual([signed.status, pngSize(signed.body)], [200, [20, 10]], signed.url);
  });

  test('@cloudinary/url-gen with url: {secureDistribution} builds https URLs that load', () => {
    const { loaded, upload } = app;
    assert.equal(withoutQuery(loaded.urlgen_plain.url), `${server.httpsBase}/demo/image/upload/v1/${upload.public_id}.png`);
    assert.deepEqual([loaded.urlgen_plain.status, loaded.urlgen_plain.body.equals(LOGO)], [200, true]);
    assert.equal(withoutQuery(loaded.urlgen_transformed.url), `${server.httpsBase}/demo/image/upload/c_fill,h_10,w_20/v1/${upload.public_id}.png`);
    assert.deepEqual([loaded.urlgen_transformed.status, pngSize(loaded.urlgen_transformed.body)], [200, [20, 10]]);
  });

  test('private_cdn drops the cloud from the path: not served while two clouds are configured', () => {
    const { loaded, upload } = app;
    for (const name of ['private_cdn', 'urlgen_private_cdn']) {
      assert.equal(withoutQuery(loaded[name].url), `${server.httpsBase}/image/upload/v1/${upload.public_id}.png`);
      assert.equal(loaded[name].status, 404, loaded[name].url);
      assert.ok(loaded[name].error, 'X-Cld-Error');
    }
  });

  test('global fetch in the app trusts NODE_EXTRA_CA_CERTS as https.get does', () => {
    assert.deepEqual([app.fetched.status, app.fetched.body.equals(LOGO)], [200, true]);
  });

  test('plain http keeps working on the same port', async () => {
    const health = await fetch(`${server.base}/health`);
    assert.equal(health.status, 200);
    assert.deepEqual(await health.json(), { status: 'ok' });
    const r = await fetch(app.upload.url);
    assert.equal(r.status, 200);
    assert.ok(Buffer.from(await r.arrayBuffer()).equals(LOGO));
  });

  test('the CA is real: untrusted, https is refused; trusted, it verifies for 127.0.0.1 and localhost', async () => {
    // This process started without NODE_EXTRA_CA_CERTS.
    await assert.rejects(fetch(`${server.httpsBase}/health`), (e) => e.cause && e.cause.code === 'SELF_SIGNED_CERT_IN_CHAIN');
    const ca = fs.readFileSync(server.ca);
    for (const origin of [server.httpsBase, `https://localhost:${port}`]) {
      const r = await getWithCa(`${origin}/health`, ca);
      assert.equal(r.status, 200, origin);
      assert.ok(r.cert.checkIssued(new crypto.X509Certificate(ca)), 'server certificate issued by the CA');
    }
  });

  test('without NODE_EXTRA_CA_CERTS the app fails with a self-signed certificate error', async () => {
    const r = await runApp(server.httpsBase);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^FAILED SELF_SIGNED_CERT_IN_CHAIN: self-signed certificate in certificate chain$/m);
  });

  test('an http:// upload_prefix set in code after the require still fails (the SDK chose https)', async () => {
    const r = await runApp(server.httpsBase, { ca: server.ca, mode: 'http-prefix' });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^FAILED ERR_INVALID_PROTOCOL: Protocol "http:" not supported\. Expected "https:"$/m);
  });
});

describe('nephos --tls with a single cloud (--account, no configuration file)', () => {
  let server;
  let app;

  before(async () => {
    server = await startServer({ config: null, args: ['--tls', '--account', 'cloudinary://1234567890:abcd@demo'] });
    app = await report(server.httpsBase, server.ca);
  });

  after(() => server && server.stop());

  test('private_cdn with secure_distribution: URLs without the cloud load, plain and signed+transformed', () => {
    const { loaded, upload } = app;
    assert.equal(withoutQuery(loaded.private_cdn.url), `${server.httpsBase}/image/upload/v1/${upload.public_id}.png`);
    assert.deepEqual([loaded.private_cdn.status, loaded.private_cdn.type], [200, 'image/png']);
    assert.ok(loaded.private_cdn.body.equals(LOGO));
    const s = loaded.private_cdn_signed;
    assert.match(s.url, new RegExp(`^${server.httpsBase}/image/upload/s--[^/]+--/c_fill,h_10,w_20/v1/`));
    assert.deepEqual([s.status, pngSize(s.body)], [200, [20, 10]], s.url);
  });

  test('url-gen privateCdn: true loads too', () => {
    const l = app.loaded.urlgen_private_cdn;
    assert.equal(withoutQuery(l.url), `${server.httpsBase}/image/upload/v1/${app.upload.public_id}.png`);
    assert.deepEqual([l.status, l.body.equals(LOGO)], [200, true]);
  });

  test('the URLs with the cloud segment keep working', () => {
    for (const name of ['plain', 'signed', 'secure_url', 'urlgen_plain']) {
      assert.equal(app.loaded[name].status, 200, app.loaded[name].url);
    }
    assert.deepEqual(pngSize(app.loaded.transformed_signed.body), [20, 10]);
  });
});
