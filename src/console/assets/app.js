// The nephos console: a media library, uploads and the request log, in plain JavaScript.
// Everything it shows comes from nephos's own APIs: the Admin and Upload APIs with the chosen
// cloud's key and secret (Basic credentials, as the SDKs may use), and the control API.
// Text from assets (public IDs, tags, context) is only ever set as text, never as markup.
'use strict';

const CHUNK = 6 * 1024 * 1024; // bytes per part of a chunked upload (Cloudinary's minimum is 5 MB)
const PAGE = 30;
const THUMB = 'c_fill,w_200,h_200';

const S = {
  account: null, // { cloud_name, api_key, api_secret }
  token: sessionStorage.getItem('nephos.token') || '',
  lib: { folder: '', rt: '', type: '', tag: '', q: '', view: 'grid', cursor: null, items: [], total: null },
  logTimer: null,
};
try {
  S.account = JSON.parse(sessionStorage.getItem('nephos.account') || 'null');
} catch (_) {
  S.account = null;
}

// ---- small helpers -------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function $(sel, root) {
  return (root || document).querySelector(sel);
}

function toast(text) {
  const t = $('#toast');
  t.textContent = text;
  t.classList.add('show');
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove('show'), 2600);
}

function main(...children) {
  const m = $('#main');
  m.replaceChildren(...children);
  return m;
}

function fmtBytes(n) {
  if (n === undefined || n === null) return '';
  const units = ['B', 'KB', 'MB', 'GB'];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function encodePid(pid) {
  return pid.split('/').map(encodeURIComponent).join('/');
}

function quote(v) {
  return `"${String(v).replace(/["\\]/g, '\\$&')}"`;
}

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

// ---- API calls ---------------------------------------------------------------------------

function basic() {
  return `Basic ${btoa(`${S.account.api_key}:${S.account.api_secret}`)}`;
}

async function answer(r) {
  let data = {};
  try {
    data = await r.json();
  } catch (_) {
    data = {};
  }
  if (!r.ok) {
    const msg = (data && data.error && data.error.message) || `HTTP ${r.status}`;
    throw new ApiError(msg, r.status);
  }
  return data;
}

/** An Admin or Upload API call of the chosen cloud. */
async function api(method, path, { json, form, query } = {}) {
  // Marked, so that the request log can tell the console's requests from the app's.
  const headers = { Authorization: basic(), 'X-Nephos-Console': '1' };
  let body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  const url = `/v1_1/${encodeURIComponent(S.account.cloud_name)}/${path}${query ? `?${query}` : ''}`;
  return answer(await fetch(url, { method, headers, body }));
}

/** A control API call. */
async function control(method, path, json) {
  const headers = S.token ? { Authorization: `Bearer ${S.token}` } : { 'X-Nephos-Control': '1' };
  let body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  }
  return answer(await fetch(`/_nephos${path}`, { method, headers, body }));
}

// ---- routing -----------------------------------------------------------------------------

