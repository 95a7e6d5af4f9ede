// Test helpers for applications that talk to nephos (a local Cloudinary stand-in).
// CommonJS, no dependencies (Node 18+: uses the global fetch).
//
//   const { startNephos } = require('./nephos');
//   const nephos = await startNephos();        // nephos serve --ephemeral --listen 127.0.0.1:0
//   process.env.CLOUDINARY_URL = nephos.cloudinaryUrl;  // BEFORE require('cloudinary'): see below
//   const cloud = await nephos.createCloud();  // an isolated cloud, e.g. one per test
//   ...
//   await nephos.stop();
//
// The binary is options.bin, else $NEPHOS_BIN, else `nephos` on PATH.
//
// The official Node SDK (cloudinary 2.x) chooses between Node's http and https modules once,
// when it is first required, from the upload_prefix of CLOUDINARY_URL (https when there is
// none). nephos speaks plain http, so CLOUDINARY_URL must hold an http upload_prefix before
// the first require('cloudinary') — any http one will do; the cloud, credentials and the
// real upload_prefix can be configured afterwards (configureCloudinary below). Otherwise calls
// fail with `Protocol "http:" not supported. Expected "https:"`.
'use strict';

const { spawn } = require('node:child_process');
const readline = require('node:readline');

const READY_TIMEOUT_MS = 30000;
const STOP_TIMEOUT_MS = 10000;

class NephosError extends Error {
  constructor(message, status, body) {
    super(message);
    this.name = 'NephosError';
    this.status = status;
    this.body = body;
  }
}

function cloudName(cloud) {
  return typeof cloud === 'string' ? cloud : cloud.cloud_name;
}

function withCname(cloud) {
  // cname: host:port of nephos, so that URLs the SDKs build point at it.
  return { ...cloud, cname: new URL(cloud.upload_prefix).host };
}

