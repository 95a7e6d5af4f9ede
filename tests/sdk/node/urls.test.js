// Delivery URLs an app builds itself (not the `url` of an upload answer) with the Node SDK
// (cloudinary 2.11.x) and @cloudinary/url-gen 1.22. Both point at res.cloudinary.com by
// default. With `cname` = nephos's host:port and http they build
// `http://<host:port>/<cloud>/<resource_type>/<type>/…`, which nephos serves (the `?_a=`
// analytics query is ignored). The Node SDK's url() always defaults to https, whatever the
// configuration says, so every call passes `secure: false`. url-gen does not compute
// signatures: it only places one made elsewhere (setSignature).
'use strict';
const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const { startServer, asset } = require('./server');

let server;
let cloudinary;
let host;
let urlGen;
let resize;

before(async () => {
  server = await startServer();
  host = new URL(server.base).host;
  process.env.CLOUDINARY_URL = `cloudinary://1234567890:abcd@demo?upload_prefix=${server.base}&cname=${host}`;
  cloudinary = require('cloudinary').v2;
  // url-gen as ES modules, the build front-end apps import.
  urlGen = await import('@cloudinary/url-gen');
  resize = await import('@cloudinary/url-gen/actions/resize');
});

after(() => server && server.stop());

const uid = (p) => `${p}_${Date.now()}_${Math.floor(Math.random() * 1e6)}`;
const LOGO = fs.readFileSync(asset('logo.png'));
const withoutQuery = (url) => url.split('?')[0];
const signatureOf = (url) => /\/s--([^/]+)--\//.exec(url)[1];

