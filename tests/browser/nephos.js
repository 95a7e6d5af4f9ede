// Starts the nephos binary for a browser test: a new data dir, the SDK suites' configuration,
// an ephemeral port; resolves to { base, stop } once it listens.
//
//   NEPHOS_BIN  the nephos binary (default: ../../target/debug/nephos)
'use strict';
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const ROOT = path.resolve(__dirname, '..', '..');
const CONFIG = path.join(ROOT, 'tests', 'sdk', 'nephos-sdk.toml');

function startNephos(prefix) {
  const bin = process.env.NEPHOS_BIN
    ? path.resolve(process.env.NEPHOS_BIN)
    : path.join(ROOT, 'target', 'debug', 'nephos');
  if (!fs.existsSync(bin)) throw new Error(`nephos binary not found at ${bin} (set NEPHOS_BIN)`);
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const proc = spawn(bin, ['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--config', CONFIG], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const stop = () => {
    proc.kill('SIGTERM');
    fs.rmSync(dataDir, { recursive: true, force: true });
  };
  return new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: proc.stdout });
    rl.on('line', (line) => {
      if (line.startsWith('nephos listening on ')) {
        resolve({ base: line.slice('nephos listening on '.length).trim(), stop });
      }
    });
    proc.on('error', reject);
    proc.on('exit', (code, signal) => reject(new Error(`nephos exited (${code ?? signal}) before listening`)));
  });
}

module.exports = { ROOT, startNephos };
