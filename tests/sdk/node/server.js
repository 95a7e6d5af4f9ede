// Starts the nephos binary for a test file and resolves with its base URL.
'use strict';
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const ROOT = path.resolve(__dirname, '..', '..', '..');
const ASSETS = path.join(ROOT, 'tests', 'sdk', 'assets');
const SDK_CONFIG = path.join(ROOT, 'tests', 'sdk', 'nephos-sdk.toml');

// options (all optional):
// - args: extra `nephos serve` arguments, e.g. ['--tls'];
// - config: configuration file (default: tests/sdk/nephos-sdk.toml); null starts without one
//   (then give accounts with args, e.g. ['--account', 'cloudinary://KEY:SECRET@CLOUD']).
// Resolves with { base, stop() } on the first ready line. With --tls it also sets httpsBase
// (https:// on the same port) and, when nephos made its local CA (no --tls-cert), waits for
// the `CA certificate:` line and sets ca to that file's path.
function startServer(options = {}) {
  const bin = process.env.NEPHOS_BIN
    ? path.resolve(process.env.NEPHOS_BIN)
    : path.join(ROOT, 'target', 'debug', 'nephos');
  if (!fs.existsSync(bin)) throw new Error(`nephos binary not found at ${bin}`);
  const extra = options.args || [];
  const config = options.config === undefined ? SDK_CONFIG : options.config;
  const tls = extra.includes('--tls');
  const waitForCa = tls && !extra.includes('--tls-cert');
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nephos-sdk-node-'));
  const args = ['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir];
  if (config) args.push('--config', config);
  args.push(...extra);
  // Without --config, nephos reads config/nephos.toml of its working directory when present:
  // start it in the (empty) data dir so that no such file applies.
  const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'inherit'], cwd: config ? undefined : dataDir });
  return new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: proc.stdout });
    const server = {
      stop() {
        proc.kill('SIGTERM');
        fs.rmSync(dataDir, { recursive: true, force: true });
      },
    };
    rl.on('line', (line) => {
      if (line.startsWith('nephos listening on ')) {
        const url = line.slice('nephos listening on '.length).trim().split(' ')[0];
        if (url.startsWith('https://')) server.httpsBase = url;
        else if (!server.base) server.base = url;
        if (server.base && (!tls || (!waitForCa && server.httpsBase))) resolve(server);
      } else if (waitForCa && line.startsWith('CA certificate: ')) {
        server.ca = line.slice('CA certificate: '.length).trim();
        if (!server.base || !server.httpsBase) reject(new Error('nephos --tls printed no http and https addresses'));
        else resolve(server);
      }
    });
    proc.on('exit', (code) => reject(new Error(`nephos exited with ${code}`)));
  });
}

module.exports = { startServer, ASSETS, asset: (name) => path.join(ASSETS, name) };