async function get(url) {
  const r = await fetch(url);
  return { status: r.status, type: r.headers.get('content-type'), error: r.headers.get('x-cld-error'), body: Buffer.from(await r.arrayBuffer()) };
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

describe('Node SDK: cloudinary.v2.url', () => {
  let pid;
  let up;
  const url = (o) => cloudinary.url(pid, { secure: false, format: 'png', ...o });

  before(async () => {
    up = await cloudinary.uploader.upload(asset('logo.png'), { public_id: uid('urls/node') });
    pid = up.public_id;
  });

  test('cname from CLOUDINARY_URL; https unless the call says secure: false', () => {
    assert.equal(cloudinary.config().cname, host);
    assert.equal(withoutQuery(cloudinary.url('a.png')), 'https://res.cloudinary.com/demo/image/upload/a.png');
    assert.equal(withoutQuery(cloudinary.url('a.png', { secure: false })), `${server.base}/demo/image/upload/a.png`);
    // The configuration's `secure` is not read by url().
    cloudinary.config({ secure: false });
    try {
      assert.equal(withoutQuery(cloudinary.url('a.png')), 'https://res.cloudinary.com/demo/image/upload/a.png');
    } finally {
      delete cloudinary.config().secure;
    }
    assert.equal(cloudinary.url('a.png', { secure: false, analytics: false }), `${server.base}/demo/image/upload/a.png`);
  });

  test('plain URLs load the original; with the version it is the upload answer url', async () => {
    assert.equal(withoutQuery(url({ version: up.version })), up.url);
    assert.equal(withoutQuery(url()), `${server.base}/demo/image/upload/v1/${pid}.png`);
    for (const u of [url(), cloudinary.url(pid, { secure: false })]) {
      const r = await get(u);
      assert.deepEqual([r.status, r.type], [200, 'image/png'], u);
      assert.ok(r.body.equals(LOGO), u);
    }
  });

  test('signed URLs (sign_url: true) load', async () => {
    const signed = url({ sign_url: true });
    assert.ok(signed.startsWith(`${server.base}/demo/image/upload/s--`), signed);
    const r = await get(signed);
    assert.equal(r.status, 200);
    assert.ok(r.body.equals(LOGO));
  });

  test('transformed URLs, plain and signed, are 50x50; another extension converts', async () => {
    const fill = { width: 50, height: 50, crop: 'fill' };
    assert.equal(withoutQuery(url(fill)), `${server.base}/demo/image/upload/c_fill,h_50,w_50/v1/${pid}.png`);
    for (const u of [url(fill), url({ ...fill, sign_url: true })]) {
      const r = await get(u);
      assert.deepEqual([r.status, r.type, pngSize(r.body)], [200, 'image/png', [50, 50]], u);
    }
    const r = await get(url({ format: 'jpg', width: 32, crop: 'scale' }));
    assert.deepEqual([r.status, r.type, jpegSize(r.body)], [200, 'image/jpeg', [32, 16]]);
  });

  for (const type of ['private', 'authenticated']) {
    test(`${type} assets: only signed URLs load`, async () => {
      const id = (await cloudinary.uploader.upload(asset('logo.png'), { public_id: uid('urls/restricted'), type })).public_id;
      const u = (o) => cloudinary.url(id, { secure: false, format: 'png', type, ...o });
      assert.equal((await get(u())).status, 401);
      for (const signed of [u({ sign_url: true }), u({ sign_url: true, long_url_signature: true }),
        u({ sign_url: true, signature_algorithm: 'sha256' })]) {
        assert.ok(signed.startsWith(`${server.base}/demo/image/${type}/s--`), signed);
        const r = await get(signed);
        assert.equal(r.status, 200, signed);
        assert.ok(r.body.equals(LOGO), signed);
      }
      const t = await get(u({ sign_url: true, width: 50, height: 50, crop: 'fill' }));
      assert.deepEqual([t.status, pngSize(t.body)], [200, [50, 50]]);
      assert.equal((await get(u({ sign_url: true, api_secret: 'not-the-secret' }))).status, 401);
      const w50 = u({ sign_url: true, width: 50, crop: 'scale' });
      const w40 = u({ sign_url: true, width: 40, crop: 'scale' });
      assert.equal((await get(w50.replace(signatureOf(w50), signatureOf(w40)))).status, 401);
    });
  }

  // The SDK's other URL forms, plain, signed and transformed.
  for (const [name, option] of [['shorten (iu)', { shorten: true }], ['use_root_path', { use_root_path: true }],
    ['url_suffix (SEO)', { url_suffix: 'friendly-name' }]]) {
    test(`${name} URLs load`, async () => {
      const u = url(option);
      const r = await get(u);
      assert.equal(r.status, 200, u);
      assert.ok(r.body.equals(LOGO), u);
      for (const extra of [{ sign_url: true }, { width: 20, crop: 'scale' }, { sign_url: true, width: 20, crop: 'scale' }]) {
        const v = url({ ...option, ...extra });
        assert.equal((await get(v)).status, 200, v);
      }
    });
  }
});

describe('@cloudinary/url-gen', () => {
  let pid;
  let cld;

  before(async () => {
    pid = (await cloudinary.uploader.upload(asset('logo.png'), { public_id: uid('urls/urlgen') })).public_id;
    cld = new urlGen.Cloudinary({ cloud: { cloudName: 'demo' }, url: { secure: false, cname: host } });
  });

  test('url: {secure: false, cname} points at nephos (privateCdn does not drop the cloud over http)', () => {
    const plain = new urlGen.Cloudinary({ cloud: { cloudName: 'demo' } });
    assert.equal(withoutQuery(plain.image('a.png').toURL()), 'https://res.cloudinary.com/demo/image/upload/a.png');
    assert.equal(withoutQuery(cld.image('f/a.png').toURL()), `${server.base}/demo/image/upload/v1/f/a.png`);
    const privateCdn = new urlGen.Cloudinary({ cloud: { cloudName: 'demo' }, url: { secure: false, cname: host, privateCdn: true } });
    assert.equal(withoutQuery(privateCdn.image('f/a.png').toURL()), `${server.base}/demo/image/upload/v1/f/a.png`);
    const noAnalytics = new urlGen.Cloudinary({ cloud: { cloudName: 'demo' }, url: { secure: false, cname: host, analytics: false } });
    assert.equal(noAnalytics.image('f/a.png').toURL(), `${server.base}/demo/image/upload/v1/f/a.png`);
  });

  test('plain and transformed URLs load', async () => {
    for (const u of [cld.image(`${pid}.png`).toURL(), cld.image(pid).toURL()]) {
      const r = await get(u);
      assert.deepEqual([r.status, r.type], [200, 'image/png'], u);
      assert.ok(r.body.equals(LOGO), u);
    }
    const t = cld.image(`${pid}.png`).resize(resize.fill().width(50).height(50)).toURL();
    assert.equal(withoutQuery(t), `${server.base}/demo/image/upload/c_fill,h_50,w_50/v1/${pid}.png`);
    const r = await get(t);
    assert.deepEqual([r.status, r.type, pngSize(r.body)], [200, 'image/png', [50, 50]]);
  });

  test('a signature made by the Node SDK, set with setSignature, opens an authenticated asset', async () => {
    const id = (await cloudinary.uploader.upload(asset('logo.png'), { public_id: uid('urls/urlgen_auth'), type: 'authenticated' })).public_id;
    const image = () => cld.image(`${id}.png`).setDeliveryType('authenticated').resize(resize.fill().width(50).height(50));
    // signUrl is accepted but url-gen has no secret to sign with: the URL has no signature.
    const unsigned = new urlGen.Cloudinary({ cloud: { cloudName: 'demo' }, url: { secure: false, cname: host, signUrl: true } })
      .image(`${id}.png`).setDeliveryType('authenticated').toURL();
    assert.ok(!unsigned.includes('/s--'));
    assert.equal((await get(unsigned)).status, 401);
    assert.equal((await get(image().toURL())).status, 401);

    const sig = signatureOf(cloudinary.url(id, {
      secure: false, type: 'authenticated', format: 'png', sign_url: true, width: 50, height: 50, crop: 'fill',
    }));
    const signed = image().setSignature(sig).toURL();
    assert.equal(withoutQuery(signed), `${server.base}/demo/image/authenticated/s--${sig}--/c_fill,h_50,w_50/v1/${id}.png`);
    const r = await get(signed);
    assert.deepEqual([r.status, pngSize(r.body)], [200, [50, 50]]);
  });

  for (const [name, config] of [['shorten (iu)', { shorten: true }], ['useRootPath', { useRootPath: true }]]) {
    test(`${name} URLs load`, async () => {
      const u = new urlGen.Cloudinary({ cloud: { cloudName: 'demo' }, url: { secure: false, cname: host, ...config } })
        .image(`${pid}.png`).toURL();
      assert.equal((await get(u)).status, 200, u);
    });
  }
});

describe('Node SDK and url-gen: layers, effects and named transformations', () => {
  test('the URLs they build for overlays, effects and t_<name> render', async () => {
    const base = uid('urls/lbase');
    const mark = uid('urls/lmark');
    await cloudinary.uploader.upload(asset('logo.png'), { public_id: base });
    await cloudinary.uploader.upload(asset('logo.png'), { public_id: mark });
    const name = uid('nthumb');
    await cloudinary.api.create_transformation(name, { width: 20, height: 20, crop: 'fill' });
    const layer = mark.replace(/\//g, ':');
    const cases = [
      [{ overlay: layer, width: 16, crop: 'scale', gravity: 'north_east' }, [64, 32]],
      [{ transformation: [{ overlay: layer }, { width: 10, crop: 'scale' }, { effect: 'negate' },
        { flags: 'layer_apply', gravity: 'south_west', x: 2, y: 2 }] }, [64, 32]],
      [{ underlay: layer, width: 64, height: 32, crop: 'pad' }, [64, 32]],
      [{ overlay: { font_family: 'Arial', font_size: 12, text: 'Hi, there' }, gravity: 'south' }, [64, 32]],
      [{ effect: 'contrast:-30', width: 32, crop: 'scale' }, [32, 16]],
      [{ angle: 'auto_left', width: 10, height: 40, crop: 'fit' }, [10, 20]],
      [{ transformation: [name, { effect: 'sepia' }] }, [20, 20]],
    ];
    for (const [options, size] of cases) {
      for (const sign_url of [false, true]) {
        const url = cloudinary.url(base, { secure: false, format: 'png', sign_url, ...options });
        const r = await get(url);
        assert.equal(r.status, 200, `${url}: ${r.error}`);
        assert.deepEqual(pngSize(r.body), size, url);
      }
    }
    // url-gen: a named transformation and an image layer with its position.
    const { Cloudinary } = urlGen;
    const { source } = await import('@cloudinary/url-gen/actions/overlay');
    const { image } = await import('@cloudinary/url-gen/qualifiers/source');
    const { Position } = await import('@cloudinary/url-gen/qualifiers/position');
    const { compass } = await import('@cloudinary/url-gen/qualifiers/gravity');
    const cld = new Cloudinary({ cloud: { cloudName: 'demo' }, url: { secure: false, cname: host } });
    const named = cld.image(base).namedTransformation(
      (await import('@cloudinary/url-gen/actions/namedTransformation')).name(name)).format('png').toURL();
    let r = await get(named);
    assert.equal(r.status, 200, `${named}: ${r.error}`);
    assert.deepEqual(pngSize(r.body), [20, 20]);
    const overlaid = cld.image(base)
      .overlay(source(image(mark).transformation(new (await import('@cloudinary/url-gen')).Transformation()
        .resize(resize.scale().width(12))))
        .position(new Position().gravity(compass('south_east'))))
      .format('png').toURL();
    r = await get(overlaid);
    assert.equal(r.status, 200, `${overlaid}: ${r.error}`);
    assert.deepEqual(pngSize(r.body), [64, 32]);
  });
});

describe('Node SDK and url-gen: f_auto and q_auto as browsers ask', () => {
  async function getAs(url, accept) {
    const r = await fetch(url, { headers: { accept } });
    return { status: r.status, type: r.headers.get('content-type'), vary: r.headers.get('vary'), body: Buffer.from(await r.arrayBuffer()) };
  }
  const webpKind = (body) => {
    assert.equal(body.subarray(8, 12).toString('latin1'), 'WEBP');
    return body.subarray(12, 16).toString('latin1');
  };

  test('AVIF for browsers that take it, lossy WebP for those that take WebP, else the format', async () => {
    const pid = (await cloudinary.uploader.upload(asset('logo.png'), { public_id: uid('urls/auto') })).public_id;
    const url = cloudinary.url(pid, { secure: false, fetch_format: 'auto', quality: 'auto', width: 32, crop: 'scale' });
    assert.match(url, /f_auto/);
    let r = await getAs(url, 'image/avif,image/webp,image/apng,*/*;q=0.8');
    assert.equal(r.status, 200, url);
    assert.equal(r.type, 'image/avif');
    assert.equal(r.body.subarray(4, 12).toString('latin1'), 'ftypavif');
    assert.match(r.vary, /Accept/);
    r = await getAs(url, 'image/webp,*/*');
    assert.equal(r.type, 'image/webp');
    assert.equal(webpKind(r.body), 'VP8 ', 'q_auto makes WebP lossy');
    r = await getAs(url, 'image/png,*/*');
    assert.equal(r.type, 'image/png');
    assert.deepEqual(pngSize(r.body), [32, 16]);
    // url-gen's format(auto()) and quality(auto()).
    const { format, quality } = await import('@cloudinary/url-gen/actions/delivery');
    const { auto } = await import('@cloudinary/url-gen/qualifiers/format');
    const { auto: autoQuality } = await import('@cloudinary/url-gen/qualifiers/quality');
    const gen = new urlGen.Cloudinary({ cloud: { cloudName: 'demo' }, url: { secure: false, cname: host } })
      .image(pid).resize(resize.scale().width(32)).delivery(format(auto())).delivery(quality(autoQuality())).toURL();
    r = await getAs(gen, 'image/webp,*/*');
    assert.equal(r.status, 200, gen);
    assert.equal(r.type, 'image/webp');
  });
});

describe('Node SDK: video posters and previews', () => {
  test('start_offset, video_sampling and delay build pictures of a video that load', async () => {
    const pid = (await cloudinary.uploader.upload(asset('tiny_h264.mp4'), { resource_type: 'video', public_id: uid('urls/nclip') })).public_id;
    const poster = cloudinary.url(pid, { secure: false, resource_type: 'video', format: 'png', start_offset: '50p', width: 80, crop: 'scale' });
    assert.ok(poster.includes('so_50p'), poster);
    let r = await get(poster);
    assert.equal(r.status, 200, `${poster}: ${r.error}`);
    assert.deepEqual(pngSize(r.body), [80, 45]);
    const gif = cloudinary.url(pid, { secure: false, resource_type: 'video', format: 'gif', video_sampling: 3, delay: 120, width: 40, crop: 'scale' });
    r = await get(gif);
    assert.equal(r.status, 200, `${gif}: ${r.error}`);
    assert.equal(r.type, 'image/gif');
    assert.equal(r.body.toString('latin1').split('\x21\xf9\x04').length - 1, 3);
  });
});
