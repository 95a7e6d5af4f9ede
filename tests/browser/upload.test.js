// Uploads to nephos from a web page in headless Chromium, the way Cloudinary documents
// client-side uploads: the page is served from another origin (a port of its own), so every
// request below is a real cross-origin request, preflighted where the headers need it.
//
//   NEPHOS_BIN       the nephos binary (default: ../../target/debug/nephos)
//   NEPHOS_CHROMIUM  the Chromium binary (default: /usr/bin/chromium, see scripts/install-browser.sh)
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { chromium } = require('playwright-core');
const { startNephos } = require('./nephos');

const CLOUD = 'demo';
const PRESET = 'sdk_unsigned'; // unsigned; its settings put uploads in folder `unsigned_folder`
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

let nephos; // { base, stop }
let pageServer; // http.Server serving the test page
let pageOrigin;
let browser;
let page;
const browserLog = [];

// The web page's own server: another port than nephos's, so another origin.
function startPageServer() {
  const html = '<!doctype html><html><head><meta charset="utf-8"><title>nephos browser upload</title>'
    + '</head><body><main id="out"></main></body></html>';
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && (req.url === '/' || req.url === '/index.html')) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(html);
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

// What the browser said, for the assertion messages (CORS refusals surface only here).
function logged() {
  return browserLog.length ? `\nbrowser log:\n  ${browserLog.join('\n  ')}` : '';
}