function route() {
  clearInterval(S.logTimer);
  S.logTimer = null;
  const hash = location.hash.replace(/^#/, '') || '/library';
  const nav = $('#nav');
  const signedIn = Boolean(S.account);
  nav.hidden = !signedIn;
  $('#switch-cloud').hidden = !signedIn;
  $('#cloud-name').textContent = signedIn ? `cloud: ${S.account.cloud_name}` : '';
  if (!signedIn) return viewSignIn();
  const [, view, ...rest] = hash.split('/');
  for (const a of nav.querySelectorAll('a')) {
    if (a.dataset.view === view) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const run = {
    library: () => viewLibrary(),
    asset: () => viewAsset(rest[0], rest[1], rest.slice(2).map(decodeURIComponent).join('/')),
    upload: () => viewUpload(),
    log: () => viewLog(),
  }[view] || (() => viewLibrary());
  Promise.resolve(run()).catch((e) => main(h('p', { class: 'error', role: 'alert' }, e.message)));
}

function signIn(account) {
  S.account = {
    cloud_name: account.cloud_name,
    api_key: account.api_key,
    api_secret: account.api_secret,
  };
  sessionStorage.setItem('nephos.account', JSON.stringify(S.account));
  S.lib = { ...S.lib, folder: '', cursor: null, items: [], total: null };
  if (location.hash === '#/library') route();
  else location.hash = '#/library';
}

// ---- sign in -----------------------------------------------------------------------------

async function viewSignIn() {
  const list = h('div', { class: 'clouds', id: 'cloud-list' }, h('p', { class: 'muted' }, 'Loading clouds…'));
  const urlInput = h('input', {
    id: 'cloudinary-url', type: 'password', autocomplete: 'off', placeholder: 'cloudinary://KEY:SECRET@CLOUD',
  });
  const urlForm = h('form', {
    class: 'row',
    onsubmit: (ev) => {
      ev.preventDefault();
      try {
        const u = new URL(urlInput.value.trim().replace(/^CLOUDINARY_URL=/, ''));
        if (u.protocol !== 'cloudinary:' || !u.username || !u.password || !u.hostname) throw new Error();
        signIn({
          cloud_name: decodeURIComponent(u.hostname),
          api_key: decodeURIComponent(u.username),
          api_secret: decodeURIComponent(u.password),
        });
      } catch (_) {
        toast('That is not a CLOUDINARY_URL (cloudinary://KEY:SECRET@CLOUD)');
      }
    },
  }, h('label', { class: 'grow' }, 'Or paste a CLOUDINARY_URL', urlInput), h('button', { type: 'submit' }, 'Use it'));
  const tokenInput = h('input', { id: 'control-token', type: 'password', autocomplete: 'off', value: S.token });
  const tokenForm = h('form', {
    class: 'row',
    hidden: true,
    onsubmit: (ev) => {
      ev.preventDefault();
      S.token = tokenInput.value.trim();
      sessionStorage.setItem('nephos.token', S.token);
      route();
    },
  }, h('label', { class: 'grow' }, 'Control token (nephos runs with --control-token)', tokenInput),
  h('button', { type: 'submit' }, 'Save'));
  main(
    h('h1', {}, 'Choose a cloud'),
    h('div', { class: 'panel stack' }, list, tokenForm, urlForm),
  );
  try {
    const { clouds } = await control('GET', '/clouds');
    list.replaceChildren(...clouds.map((c) => h('button', {
      type: 'button',
      class: 'cloud',
      'data-cloud': c.cloud_name,
      onclick: () => signIn(c),
    }, h('strong', {}, c.cloud_name), h('br'), h('span', { class: 'muted' }, `API key ${c.api_key}`))));
    if (!clouds.length) list.replaceChildren(h('p', { class: 'muted' }, 'No cloud is configured.'));
  } catch (e) {
    list.replaceChildren(h('p', { class: 'error' }, `The clouds cannot be listed: ${e.message}`));
    if (e.status === 401) tokenForm.hidden = false;
  }
}

// ---- media library -----------------------------------------------------------------------

function expression() {
  const L = S.lib;
  const parts = [];
  if (L.q.trim()) parts.push(`(${L.q.trim()})`);
  if (L.rt) parts.push(`resource_type:${L.rt}`);
  if (L.type) parts.push(`type:${L.type}`);
  if (L.tag.trim()) parts.push(`tags=${quote(L.tag.trim())}`);
  if (L.folder) parts.push(`folder=${quote(L.folder)}`);
  return parts.join(' AND ');
}

/** The delivery URL of an asset with a transformation (and another extension). */
function transformed(asset, transformation, ext) {
  let url = asset.secure_url || asset.url || '';
  const marker = `/${asset.resource_type}/${asset.type}/`;
  const at = url.indexOf(marker);
  if (at < 0 || !transformation) return url;
  url = `${url.slice(0, at + marker.length)}${transformation}/${url.slice(at + marker.length)}`;
  if (ext) url = url.replace(/(\.[A-Za-z0-9]+)?$/, `.${ext}`);
  return url;
}

function thumbnail(asset) {
  const publicType = asset.type === 'upload';
  if (publicType && asset.resource_type === 'image') {
    return h('img', { class: 'thumb', src: transformed(asset, THUMB), alt: '', loading: 'lazy' });
  }
  if (publicType && asset.resource_type === 'video') {
    return h('img', { class: 'thumb', src: transformed(asset, THUMB, 'jpg'), alt: '', loading: 'lazy' });
  }
  return h('div', { class: 'thumb', 'aria-hidden': 'true' }, (asset.format || asset.resource_type || '').toUpperCase());
}

function card(asset) {
  const href = `#/asset/${asset.resource_type}/${asset.type}/${encodePid(asset.public_id)}`;
  return h('a', { class: 'card', href, 'data-public-id': asset.public_id },
    thumbnail(asset),
    h('div', { class: 'meta' },
      h('span', { class: 'name' }, asset.public_id),
      h('span', { class: 'muted' }, `${asset.resource_type} · ${asset.format || '—'} · ${fmtBytes(asset.bytes)}`),
      asset.tags && asset.tags.length ? h('span', { class: 'muted' }, `tags: ${asset.tags.join(', ')}`) : null));
}

async function folderNode(path, name) {
  const li = h('li');
  const kids = h('ul', { hidden: true });
  let loaded = false;
  const toggle = h('button', {
    type: 'button',
    class: 'toggle',
    'aria-expanded': 'false',
    'aria-label': `Show folders in ${name}`,
    onclick: async () => {
      const open = toggle.getAttribute('aria-expanded') === 'true';
      toggle.setAttribute('aria-expanded', String(!open));
      toggle.textContent = open ? '▸' : '▾';
      kids.hidden = open;
      if (!open && !loaded) {
        loaded = true;
        try {
          const { folders } = await api('GET', `folders/${encodePid(path)}`);
          kids.replaceChildren(...await Promise.all(folders.map((f) => folderNode(f.path, f.name))));
          if (!folders.length) kids.replaceChildren(h('li', { class: 'muted' }, 'no subfolders'));
        } catch (e) {
          kids.replaceChildren(h('li', { class: 'error' }, e.message));
        }
      }
    },
  }, '▸');
  const pick = h('button', {
    type: 'button',
    'data-folder': path,
    'aria-current': S.lib.folder === path ? 'true' : 'false',
    onclick: () => {
      S.lib.folder = path;
      for (const b of document.querySelectorAll('.tree [data-folder]')) b.setAttribute('aria-current', 'false');
      pick.setAttribute('aria-current', 'true');
      search(true);
    },
  }, name);
  li.append(h('div', {}, toggle, pick), kids);
  return li;
}

async function viewLibrary() {
  const L = S.lib;
  const tree = h('nav', { class: 'tree panel', 'aria-label': 'Folders' },
    h('ul', {}, h('li', {}, h('div', {}, h('button', {
      type: 'button',
      'data-folder': '',
      'aria-current': L.folder === '' ? 'true' : 'false',
      onclick: (ev) => {
        L.folder = '';
        for (const b of document.querySelectorAll('.tree [data-folder]')) b.setAttribute('aria-current', 'false');
        ev.currentTarget.setAttribute('aria-current', 'true');
        search(true);
      },
    }, 'All assets')), h('ul', { id: 'root-folders' }))));
  const select = (id, label, value, options, onchange) => h('label', {}, label, h('select', { id, onchange },
    ...options.map(([v, text]) => h('option', { value: v, selected: v === value }, text))));
  const q = h('input', {
    id: 'search', type: 'search', value: L.q, placeholder: 'e.g. tags:sale AND bytes>1mb', 'aria-describedby': 'search-help',
  });
  const tag = h('input', { id: 'tag-filter', type: 'text', value: L.tag, placeholder: 'tag' });
  const filters = h('form', {
    class: 'filters panel row',
    role: 'search',
    onsubmit: (ev) => {
      ev.preventDefault();
      L.q = q.value;
      L.tag = tag.value;
      search(true);
    },
  },
  h('label', { class: 'grow' }, 'Search (Search API expression)', q),
  select('rt-filter', 'Resource type', L.rt, [['', 'all'], ['image', 'image'], ['video', 'video'], ['raw', 'raw']],
    (ev) => { L.rt = ev.target.value; search(true); }),
  select('type-filter', 'Type', L.type,
    [['', 'all'], ['upload', 'upload'], ['private', 'private'], ['authenticated', 'authenticated']],
    (ev) => { L.type = ev.target.value; search(true); }),
  h('label', {}, 'Tag', tag),
  h('button', { type: 'submit', class: 'primary' }, 'Search'),
  h('button', {
    type: 'button',
    id: 'view-toggle',
    'aria-pressed': String(L.view === 'list'),
    onclick: (ev) => {
      L.view = L.view === 'grid' ? 'list' : 'grid';
      ev.currentTarget.setAttribute('aria-pressed', String(L.view === 'list'));
      ev.currentTarget.textContent = L.view === 'grid' ? 'List view' : 'Grid view';
      $('#results').className = `results ${L.view}`;
    },
  }, L.view === 'grid' ? 'List view' : 'Grid view'),
  h('p', { id: 'search-help', class: 'muted grow' },
    'Fields such as public_id, folder, tags, format, bytes, width, created_at; AND, OR, NOT, parentheses.'));
  main(
    h('h1', {}, 'Media library'),
    h('div', { class: 'library' }, tree, h('section', { 'aria-label': 'Assets' },
      filters,
      h('p', { id: 'result-count', class: 'muted', 'aria-live': 'polite' }),
      h('div', { id: 'results', class: `results ${L.view}` }),
      h('p', {}, h('button', { type: 'button', id: 'more', hidden: true, onclick: () => search(false) }, 'Load more')))),
  );
  api('GET', 'folders').then(async ({ folders }) => {
    $('#root-folders').replaceChildren(...await Promise.all(folders.map((f) => folderNode(f.path, f.name))));
  }).catch((e) => $('#root-folders').replaceChildren(h('li', { class: 'error' }, e.message)));
  await search(true);
}

async function search(fresh) {
  const L = S.lib;
  if (fresh) {
    L.cursor = null;
    L.items = [];
  }
  const body = { max_results: PAGE, sort_by: [{ created_at: 'desc' }], with_field: ['tags'] };
  const expr = expression();
  if (expr) body.expression = expr;
  if (L.cursor) body.next_cursor = L.cursor;
  const results = $('#results');
  const count = $('#result-count');
  try {
    const r = await api('POST', 'resources/search', { json: body });
    L.cursor = r.next_cursor || null;
    L.total = r.total_count;
    L.items.push(...r.resources);
    if (fresh) results.replaceChildren();
    results.append(...r.resources.map(card));
    count.textContent = `${L.total} asset${L.total === 1 ? '' : 's'}${expr ? ` matching ${expr}` : ''}`;
    if (!L.items.length) results.replaceChildren(h('p', { class: 'muted' }, 'Nothing here yet.'));
    $('#more').hidden = !L.cursor;
  } catch (e) {
    count.textContent = '';
    results.replaceChildren(h('p', { class: 'error', role: 'alert' }, e.message));
    $('#more').hidden = true;
  }
}

// ---- one asset ---------------------------------------------------------------------------

function fieldRows(asset) {
  return Object.entries(asset).map(([k, v]) => h('tr', {},
    h('th', { scope: 'row' }, k),
    h('td', {}, typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v))));
}

function contextText(ctx) {
  const custom = (ctx && ctx.custom) || {};
  return Object.entries(custom).map(([k, v]) => `${k}=${v}`).join('|');
}

function metadataText(md) {
  return Object.entries(md || {}).map(([k, v]) => `${k}=${Array.isArray(v) ? JSON.stringify(v) : v}`).join('|');
}

function snippets(asset, tr) {
  const pid = JSON.stringify(asset.public_id);
  const t = JSON.stringify(tr);
  const rt = JSON.stringify(asset.resource_type);
  const ty = JSON.stringify(asset.type);
  return {
    python: `cloudinary.utils.cloudinary_url(${pid}, resource_type=${rt}, type=${ty}, raw_transformation=${t})[0]`,
    node: `cloudinary.url(${pid}, { resource_type: ${rt}, type: ${ty}, raw_transformation: ${t} })`,
  };
}

async function viewAsset(rt, type, pid) {
  main(h('p', { class: 'muted' }, 'Loading…'));
  const path = `resources/${encodeURIComponent(rt)}/${encodeURIComponent(type)}/${encodePid(pid)}`;
  const asset = await api('GET', path, { query: 'tags=true&context=true&metadata=true' });
  let preview;
  if (asset.resource_type === 'image') preview = h('img', { id: 'preview', src: asset.secure_url, alt: asset.public_id });
  else if (asset.resource_type === 'video') preview = h('video', { id: 'preview', src: asset.secure_url, controls: true, preload: 'metadata' });
  else preview = h('a', { class: 'button', href: asset.secure_url, download: '' }, `Download ${asset.public_id}`);

  // Transformation playground.
  const trInput = h('input', { id: 'transformation', type: 'text', placeholder: 'c_fill,w_300,h_200', autocomplete: 'off' });
  const trUrl = h('code', { id: 'transformed-url' });
  const trOut = h('div', { id: 'transformed' });
  const py = h('pre', { id: 'snippet-python' });
  const node = h('pre', { id: 'snippet-node' });
  const apply = () => {
    const tr = trInput.value.trim().replace(/^\/+|\/+$/g, '');
    const url = transformed(asset, tr);
    trUrl.textContent = url;
    const sn = snippets(asset, tr);
    py.textContent = `# Python\n${sn.python}`;
    node.textContent = `// Node\n${sn.node}`;
    const status = h('p', { class: 'muted', id: 'transform-status' }, 'Rendering…');
    let media;
    if (asset.resource_type === 'video') {
      media = h('video', { src: url, controls: true, preload: 'metadata' });
      media.addEventListener('loadedmetadata', () => { status.textContent = `${media.videoWidth} × ${media.videoHeight}`; });
      media.addEventListener('error', () => { status.textContent = 'nephos could not render this transformation.'; status.className = 'error'; });
    } else {
      media = h('img', { id: 'transformed-image', src: url, alt: `${asset.public_id} with ${tr}` });
      media.addEventListener('load', () => { status.textContent = `${media.naturalWidth} × ${media.naturalHeight}`; });
      media.addEventListener('error', async () => {
        status.className = 'error';
        try {
          const r = await fetch(url);
          status.textContent = r.headers.get('x-cld-error') || `HTTP ${r.status}`;
        } catch (_) {
          status.textContent = 'nephos could not render this transformation.';
        }
      });
    }
    trOut.replaceChildren(media, status);
  };
  const copy = (el) => h('button', {
    type: 'button',
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(el.textContent);
        toast('Copied');
      } catch (_) {
        toast('Copying is not allowed here: select the text instead');
      }
    },
  }, 'Copy');

  // Editing.
  const displayName = h('input', { id: 'edit-display-name', value: asset.display_name || '' });
  const tags = h('input', { id: 'edit-tags', value: (asset.tags || []).join(',') });
  const context = h('input', { id: 'edit-context', value: contextText(asset.context), placeholder: 'alt=A red shoe|caption=…' });
  const metadata = h('input', { id: 'edit-metadata', value: metadataText(asset.metadata), placeholder: 'field_id=value|…' });
  const edit = h('form', {
    class: 'panel stack',
    onsubmit: async (ev) => {
      ev.preventDefault();
      const body = { tags: tags.value, context: context.value, display_name: displayName.value };
      if (metadata.value.trim()) body.metadata = metadata.value;
      try {
        await api('POST', path, { json: body });
        toast('Saved');
        viewAsset(rt, type, pid);
      } catch (e) {
        toast(`Not saved: ${e.message}`);
      }
    },
  }, h('h2', {}, 'Edit'),
  h('label', {}, 'Display name', displayName),
  h('label', {}, 'Tags (comma-separated)', tags),
  h('label', {}, 'Context (key=value|key=value)', context),
  h('label', {}, 'Structured metadata (field=value|…)', metadata),
  h('div', { class: 'row' }, h('button', { type: 'submit', class: 'primary', id: 'save' }, 'Save')));

  const renameTo = h('input', { id: 'rename-to', value: asset.public_id });
  const rename = h('form', {
    class: 'panel row',
    onsubmit: async (ev) => {
      ev.preventDefault();
      const to = renameTo.value.trim();
      if (!to || to === asset.public_id) return;
      const form = new FormData();
      form.append('from_public_id', asset.public_id);
      form.append('to_public_id', to);
      form.append('type', asset.type);
      try {
        await api('POST', `${encodeURIComponent(asset.resource_type)}/rename`, { form });
        toast(`Renamed to ${to}`);
        location.hash = `#/asset/${asset.resource_type}/${asset.type}/${encodePid(to)}`;
      } catch (e) {
        toast(`Not renamed: ${e.message}`);
      }
    },
  }, h('label', { class: 'grow' }, 'Rename to', renameTo), h('button', { type: 'submit', id: 'rename' }, 'Rename'));

  const remove = h('button', {
    type: 'button',
    class: 'danger',
    id: 'delete',
    onclick: async () => {
      if (!window.confirm(`Delete ${asset.public_id}? Its file and derived versions are removed.`)) return;
      try {
        const q = `public_ids[]=${encodeURIComponent(asset.public_id)}`;
        await api('DELETE', `resources/${encodeURIComponent(asset.resource_type)}/${encodeURIComponent(asset.type)}`, { query: q });
        toast(`Deleted ${asset.public_id}`);
        location.hash = '#/library';
      } catch (e) {
        toast(`Not deleted: ${e.message}`);
      }
    },
  }, 'Delete');

  const derived = (asset.derived || []).map((d) => h('li', {}, h('a', { href: d.secure_url || d.url }, d.transformation), ` ${fmtBytes(d.bytes)}`));
  const deliveryUrl = h('code', { id: 'delivery-url' }, asset.secure_url);
  main(
    h('p', {}, h('a', { href: '#/library' }, '← Media library')),
    h('h1', { id: 'asset-title' }, asset.public_id),
    h('div', { class: 'asset' },
      h('div', { class: 'stack' },
        h('div', { class: 'panel preview' }, preview),
        h('div', { class: 'panel stack' }, h('h2', {}, 'Delivery URL'), h('p', {}, deliveryUrl, ' ', copy(deliveryUrl))),
        h('form', {
          class: 'panel stack playground',
          onsubmit: (ev) => { ev.preventDefault(); apply(); },
        }, h('h2', {}, 'Transformation playground'),
        h('div', { class: 'row' }, h('label', { class: 'grow' }, 'Transformation', trInput),
          h('button', { type: 'submit', class: 'primary', id: 'apply' }, 'Apply')),
        h('p', {}, trUrl), trOut, py, copy(py), node, copy(node)),
        h('div', { class: 'panel' }, h('h2', {}, 'Derived versions'),
          derived.length ? h('ul', { id: 'derived' }, derived) : h('p', { class: 'muted' }, 'None.'))),
      h('div', { class: 'stack' },
        edit,
        rename,
        h('div', { class: 'panel row' }, remove),
        h('div', { class: 'panel' }, h('h2', {}, 'Admin API answer'),
          h('table', { class: 'fields', id: 'fields' }, h('tbody', {}, fieldRows(asset)))))),
  );
}

