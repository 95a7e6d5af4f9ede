// Starts the nephos binary for a test file and resolves with its base URL.
'use strict';
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const ROOT = path.resolve(__dirname, '..', '..', '..');
const ASSETS = path.join(ROOT, 'tests', 'sdk', 'assets');

function startServer() {
  const bin = process.env.NEPHOS_BIN
    ? path.resolve(process.env.NEPHOS_BIN)
    : path.join(ROOT, 'target', 'debug', 'nephos');
  if (!fs.existsSync(bin)) throw new Error(`nephos binary not found at ${bin}`);
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nephos-sdk-node-'));
  const proc = spawn(bin, ['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir,
    '--config', path.join(ROOT, 'tests', 'sdk', 'nephos-sdk.toml')], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: proc.stdout });
    rl.on('line', (line) => {
      if (line.startsWith('nephos listening on ')) {
        const base = line.slice('nephos listening on '.length).trim();
        resolve({
          base,
          stop() {
            proc.kill('SIGTERM');
            fs.rmSync(dataDir, { recursive: true, force: true });
          },
        });
      }
    });
    proc.on('exit', (code) => reject(new Error(`nephos exited with ${code}`)));
  });
}

module.exports = { startServer, ASSETS, asset: (name) => path.join(ASSETS, name) };
