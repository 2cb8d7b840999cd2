// tus-js-client (Node) against a real coffer: a multi-MiB upload in chunks, the server killed
// with SIGKILL between two chunks and restarted on the same root and port, and separately a
// connection a relay cuts off mid-PATCH; the stock client's own retries resume both to the
// exact sha256.
import { spawn, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import * as tus from 'tus-js-client';

const [bin, work] = process.argv.slice(2);
const MIB = 1024 * 1024;

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const env = {
  ...process.env,
  COFFER_SECRET_KEY: execFileSync(bin, ['gen-secret']).toString().trim(),
  COFFER_STORAGE__ROOT: path.join(work, 'tusjs-storage'),
  COFFER_SERVER__BIND: `127.0.0.1:${port}`,
  COFFER_AUTH__ARGON2_MEMORY_KIB: '1024',
  COFFER_AUTH__ARGON2_ITERATIONS: '1',
  COFFER_RATE_LIMIT__LOGIN_PER_MINUTE: '1000',
  COFFER_LOG__LEVEL: 'warn',
  // A dead PATCH's lock is a lease of twice this (at least 10 s).
  COFFER_LIMITS__UPLOAD_IDLE_TIMEOUT_SECS: '2',
};

function start() {
  return new Promise((resolve, reject) => {
    const p = spawn(bin, ['serve'], { env, cwd: work, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (b) => {
      out += b;
      if (out.includes('\n')) {
        if (out.startsWith('coffer listening on')) resolve(p);
        else reject(new Error(`coffer did not start: ${out}`));
      }
    });
    p.on('exit', (code) => reject(new Error(`coffer exited: ${code}`)));
  });
}

async function call(method, p, token, body) {
  const r = await fetch(base + p, {
    method,
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!r.ok) throw new Error(`${method} ${p}: ${r.status} ${await r.text()}`);
  return r.json();
}

function text(seed, n) {
  const parts = [];
  let len = 0;
  for (let i = 0; len < n; i++) {
    const line = createHash('sha256').update(`${seed}${i}`).digest('hex') + '\n';
    parts.push(line);
    len += line.length;
  }
  return Buffer.from(parts.join('')).subarray(0, n);
}

const sha256 = (b) => createHash('sha256').update(b).digest('hex');

function upload(data, endpoint, name, token, hooks = {}) {
  return new Promise((resolve, reject) => {
    let fileId = null;
    const u = new tus.Upload(data, {
      endpoint,
      chunkSize: MIB,
      metadata: { filename: name },
      headers: { Authorization: `Bearer ${token}` },
      // Long enough for a restart and for a dead PATCH's lock to expire.
      retryDelays: [0, 500, 1000, 2000, 3000, 5000, 5000, 5000],
      onAfterResponse(_req, res) {
        fileId = res.getHeader('Coffer-File-Id') || fileId;
      },
      onChunkComplete: hooks.onChunkComplete,
      onError: reject,
      onSuccess: () => resolve({ fileId, url: u.url }),
    });
    u.start();
  });
}

let server = await start();
try {
  await call('POST', '/api/v1/auth/register', null, {
    username: 'tusjs', email: 'tusjs@example.com', password: 'Correct-Horse-9',
  });
  const { access_token: token } = await call('POST', '/api/v1/auth/login', null, {
    username: 'tusjs', password: 'Correct-Horse-9',
  });

  // 1. SIGKILL after the second chunk, restart on the same root and port.
  let killed = false;
  const data = text('kill', 6 * MIB + 4321);
  const done = await upload(data, `${base}/api/v1/uploads`, 'killed.txt', token, {
    onChunkComplete(_size, accepted) {
      if (!killed && accepted >= 2 * MIB) {
        killed = true;
        server.removeAllListeners('exit');
        server.kill('SIGKILL');
        setTimeout(async () => {
          server = await start();
        }, 300);
      }
    },
  });
  if (!killed) throw new Error('the server was never killed');
  const f = await call('GET', `/api/v1/files/${done.fileId}`, token);
  if (f.sha256 !== sha256(data)) throw new Error(`sha256 ${f.sha256} != ${sha256(data)}`);
  console.log('== tus-js-client: killed (-9) after 2 MiB, restarted, resumed: exact sha256: ok');

  // 2. A relay that cuts the connection once, 1.5 MiB into the upload.
  const relayPort = await freePort();
  let cut = false;
  const relay = net.createServer((c) => {
    const u = net.connect(port, '127.0.0.1');
    let sent = 0;
    c.on('data', (b) => {
      sent += b.length;
      if (!cut && sent > 1.5 * MIB) {
        cut = true;
        c.destroy();
        u.destroy();
        return;
      }
      u.write(b);
    });
    u.on('data', (b) => c.write(b));
    c.on('error', () => u.destroy());
    u.on('error', () => c.destroy());
    c.on('close', () => u.destroy());
    u.on('close', () => c.destroy());
  });
  await new Promise((r) => relay.listen(relayPort, '127.0.0.1', r));
  const data2 = text('drop', 5 * MIB + 99);
  const done2 = await upload(data2, `http://127.0.0.1:${relayPort}/api/v1/uploads`, 'dropped.txt', token);
  relay.close();
  if (!cut) throw new Error('the relay never cut the connection');
  const f2 = await call('GET', `/api/v1/files/${done2.fileId}`, token);
  if (f2.sha256 !== sha256(data2)) throw new Error(`sha256 ${f2.sha256} != ${sha256(data2)}`);
  console.log('== tus-js-client: connection dropped mid-PATCH, resumed: exact sha256: ok');
} finally {
  server.removeAllListeners('exit');
  server.kill('SIGKILL');
}
process.exit(0);