// ---- upload ------------------------------------------------------------------------------

function uploadFile(file, params, onProgress) {
  const uid = `console-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
  const url = `/v1_1/${encodeURIComponent(S.account.cloud_name)}/auto/upload`;
  const send = (blob, range, base) => new Promise((resolve, reject) => {
    const form = new FormData();
    for (const [k, v] of Object.entries(params)) if (v) form.append(k, v);
    form.append('file', blob, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open('POST', url);
    xhr.setRequestHeader('Authorization', basic());
    xhr.setRequestHeader('X-Nephos-Console', '1');
    if (range) {
      xhr.setRequestHeader('X-Unique-Upload-Id', uid);
      xhr.setRequestHeader('Content-Range', range);
    }
    xhr.upload.addEventListener('progress', (ev) => onProgress(base + ev.loaded));
    xhr.addEventListener('load', () => {
      let data = {};
      try {
        data = JSON.parse(xhr.responseText);
      } catch (_) {
        data = {};
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(new ApiError((data.error && data.error.message) || `HTTP ${xhr.status}`, xhr.status));
    });
    xhr.addEventListener('error', () => reject(new ApiError('the connection failed', 0)));
    xhr.send(form);
  });
  return (async () => {
    if (file.size <= CHUNK) {
      return send(file, null, 0);
    }
    let last;
    for (let start = 0; start < file.size; start += CHUNK) {
      const end = Math.min(start + CHUNK, file.size);
      last = await send(file.slice(start, end), `bytes ${start}-${end - 1}/${file.size}`, start);
      onProgress(end);
    }
    return last;
  })();
}

async function viewUpload() {
  const folder = h('input', { id: 'upload-folder', placeholder: 'e.g. products/shoes' });
  const tags = h('input', { id: 'upload-tags', placeholder: 'e.g. sale,summer' });
  const preset = h('select', { id: 'upload-preset' }, h('option', { value: '' }, 'none'));
  const list = h('ul', { class: 'uploads', id: 'upload-list', 'aria-live': 'polite' });
  const input = h('input', { type: 'file', id: 'file-input', multiple: true, hidden: true });
  const start = (files) => {
    for (const file of files) {
      const bar = h('progress', { max: file.size || 1, value: 0, 'aria-label': `Upload of ${file.name}` });
      const status = h('span', { class: 'muted' }, `${fmtBytes(file.size)}${file.size > CHUNK ? ' in parts' : ''}`);
      const item = h('li', { class: 'panel', 'data-file': file.name }, h('strong', {}, file.name), ' ', status, bar);
      list.prepend(item);
      let sent = 0;
      // As Cloudinary's Media Library does: the file's name, made unique.
      const params = {
        folder: folder.value.trim(),
        tags: tags.value.trim(),
        upload_preset: preset.value,
        use_filename: 'true',
        unique_filename: 'true',
      };
      uploadFile(file, params, (done) => {
        sent = Math.max(sent, done);
        bar.value = Math.min(sent, file.size);
      }).then((r) => {
        bar.value = file.size;
        status.className = 'ok';
        status.replaceChildren('Uploaded as ', h('a', {
          href: `#/asset/${r.resource_type}/${r.type}/${encodePid(r.public_id)}`,
          class: 'uploaded',
        }, r.public_id));
        item.dataset.done = 'true';
      }, (e) => {
        status.className = 'error';
        status.textContent = `Failed: ${e.message}`;
        item.dataset.done = 'failed';
      });
    }
  };
  const drop = h('div', {
    class: 'drop',
    id: 'drop-zone',
    ondragover: (ev) => { ev.preventDefault(); drop.classList.add('over'); },
    ondragleave: () => drop.classList.remove('over'),
    ondrop: (ev) => {
      ev.preventDefault();
      drop.classList.remove('over');
      start(ev.dataTransfer.files);
    },
  }, h('p', {}, 'Drop files here, or'),
  h('button', { type: 'button', class: 'primary', onclick: () => input.click() }, 'Choose files'),
  h('p', { class: 'muted' }, `Files over ${fmtBytes(CHUNK)} go in parts, as the SDKs send large files.`));
  input.addEventListener('change', () => start(input.files));
  main(
    h('h1', {}, 'Upload'),
    h('div', { class: 'panel row' }, h('label', { class: 'grow' }, 'Folder', folder),
      h('label', { class: 'grow' }, 'Tags', tags), h('label', {}, 'Upload preset', preset)),
    h('p'),
    drop, input, list,
  );
  try {
    const { presets } = await api('GET', 'upload_presets');
    preset.append(...presets.map((p) => h('option', { value: p.name }, `${p.name}${p.unsigned ? ' (unsigned)' : ''}`)));
  } catch (_) {
    // Uploads work without presets.
  }
}