before(async () => {
  nephos = await startNephos('nephos-browser-');
  pageServer = await startPageServer();
  pageOrigin = `http://127.0.0.1:${pageServer.address().port}`;
  assert.notEqual(new URL(nephos.base).origin, pageOrigin, 'the page must be cross-origin to nephos');
  browser = await chromium.launch({
    executablePath: process.env.NEPHOS_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
  });
  page = await browser.newPage();
  page.on('console', (m) => browserLog.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => browserLog.push(`pageerror: ${e.message}`));
  page.on('requestfailed', (r) => browserLog.push(`requestfailed: ${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
  await page.goto(`${pageOrigin}/`);
});

after(async () => {
  if (browser) await browser.close();
  if (pageServer) await new Promise((resolve) => pageServer.close(resolve));
  if (nephos) nephos.stop();
});

test('unsigned upload with fetch and FormData from another origin', { timeout: 60_000 }, async () => {
  const out = await page.evaluate(async ({ base, cloudName, uploadPreset }) => {
    // A 37x23 PNG made in the page.
    const canvas = document.createElement('canvas');
    canvas.width = 37;
    canvas.height = 23;
    const ctx = canvas.getContext('2d');
    ctx.fillStyle = '#3366cc';
    ctx.fillRect(0, 0, 37, 23);
    ctx.fillStyle = '#ffcc00';
    ctx.fillRect(5, 5, 20, 10);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
    const file = new File([blob], 'small.png', { type: 'image/png' });

    // Cloudinary's documented unsigned upload: FormData with `file` and `upload_preset`,
    // POSTed with fetch to /v1_1/<cloud>/image/upload.
    const url = `${base}/v1_1/${cloudName}/image/upload`;
    const formData = new FormData();
    formData.append('file', file);
    formData.append('upload_preset', uploadPreset);
    let response;
    try {
      response = await fetch(url, { method: 'POST', body: formData });
    } catch (e) {
      return { error: `fetch ${url} failed: ${e}` };
    }
    const requestId = response.headers.get('X-Request-Id');
    const json = await response.json();
    if (!response.ok) return { error: `HTTP ${response.status}: ${JSON.stringify(json)}` };

    // Show the upload, then read the delivered bytes back (delivery is CORS-readable too).
    const img = document.createElement('img');
    document.getElementById('out').append(img);
    try {
      await new Promise((resolve, reject) => {
        img.onload = resolve;
        img.onerror = () => reject(new Error(`the <img> did not load ${json.secure_url}`));
        img.src = json.secure_url;
      });
    } catch (e) {
      return { error: String(e), json };
    }
    const delivered = await fetch(json.secure_url).then((r) => r.arrayBuffer());
    const sent = await file.arrayBuffer();
    return {
      status: response.status,
      requestId,
      json,
      natural: [img.naturalWidth, img.naturalHeight],
      fileSize: file.size,
      deliveredSame: delivered.byteLength === sent.byteLength
        && new Uint8Array(delivered).every((b, i) => b === new Uint8Array(sent)[i]),
    };
  }, { base: nephos.base, cloudName: CLOUD, uploadPreset: PRESET });

  assert.equal(out.error, undefined, `${out.error}${logged()}`);
  assert.equal(out.status, 200);
  assert.ok(out.requestId, `X-Request-Id is not readable from the page (not exposed to CORS)${logged()}`);
  assert.match(out.requestId, /^[0-9a-f]+$/);
  const j = out.json;
  assert.match(j.public_id, /^unsigned_folder\/[^/]+$/);
  assert.equal(j.width, 37);
  assert.equal(j.height, 23);
  assert.equal(j.format, 'png');
  assert.equal(j.resource_type, 'image');
  assert.equal(j.bytes, out.fileSize);
  assert.deepEqual(j.tags, ['preset_tag']);
  assert.equal(j.original_filename, 'small');
  assert.ok(j.secure_url.startsWith(`${nephos.base}/${CLOUD}/image/upload/`), j.secure_url);
  assert.deepEqual(out.natural, [37, 23]);
  assert.ok(out.deliveredSame, 'the delivered original differs from the uploaded file');
});

test('chunked upload with XMLHttpRequest, Content-Range and X-Unique-Upload-Id', { timeout: 180_000 }, async () => {
  // Noise does not compress: a 2600x2000 PNG of it is well over 15 MB, so 6,000,000-byte
  // parts (every part but the last must exceed 5 MB) make at least 3 requests.
  const W = 2600;
  const H = 2000;
  const CHUNK = 6_000_000;
  const out = await page.evaluate(async ({ base, cloudName, uploadPreset, W, H, CHUNK }) => {
    const canvas = document.createElement('canvas');
    canvas.width = W;
    canvas.height = H;
    const ctx = canvas.getContext('2d');
    const image = ctx.createImageData(W, H);
    const px = new Uint32Array(image.data.buffer);
    let x = 2463534242; // xorshift32: opaque pixels of deterministic noise
    for (let i = 0; i < px.length; i++) {
      x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
      px[i] = (x & 0x00ffffff) | 0xff000000;
    }
    ctx.putImageData(image, 0, 0);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
    const file = new File([blob], 'big.png', { type: 'image/png' });

    // Cloudinary's chunked upload: every part is a complete upload request carrying the same
    // X-Unique-Upload-Id and its place in the file as `Content-Range: bytes START-END/TOTAL`;
    // parts are sent one after the other, so the last one arrives last.
    const url = `${base}/v1_1/${cloudName}/image/upload`;
    const uniqueUploadId = `${Date.now()}-${Math.random().toString(36).slice(2)}`;
    const sendPart = (start, end) => new Promise((resolve) => {
      const formData = new FormData();
      formData.append('upload_preset', uploadPreset);
      formData.append('file', file.slice(start, end), file.name);
      const xhr = new XMLHttpRequest();
      xhr.open('POST', url, true);
      xhr.setRequestHeader('X-Requested-With', 'XMLHttpRequest');
      xhr.setRequestHeader('X-Unique-Upload-Id', uniqueUploadId);
      xhr.setRequestHeader('Content-Range', `bytes ${start}-${end - 1}/${file.size}`);
      xhr.onload = () => resolve({
        status: xhr.status,
        requestId: xhr.getResponseHeader('X-Request-Id'),
        body: xhr.responseText,
      });
      xhr.onerror = () => resolve({ status: 0, error: `XMLHttpRequest error (network or CORS) for bytes ${start}-${end - 1}` });
      xhr.send(formData);
    });

    const parts = [];
    let last;
    for (let start = 0; start < file.size; start += CHUNK) {
      const end = Math.min(start + CHUNK, file.size);
      const r = await sendPart(start, end);
      parts.push({ range: `bytes ${start}-${end - 1}/${file.size}`, status: r.status, requestId: r.requestId });
      if (r.status !== 200) return { error: r.error || `HTTP ${r.status} for ${parts.at(-1).range}: ${r.body}`, parts };
      last = JSON.parse(r.body);
      parts.at(-1).done = last.done;
    }

    const img = document.createElement('img');
    document.getElementById('out').append(img);
    try {
      await new Promise((resolve, reject) => {
        img.onload = resolve;
        img.onerror = () => reject(new Error(`the <img> did not load ${last.secure_url}`));
        img.src = last.secure_url;
      });
    } catch (e) {
      return { error: String(e), json: last, parts };
    }
    const delivered = new Uint8Array(await fetch(last.secure_url).then((r) => r.arrayBuffer()));
    const sent = new Uint8Array(await file.arrayBuffer());
    return {
      json: last,
      parts,
      fileSize: file.size,
      natural: [img.naturalWidth, img.naturalHeight],
      deliveredSame: delivered.length === sent.length && delivered.every((b, i) => b === sent[i]),
    };
  }, { base: nephos.base, cloudName: CLOUD, uploadPreset: PRESET, W, H, CHUNK });

  assert.equal(out.error, undefined, `${out.error}\nparts: ${JSON.stringify(out.parts)}${logged()}`);
  assert.ok(out.parts.length >= 3, `only ${out.parts.length} parts for ${out.fileSize} bytes`);
  for (const p of out.parts) {
    assert.equal(p.status, 200, p.range);
    assert.ok(p.requestId, `X-Request-Id is not readable from XMLHttpRequest (${p.range})`);
  }
  for (const p of out.parts.slice(0, -1)) assert.equal(p.done, false, `${p.range} should not complete the upload`);
  const j = out.json;
  assert.match(j.public_id, /^unsigned_folder\/[^/]+$/);
  assert.equal(j.width, W);
  assert.equal(j.height, H);
  assert.equal(j.format, 'png');
  assert.equal(j.resource_type, 'image');
  assert.equal(j.bytes, out.fileSize);
  assert.equal(j.original_filename, 'big');
  assert.deepEqual(out.natural, [W, H]);
  assert.ok(out.deliveredSame, 'the delivered original differs from the uploaded file');
});
