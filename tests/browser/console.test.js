// The console at /console in headless Chromium, used as a newcomer would: choose a cloud,
// drop a file large enough to go in parts, find an upload by search, open it, try a
// transformation, edit its tags, rename it, delete it, watch a failing request in the log,
// reset the cloud, and look at it on a phone-sized screen. Screenshots of each page are saved
// under target/console-screenshots/.
//
//   NEPHOS_BIN       the nephos binary (default: ../../target/debug/nephos)
//   NEPHOS_CHROMIUM  the Chromium binary (default: /usr/bin/chromium)
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { chromium } = require('playwright-core');
const { ROOT, startNephos } = require('./nephos');

const SHOTS = path.join(ROOT, 'target', 'console-screenshots');
const AUTH = `Basic ${Buffer.from('1234567890:abcd').toString('base64')}`;

let nephos;
let browser;
let page;
const problems = []; // console errors, page errors and failed requests: there must be none

async function adminGet(p) {
  const r = await fetch(`${nephos.base}/v1_1/demo/${p}`, { headers: { Authorization: AUTH } });
  return { status: r.status, body: await r.json() };
}

async function shot(name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

before(async () => {
  nephos = await startNephos('nephos-console-');
  browser = await chromium.launch({
    executablePath: process.env.NEPHOS_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console.error: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('requestfailed', (r) => problems.push(`requestfailed: ${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
});

after(async () => {
  if (browser) await browser.close();
  if (nephos) nephos.stop();
});

test('a newcomer uses the console from upload to delete', { timeout: 180_000 }, async () => {
  const head = await fetch(`${nephos.base}/console`);
  assert.equal(head.status, 200);
  assert.match(head.headers.get('content-security-policy'), /default-src 'none'/);

  await page.goto(`${nephos.base}/console`);
  await page.locator('#cloud-list button[data-cloud="demo"]').first().click();
  await page.waitForSelector('#result-count');
  await shot('1-library-empty');

  // Upload by drag and drop: a PNG of noise (about 7 MB: it goes in two parts).
  await page.click('nav a[data-view="upload"]');
  await page.fill('#upload-folder', 'console');
  await page.fill('#upload-tags', 'dropped');
  const size = await page.evaluate(async () => {
    const W = 1700;
    const H = 1400;
    const canvas = document.createElement('canvas');
    canvas.width = W;
    canvas.height = H;
    const ctx = canvas.getContext('2d');
    const image = ctx.createImageData(W, H);
    const px = new Uint32Array(image.data.buffer);
    let x = 88172645;
    for (let i = 0; i < px.length; i++) {
      x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
      px[i] = (x | 0xff000000) >>> 0;
    }
    ctx.putImageData(image, 0, 0);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
    const dt = new DataTransfer();
    dt.items.add(new File([blob], 'noise.png', { type: 'image/png' }));
    const zone = document.getElementById('drop-zone');
    zone.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
    zone.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    return blob.size;
  });
  assert.ok(size > 6 * 1024 * 1024 && size <= 12 * 1024 * 1024, `the PNG is ${size} bytes`);
  await page.waitForFunction(() => document.querySelectorAll('#upload-list li[data-done]').length === 1, null,
    { timeout: 120_000 });
  const [[file, done, text]] = await page.$$eval('#upload-list li', (lis) => lis.map((li) => [li.dataset.file,
    li.dataset.done, li.textContent]));
  assert.equal(done, 'true', `${file}: ${text}`);
  assert.equal(await page.$eval('#upload-list progress', (p) => p.value), size);
  await shot('2-upload');
  const parts = await fetch(`${nephos.base}/_nephos/requests?path_prefix=/v1_1/demo/auto/upload&limit=50`,
    { headers: { 'X-Nephos-Control': '1' } }).then((r) => r.json());
  assert.equal(parts.requests.length, 2, 'the file went in two parts');

  // Find the PNG by search and open it.
  await page.click('nav a[data-view="library"]');
  await page.fill('#search', 'tags:dropped AND format:png');
  await page.click('form[role="search"] button[type="submit"]');
  await page.waitForFunction(() => document.querySelectorAll('#results .card').length === 1);
  const pid = await page.getAttribute('#results .card', 'data-public-id');
  assert.match(pid, /^console\/noise_/);
  const thumbOk = await page.$eval('#results .card img', (img) => new Promise((resolve) => {
    if (img.complete) resolve(img.naturalWidth);
    else img.addEventListener('load', () => resolve(img.naturalWidth));
  }));
  assert.equal(thumbOk, 200, 'the thumbnail is rendered by nephos at 200×200');
  await shot('3-library-search');
  await page.click('#results .card');
  await page.waitForSelector('#asset-title');
  assert.equal(await page.textContent('#asset-title'), pid);

  // The transformation playground.
  await page.fill('#transformation', 'c_fill,w_50,h_40');
  await page.click('#apply');
  await page.waitForFunction(() => {
    const img = document.getElementById('transformed-image');
    return img && img.complete && img.naturalWidth > 0;
  });
  assert.equal(await page.textContent('#transform-status'), '50 × 40');
  assert.match(await page.textContent('#transformed-url'), /\/image\/upload\/c_fill,w_50,h_40\//);
  assert.match(await page.textContent('#snippet-python'), /raw_transformation="c_fill,w_50,h_40"/);
  assert.match(await page.textContent('#snippet-node'), /cloudinary\.url\(/);
  await shot('4-asset');

  // Edit the tags.
  await page.fill('#edit-tags', 'alpha,beta');
  await page.click('#save');
  await page.waitForFunction(() => document.getElementById('edit-tags')?.value === 'alpha,beta'
    && document.getElementById('toast').textContent === 'Saved');
  let got = await adminGet(`resources/image/upload/${pid}`);
  assert.deepEqual(got.body.tags, ['alpha', 'beta']);
  assert.equal(got.body.bytes, size);
  assert.deepEqual([got.body.width, got.body.height], [1700, 1400]);

  // Rename.
  await page.fill('#rename-to', 'console/renamed');
  await page.click('#rename');
  await page.waitForFunction(() => document.getElementById('asset-title')?.textContent === 'console/renamed');
  got = await adminGet(`resources/image/upload/${pid}`);
  assert.equal(got.status, 404);
  got = await adminGet('resources/image/upload/console/renamed');
  assert.equal(got.status, 200);

  // Delete, after confirming.
  page.once('dialog', (d) => d.accept());
  await page.click('#delete');
  await page.waitForFunction(() => location.hash === '#/library');
  got = await adminGet('resources/image/upload/console/renamed');
  assert.equal(got.status, 404);

  // A request that fails shows in the log, with its message.
  const bad = await fetch(`${nephos.base}/v1_1/demo/resources/search`, {
    method: 'POST',
    headers: { Authorization: AUTH, 'Content-Type': 'application/json' },
    body: JSON.stringify({ expression: 'colour:red' }),
  });
  assert.equal(bad.status, 400);
  await page.click('nav a[data-view="log"]');
  await page.selectOption('#log-status', 'bad');
  const row = page.locator('#log-rows tr.log-entry', { hasText: 'unknown field colour' });
  await row.first().waitFor();
  assert.equal(await row.first().getAttribute('data-status'), '400');
  await row.first().click();
  assert.match(await page.textContent('#log-detail'), /resources\/search/);
  // The console's own requests are hidden unless asked for.
  await page.selectOption('#log-status', '');
  const consoleRows = page.locator('#log-rows tr.log-entry', { hasText: '/v1_1/demo/folders' });
  assert.equal(await consoleRows.count(), 0);
  await page.uncheck('#log-hide-console');
  assert.ok(await consoleRows.count() > 0);
  await page.check('#log-hide-console');
  await page.selectOption('#log-status', 'bad');
  await shot('5-request-log');

  // Reset the cloud, after confirming.
  page.once('dialog', (d) => d.accept());
  await page.click('#reset-cloud');
  await page.waitForFunction(() => document.getElementById('toast').textContent === 'The cloud is empty');
  got = await adminGet('resources/search');
  assert.equal(got.body.total_count, 0);

  // A phone-sized screen: nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.click('nav a[data-view="library"]');
  await page.waitForSelector('#result-count');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the page is ${overflow}px wider than a phone screen`);
  await shot('6-phone-library');

  // Keyboard: the first Tab reaches the skip link, Enter on a section link opens it.
  await page.reload();
  await page.waitForSelector('#result-count');
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.className), 'skip');
  await page.keyboard.press('Tab');
  await page.keyboard.press('Tab');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#drop-zone');

  assert.deepEqual(problems, [], problems.join('\n'));
});

async function apiUpload(resourceType, fields, bytes, filename) {
  const form = new FormData();
  for (const [k, v] of Object.entries(fields)) form.append(k, v);
  form.append('file', new Blob([bytes]), filename);
  const r = await fetch(`${nephos.base}/v1_1/demo/${resourceType}/upload`,
    { method: 'POST', headers: { Authorization: AUTH }, body: form });
  const text = await r.text();
  assert.equal(r.status, 200, text);
  return JSON.parse(text);
}

test('folders, views, filters, pages, previews, metadata, presets and the full reset', { timeout: 180_000 }, async () => {
  for (let i = 0; i < 31; i++) {
    await apiUpload('raw', { folder: 'many', public_id: `f${String(i).padStart(2, '0')}.txt` }, `file ${i}`, 'f.txt');
  }
  const assets = path.join(ROOT, 'tests', 'sdk', 'assets');
  await apiUpload('video', { folder: 'clips', public_id: 'clip' }, fs.readFileSync(path.join(assets, 'tiny_vp8.webm')), 'clip.webm');
  await apiUpload('image', { folder: 'pics', public_id: 'logo' }, fs.readFileSync(path.join(assets, 'logo.png')), 'logo.png');
  const field = await fetch(`${nephos.base}/v1_1/demo/metadata_fields`, {
    method: 'POST',
    headers: { Authorization: AUTH, 'Content-Type': 'application/json' },
    body: JSON.stringify({ type: 'string', external_id: 'sku', label: 'SKU' }),
  });
  const fieldText = await field.text();
  assert.equal(field.status, 200, fieldText);

  await page.setViewportSize({ width: 1280, height: 860 });
  await page.goto(`${nephos.base}/console#/library`);
  await page.waitForFunction(() => document.querySelectorAll('#results .card').length === 30);
  // The logo's thumbnail is rendered (and recorded as a derived version).
  await page.waitForFunction(() => {
    const img = document.querySelector('#results .card[data-public-id="pics/logo"] img');
    return img && img.complete && img.naturalWidth === 200;
  });

  // The folder tree, and a second page by cursor.
  await page.click('.tree [data-folder="many"]');
  await page.waitForFunction(() => document.getElementById('result-count').textContent.startsWith('31 assets'));
  assert.equal(await page.locator('#results .card').count(), 30);
  await page.click('#more');
  await page.waitForFunction(() => document.querySelectorAll('#results .card').length === 31);
  assert.equal(await page.isHidden('#more'), true);
  const ids = await page.$$eval('#results .card', (cards) => cards.map((c) => c.dataset.publicId));
  assert.equal(new Set(ids).size, 31, 'no asset twice across the pages');

  // List view, and the resource type and type filters.
  await page.click('#view-toggle');
  assert.equal(await page.getAttribute('#results', 'class'), 'results list');
  await page.click('.tree [data-folder=""]');
  await page.selectOption('#rt-filter', 'video');
  await page.waitForFunction(() => document.getElementById('result-count').textContent.startsWith('1 asset'));
  assert.equal(await page.getAttribute('#results .card', 'data-public-id'), 'clips/clip');
  await page.selectOption('#type-filter', 'private');
  await page.waitForFunction(() => document.getElementById('result-count').textContent.startsWith('0 assets'));
  await page.selectOption('#type-filter', '');
  await page.waitForFunction(() => document.getElementById('result-count').textContent.startsWith('1 asset'));
  await page.click('#results .card');

  // A video plays in the browser's player; a raw file is a download.
  await page.waitForSelector('video#preview');
  await page.waitForFunction(() => document.getElementById('preview').readyState >= 1);
  await page.goto(`${nephos.base}/console#/asset/raw/upload/many/f00.txt`);
  const href = await page.getAttribute('.preview a[download]', 'href');
  assert.equal(await fetch(href).then((r) => r.text()), 'file 0');

  // The image: its derived version, and its display name, context and metadata edited.
  await page.goto(`${nephos.base}/console#/asset/image/upload/pics/logo`);
  await page.waitForSelector('#derived li');
  assert.match(await page.textContent('#derived'), /c_fill,w_200,h_200/);
  await page.fill('#edit-display-name', 'Logo');
  await page.fill('#edit-context', 'alt=A logo|caption=Hi');
  await page.fill('#edit-metadata', 'sku=A1');
  await page.click('#save');
  await page.waitForFunction(() => document.getElementById('edit-display-name')?.value === 'Logo'
    && document.getElementById('toast').textContent === 'Saved');
  const logo = await adminGet('resources/image/upload/pics/logo?metadata=true');
  assert.equal(logo.body.display_name, 'Logo');
  assert.deepEqual(logo.body.context, { custom: { alt: 'A logo', caption: 'Hi' } });
  assert.equal(logo.body.metadata.sku, 'A1');

  // An upload with a preset, choosing the file with the button's input.
  await page.click('nav a[data-view="upload"]');
  await page.waitForFunction(() => document.querySelectorAll('#upload-preset option').length > 1);
  await page.selectOption('#upload-preset', 'sdk_unsigned');
  await page.setInputFiles('#file-input', { name: 'note.txt', mimeType: 'text/plain', buffer: Buffer.from('hello') });
  await page.waitForSelector('#upload-list li[data-done="true"]');
  const uploaded = await page.textContent('#upload-list a.uploaded');
  assert.match(uploaded, /^unsigned_folder\//);
  const note = await adminGet(`resources/raw/upload/${uploaded}`);
  assert.deepEqual(note.body.tags, ['preset_tag']);

  // Reset everything, after confirming.
  await page.click('nav a[data-view="log"]');
  page.once('dialog', (d) => d.accept());
  await page.click('#reset-all');
  await page.waitForFunction(() => document.getElementById('toast').textContent === 'Everything was reset');
  assert.equal((await adminGet('resources/search')).body.total_count, 0);
  assert.deepEqual(problems, [], problems.join('\n'));
});

test('markup in asset fields is shown as text', { timeout: 60_000 }, async () => {
  const form = new FormData();
  form.append('file', new Blob(['<b>x</b>']), 'x.txt');
  form.append('public_id', 'markup');
  form.append('display_name', '<img src=x onerror=window.pwned=1>');
  form.append('tags', '<img src=y onerror=window.pwned=2>');
  form.append('context', 'alt=<img src=z onerror=window.pwned=3>');
  const up = await fetch(`${nephos.base}/v1_1/demo/raw/upload`, { method: 'POST', headers: { Authorization: AUTH }, body: form });
  assert.equal(up.status, 200, await up.text());
  await page.setViewportSize({ width: 1280, height: 860 });
  // A fresh page: the library as a newcomer opens it (no filter left from before).
  await page.goto(`${nephos.base}/console#/library`);
  await page.reload();
  await page.waitForFunction(() => document.querySelectorAll('#results .card').length === 1);
  assert.match(await page.textContent('#results .card'), /<img src=y onerror=/);
  await page.click('#results .card');
  await page.waitForSelector('#asset-title');
  assert.equal(await page.inputValue('#edit-display-name'), '<img src=x onerror=window.pwned=1>');
  assert.match(await page.inputValue('#edit-context'), /alt=<img src=z/);
  assert.match(await page.textContent('#fields'), /<img src=z onerror=/);
  assert.equal(await page.evaluate(() => window.pwned), undefined);
  assert.equal(await page.locator('img[src="x"], img[src="y"], img[src="z"]').count(), 0);
});