// ---- request log -------------------------------------------------------------------------

async function viewLog() {
  const filter = h('input', { id: 'log-filter', type: 'search', placeholder: 'path, method or message' });
  const statusSel = h('select', { id: 'log-status' },
    h('option', { value: '' }, 'any'), h('option', { value: 'ok' }, '2xx'), h('option', { value: 'bad' }, '4xx and 5xx'));
  const mine = h('input', { id: 'log-mine', type: 'checkbox', checked: true });
  const hideConsole = h('input', { id: 'log-hide-console', type: 'checkbox', checked: true });
  const body = h('tbody', { id: 'log-rows' });
  const detail = h('pre', { id: 'log-detail', hidden: true });
  let entries = [];
  const render = () => {
    const f = filter.value.trim().toLowerCase();
    const shown = entries.filter((e) => {
      if (hideConsole.checked && e.console) return false;
      if (statusSel.value === 'ok' && e.status >= 400) return false;
      if (statusSel.value === 'bad' && e.status < 400) return false;
      if (!f) return true;
      return `${e.method} ${e.path} ${e.error || ''} ${e.status}`.toLowerCase().includes(f);
    }).reverse();
    body.replaceChildren(...shown.map((e) => h('tr', {
      tabindex: '0',
      class: 'log-entry',
      'data-status': e.status,
      onclick: () => { detail.hidden = false; detail.textContent = JSON.stringify(e, null, 2); },
      onkeydown: (ev) => { if (ev.key === 'Enter') { detail.hidden = false; detail.textContent = JSON.stringify(e, null, 2); } },
    },
    h('td', { class: 'wide' }, (e.time || '').replace('T', ' ').replace('Z', '')),
    h('td', {}, e.method),
    h('td', { class: 'path' }, e.path),
    h('td', { class: `status-${String(e.status)[0]}` }, e.status),
    h('td', { class: 'wide' }, `${Number(e.duration_ms).toFixed(1)} ms`),
    h('td', { class: 'message' }, e.error || ''))));
    if (!shown.length) body.replaceChildren(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No requests yet.')));
  };
  const load = async () => {
    try {
      const q = mine.checked ? `?cloud=${encodeURIComponent(S.account.cloud_name)}&limit=500` : '?limit=500';
      entries = (await control('GET', `/requests${q}`)).requests;
      render();
    } catch (e) {
      body.replaceChildren(h('tr', {}, h('td', { colspan: 6, class: 'error' }, e.message)));
    }
  };
  const reset = (what) => h('button', {
    type: 'button',
    class: 'danger',
    id: what === 'cloud' ? 'reset-cloud' : 'reset-all',
    onclick: async () => {
      const question = what === 'cloud'
        ? `Remove every asset, preset and folder of the cloud ${S.account.cloud_name}?`
        : 'Reset everything nephos holds, in every cloud?';
      if (!window.confirm(question)) return;
      try {
        await control('POST', what === 'cloud' ? `/clouds/${encodeURIComponent(S.account.cloud_name)}/reset` : '/reset');
        toast(what === 'cloud' ? 'The cloud is empty' : 'Everything was reset');
        load();
      } catch (e) {
        toast(`Not reset: ${e.message}`);
      }
    },
  }, what === 'cloud' ? 'Reset this cloud' : 'Reset everything');
  filter.addEventListener('input', render);
  statusSel.addEventListener('change', render);
  hideConsole.addEventListener('change', render);
  mine.addEventListener('change', load);
  main(
    h('h1', {}, 'Request log'),
    h('div', { class: 'panel row' },
      h('label', { class: 'grow' }, 'Filter', filter),
      h('label', {}, 'Status', statusSel),
      h('label', {}, 'This cloud only', mine),
      h('label', {}, "Hide the console's own", hideConsole),
      h('button', { type: 'button', onclick: load }, 'Refresh'),
      reset('cloud'), reset('all')),
    h('p', { class: 'muted' }, 'The newest first; refreshed every two seconds. Select a row for its details.'),
    h('div', { class: 'panel' }, h('table', { class: 'log-table' },
      h('thead', {}, h('tr', {}, h('th', { class: 'wide' }, 'Time'), h('th', {}, 'Method'), h('th', {}, 'Path'),
        h('th', {}, 'Status'), h('th', { class: 'wide' }, 'Duration'), h('th', {}, 'Message'))),
      body)),
    detail,
  );
  await load();
  S.logTimer = setInterval(load, 2000);
}

// ---- start -------------------------------------------------------------------------------

window.addEventListener('hashchange', route);
document.addEventListener('DOMContentLoaded', () => {
  $('#switch-cloud').addEventListener('click', () => {
    S.account = null;
    sessionStorage.removeItem('nephos.account');
    location.hash = '#/';
    route();
  });
  route();
});