// A client of the control API (/_nephos/) of a nephos that is already running.
// baseUrl defaults to $NEPHOS_BASE_URL, controlToken to $NEPHOS_CONTROL_TOKEN.
function connectNephos(options = {}) {
  const baseUrl = (options.baseUrl || process.env.NEPHOS_BASE_URL || '').replace(/\/+$/, '');
  if (!baseUrl) throw new NephosError('connectNephos needs baseUrl (or NEPHOS_BASE_URL)');
  const controlToken = options.controlToken !== undefined
    ? options.controlToken : process.env.NEPHOS_CONTROL_TOKEN;
  const seg = (s) => encodeURIComponent(s);

  async function control(method, path, body, query) {
    const url = new URL(`${baseUrl}/_nephos/${path.replace(/^\/+/, '')}`);
    for (const [k, v] of Object.entries(query || {})) {
      if (v !== undefined && v !== null) url.searchParams.set(k, v instanceof Date ? v.toISOString() : String(v));
    }
    const headers = { 'X-Nephos-Control': '1', Accept: 'application/json' };
    if (controlToken) headers.Authorization = `Bearer ${controlToken}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new NephosError(`${method} ${url.pathname}: ${e.cause ? e.cause.message : e.message}`);
    }
    const text = await res.text();
    let json;
    try { json = text ? JSON.parse(text) : null; } catch { json = text; }
    if (!res.ok) {
      const message = (json && json.error && json.error.message) || text;
      throw new NephosError(`${method} ${url.pathname}: ${res.status} ${message}`, res.status, json);
    }
    return json;
  }

  const cloudQuery = (filters = {}) => {
    const q = { limit: 2000, ...filters };
    if (q.cloud !== undefined && q.cloud !== null) q.cloud = cloudName(q.cloud);
    return q;
  };

  return {
    baseUrl,
    controlUrl: `${baseUrl}/_nephos/`,
    control,
    // A new cloud; name and credentials generated unless given ({name, api_key, api_secret}).
    // Resolves with {cloud_name, api_key, api_secret, signature_algorithm, upload_prefix,
    // cloudinary_url, cname}.
    async createCloud(spec = {}) {
      return withCname(await control('POST', 'clouds', spec));
    },
    // Removes a cloud and everything in it, and the fault rules limited to that cloud (nephos
    // keeps those, and they would apply to a later cloud of the same name). A cloud that is
    // already gone is not an error.
    async deleteCloud(cloud) {
      const name = cloudName(cloud);
      let result = { deleted: null };
      try {
        result = await control('DELETE', `clouds/${seg(name)}`);
      } catch (e) {
        if (e.status !== 404) throw e;
      }
      for (const rule of (await control('GET', 'faults')).faults) {
        if (rule.cloud === name) {
          await control('DELETE', `faults/${seg(rule.id)}`).catch((e) => { if (e.status !== 404) throw e; });
        }
      }
      return result;
    },
    clouds: async () => (await control('GET', 'clouds')).clouds.map(withCname),
    // Back to the start: clouds made at run time removed, data wiped, request records,
    // notifications and faults cleared.
    reset: () => control('POST', 'reset'),
    resetCloud: (cloud) => control('POST', `clouds/${seg(cloudName(cloud))}/reset`),
    // Uploads a folder's files into a cloud (public IDs from the relative paths).
    seed: (cloud, path) => control('POST', `clouds/${seg(cloudName(cloud))}/seed`, path ? { path } : {}),
    // Recorded requests, oldest first: {seq, time, request_id, method, path, cloud, params,
    // status, error, duration_ms}. Filters: cloud (name or cloud object), method, path_prefix,
    // status, since (Unix time, RFC 3339 or a Date), limit (the latest N; default: all kept).
    requests: async (filters) => (await control('GET', 'requests', undefined, cloudQuery(filters))).requests,
    clearRequests: () => control('DELETE', 'requests'),
    notifications: async (filters) =>
      (await control('GET', 'notifications', undefined, cloudQuery(filters))).notifications,
    clearNotifications: () => control('DELETE', 'notifications'),
    // {method, path (glob with *), cloud, param ("name=value"), status, message, headers,
    // delay_ms, times, preset ("rate_limit")} → the rule with its id. Rules are global until
    // deleted: clear them after the test.
    addFault: (rule = {}) => control('POST', 'faults',
      rule.cloud !== undefined && rule.cloud !== null ? { ...rule, cloud: cloudName(rule.cloud) } : rule),
    faults: async () => (await control('GET', 'faults')).faults,
    deleteFault: (id) => control('DELETE', `faults/${seg(typeof id === 'object' ? id.id : id)}`),
    clearFaults: () => control('DELETE', 'faults'),
    // Holds asynchronous uploads and eager jobs until releaseAsync().
    holdAsync: () => control('POST', 'async/hold'),
    releaseAsync: () => control('POST', 'async/release'),
    asyncHeld: async () => (await control('GET', 'async')).held,
  };
}

// Starts `nephos serve --ephemeral --listen 127.0.0.1:0 [...options.args]` and resolves once it
// is ready with the connectNephos() client plus {cloudinaryUrl, caCert, readyLines, process,
// logs(), stop()}. Options: bin, args, env (default process.env), timeoutMs, log ('pipe' keeps
// the server's log for error messages and logs(); 'inherit' also copies it to stderr; the
// default is 'inherit' when NEPHOS_TEST_LOG=1).
function startNephos(options = {}) {
  const bin = options.bin || process.env.NEPHOS_BIN || 'nephos';
  const args = ['serve', '--ephemeral', '--listen', '127.0.0.1:0', ...(options.args || [])];
  const env = options.env || process.env;
  const timeoutMs = options.timeoutMs || READY_TIMEOUT_MS;
  const log = options.log || (env.NEPHOS_TEST_LOG === '1' ? 'inherit' : 'pipe');
  const tls = args.includes('--tls') || /^(1|true|yes|on)$/i.test(env.NEPHOS_TLS || '');
  const ownCert = args.includes('--tls-cert') || Boolean(env.NEPHOS_TLS_CERT);
  let controlToken = env.NEPHOS_CONTROL_TOKEN;
  if (args.includes('--control-token')) controlToken = args[args.indexOf('--control-token') + 1];

  const child = spawn(bin, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const tail = [];
  const errLines = readline.createInterface({ input: child.stderr, crlfDelay: Infinity });
  errLines.on('line', (line) => {
    tail.push(line);
    if (tail.length > 200) tail.shift();
    if (log === 'inherit') process.stderr.write(`${line}\n`);
  });
  const said = () => (tail.length ? `nephos said:\n${tail.join('\n')}` : '(nephos wrote nothing on stderr)');

  let exited = null; // {code, signal} once the process has ended (or could not start)
  const exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => { exited = { code, signal }; resolve(exited); });
    child.on('error', (error) => { if (!exited) { exited = { error }; resolve(exited); } });
  });
  const killOnExit = () => { if (!exited) child.kill('SIGTERM'); };
  process.on('exit', killOnExit);

  async function stop() {
    process.removeListener('exit', killOnExit);
    if (!exited) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => { if (!exited) child.kill('SIGKILL'); }, STOP_TIMEOUT_MS);
      await exitPromise;
      clearTimeout(timer);
    }
    errLines.close();
  }

  return new Promise((resolve, reject) => {
    const ready = { lines: [] };
    const timer = setTimeout(() => {
      ready.done = true;
      stop().finally(() => reject(new NephosError(`nephos was not ready within ${timeoutMs} ms\n${said()}`)));
    }, timeoutMs);
    const fail = (message) => {
      if (ready.done) return;
      ready.done = true;
      clearTimeout(timer);
      // let the last stderr lines arrive before quoting them
      setTimeout(() => { stop().finally(() => reject(new NephosError(`${message}\n${said()}`))); }, 50);
    };
    child.on('error', (e) => fail(`could not run ${bin}: ${e.message} (set NEPHOS_BIN or put nephos on PATH)`));
    child.on('exit', (code, signal) => fail(`nephos exited with ${signal || `status ${code}`} before it was ready`));

    const outLines = readline.createInterface({ input: child.stdout, crlfDelay: Infinity });
    outLines.on('line', (line) => {
      if (ready.done) return;
      ready.lines.push(line);
      let m;
      if ((m = /^nephos listening on (http:\/\/\S+)/.exec(line)) && !ready.baseUrl) ready.baseUrl = m[1];
      else if ((m = /^CLOUDINARY_URL=(\S+)/.exec(line))) {
        if (!ready.cloudinaryUrl && !/upload_prefix=https:/.test(m[1])) ready.cloudinaryUrl = m[1];
      } else if ((m = /^CA certificate: (.+)$/.exec(line))) ready.caCert = m[1];
      if (!ready.baseUrl || !ready.cloudinaryUrl || (tls && !ownCert && !ready.caCert)) return;

      ready.done = true;
      clearTimeout(timer);
      // Keep draining the pipes, but let the test process exit without waiting for nephos
      // (the 'exit' hook above still stops it if stop() was never called).
      child.unref();
      child.stdout.unref();
      child.stderr.unref();
      const client = connectNephos({ baseUrl: ready.baseUrl, controlToken });
      resolve({
        ...client,
        cloudinaryUrl: ready.cloudinaryUrl,
        caCert: ready.caCert,
        readyLines: ready.lines,
        process: child,
        logs: () => tail.join('\n'),
        stop,
      });
    });
  });
}

// Points the official Node SDK (require('cloudinary').v2) at a cloud made by createCloud() and
// returns a function that restores the configuration it had before. The SDK must have been
// required with an http upload_prefix in CLOUDINARY_URL (see the top of this file).
function configureCloudinary(cloudinary, cloud) {
  const config = cloudinary.config();
  const saved = { ...config };
  cloudinary.config({
    cloud_name: cloud.cloud_name,
    api_key: cloud.api_key,
    api_secret: cloud.api_secret,
    upload_prefix: cloud.upload_prefix,
    signature_algorithm: cloud.signature_algorithm || 'sha1',
    cname: withCname(cloud).cname,
    secure: false,
    private_cdn: false,
    secure_distribution: undefined,
    cdn_subdomain: false,
  });
  return function restore() {
    const current = cloudinary.config();
    for (const key of Object.keys(current)) delete current[key];
    Object.assign(current, saved);
  };
}

module.exports = { startNephos, connectNephos, configureCloudinary, NephosError };
