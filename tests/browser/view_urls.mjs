// View URLs, framing and preflights in a real browser (Debian's chromium, driven by
// playwright-core). Run by tests/api/browser.rs against a real coffer server:
//
//   COFFER_API=http://127.0.0.1:<port>   the server (CORS allows the page origin, and
//                                        serving.frame_ancestors lists it)
//   COFFER_TOKEN=<access token>          a user's bearer token
//   COFFER_API_KEY=<API key>             the same user's API key (the app's backend, which
//                                        mints upload grants for the page)
//   PAGE_PORT, OTHER_PORT                two free loopback ports: the page's origin (allowed)
//                                        and another origin (neither CORS nor framing)
//   CHROMIUM=/usr/bin/chromium           the browser
//   SHOTS=<dir>                          optional: where to write screenshots
//
// Prints one line per check ("ok ..." or "FAIL ..."), exits 1 if any failed.

import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const API = process.env.COFFER_API;
const TOKEN = process.env.COFFER_TOKEN;
const API_KEY = process.env.COFFER_API_KEY;
const PAGE = `http://127.0.0.1:${process.env.PAGE_PORT}`;
const OTHER = `http://127.0.0.1:${process.env.OTHER_PORT}`;
const SHOTS = process.env.SHOTS;

let failed = 0;
function check(name, ok, detail = '') {
  if (ok) {
    console.log(`ok ${name}`);
  } else {
    failed += 1;
    console.log(`FAIL ${name}${detail ? `: ${detail}` : ''}`);
  }
}

// Both origins serve one empty page (everything else happens in page.evaluate), Uppy's
// bundle and the README's Uppy recipe.
const MODULES = {
  '/uppy.min.mjs': new URL('./node_modules/uppy/dist/uppy.min.mjs', import.meta.url),
  '/uppy_recipe.mjs': new URL('./uppy_recipe.mjs', import.meta.url),
};
function serve(port) {
  const server = http.createServer((req, res) => {
    const module = MODULES[req.url];
    if (module) {
      res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' });
      res.end(fs.readFileSync(module));
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end('<!doctype html><meta charset="utf-8"><title>app</title><body></body>');
  });
  return new Promise((resolve) => server.listen(Number(port), '127.0.0.1', () => resolve(server)));
}

/// Preflights (OPTIONS) the server has answered so far, from its own metrics.
async function preflights() {
  const text = await (await fetch(`${API}/metrics`)).text();
  let n = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('coffer_http_requests_total{method="OPTIONS"')) {
      n += Number(line.split(' ').pop());
    }
  }
  return n;
}

/// A one-page PDF that draws a line of text (xref offsets computed, so no repair is needed).
function pdfDocument(text) {
  const objects = [
    '<< /Type /Catalog /Pages 2 0 R >>',
    '<< /Type /Pages /Kids [3 0 R] /Count 1 >>',
    '<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 144] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>',
    null,
    '<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>',
  ];
  const stream = `BT /F1 24 Tf 40 60 Td (${text}) Tj ET`;
  objects[3] = `<< /Length ${stream.length} >>\nstream\n${stream}\nendstream`;
  let out = '%PDF-1.4\n';
  const offsets = [];
  objects.forEach((body, i) => {
    offsets.push(out.length);
    out += `${i + 1} 0 obj\n${body}\nendobj\n`;
  });
  const xref = out.length;
  out += `xref\n0 ${objects.length + 1}\n0000000000 65535 f \n`;
  for (const o of offsets) out += `${String(o).padStart(10, '0')} 00000 n \n`;
  out += `trailer\n<< /Size ${objects.length + 1} /Root 1 0 R >>\nstartxref\n${xref}\n%%EOF\n`;
  return out;
}

// Runs in the page: a WebM (VP8, one key frame per cluster, Cues before the clusters so a
// seek goes straight to its byte offset) of noisy frames, encoded with WebCodecs. About
// 8 MB, so the middle is far beyond what the browser buffers on its own.
async function makeWebm() {
  const W = 640, H = 360, FPS = 10, FRAMES = 60;
  const canvas = new OffscreenCanvas(W, H);
  const ctx = canvas.getContext('2d');
  const chunks = [];
  const encoder = new VideoEncoder({
    output: (chunk) => {
      const data = new Uint8Array(chunk.byteLength);
      chunk.copyTo(data);
      chunks.push({ ts: chunk.timestamp, data });
    },
    error: (e) => { throw e; },
  });
  encoder.configure({ codec: 'vp8', width: W, height: H, bitrate: 12_000_000, framerate: FPS });
  let seed = 1;
  const rand = () => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed; };
  for (let i = 0; i < FRAMES; i++) {
    const img = ctx.createImageData(W, H);
    for (let p = 0; p < img.data.length; p += 4) {
      const v = rand() & 0xff;
      img.data[p] = v; img.data[p + 1] = (v * 7) & 0xff; img.data[p + 2] = (i * 4) & 0xff; img.data[p + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    const frame = new VideoFrame(canvas, { timestamp: Math.round((i * 1e6) / FPS) });
    encoder.encode(frame, { keyFrame: true });
    frame.close();
  }
  await encoder.flush();

  // EBML: an id's bytes, then a size (one byte when it fits, else eight), then the payload.
  const cat = (parts) => {
    const len = parts.reduce((n, p) => n + p.length, 0);
    const out = new Uint8Array(len);
    let o = 0;
    for (const p of parts) { out.set(p, o); o += p.length; }
    return out;
  };
  const size8 = (n) => {
    const b = new Uint8Array(8);
    b[0] = 0x01;
    let v = n;
    for (let i = 7; i >= 1; i--) { b[i] = v % 256; v = Math.floor(v / 256); }
    return b;
  };
  const size = (n) => (n < 127 ? new Uint8Array([0x80 | n]) : size8(n));
  const el = (id, payload) => cat([new Uint8Array(id), size(payload.length), payload]);
  const uint = (n, width = 8) => {
    const b = new Uint8Array(width);
    let v = n;
    for (let i = width - 1; i >= 0; i--) { b[i] = v % 256; v = Math.floor(v / 256); }
    return b;
  };
  const str = (s) => new TextEncoder().encode(s);
  const float64 = (f) => { const b = new Uint8Array(8); new DataView(b.buffer).setFloat64(0, f); return b; };

  const header = el([0x1a, 0x45, 0xdf, 0xa3], cat([
    el([0x42, 0x86], uint(1, 1)), el([0x42, 0xf7], uint(1, 1)), el([0x42, 0xf2], uint(4, 1)),
    el([0x42, 0xf3], uint(8, 1)), el([0x42, 0x82], str('webm')), el([0x42, 0x87], uint(2, 1)),
    el([0x42, 0x85], uint(2, 1)),
  ]));
  const durationMs = (FRAMES * 1000) / FPS;
  const info = el([0x15, 0x49, 0xa9, 0x66], cat([
    el([0x2a, 0xd7, 0xb1], uint(1_000_000, 4)), el([0x44, 0x89], float64(durationMs)),
    el([0x4d, 0x80], str('coffer-test')), el([0x57, 0x41], str('coffer-test')),
  ]));
  const tracks = el([0x16, 0x54, 0xae, 0x6b], el([0xae], cat([
    el([0xd7], uint(1, 1)), el([0x73, 0xc5], uint(1, 4)), el([0x83], uint(1, 1)),
    el([0x86], str('V_VP8')),
    el([0xe0], cat([el([0xb0], uint(W, 2)), el([0xba], uint(H, 2))])),
  ])));
  const clusters = chunks.map((c) => {
    const ms = Math.round(c.ts / 1000);
    // SimpleBlock: track 1 (0x81), relative time 0, flags: key frame.
    const block = cat([new Uint8Array([0x81, 0x00, 0x00, 0x80]), c.data]);
    return { ms, bytes: el([0x1f, 0x43, 0xb6, 0x75], cat([el([0xe7], uint(ms, 4)), el([0xa3], block)])) };
  });
  // Cues have a fixed size (8-byte positions), so the clusters' offsets are known first.
  const cueSize = (positions) => el([0x1c, 0x53, 0xbb, 0x6b], cat(clusters.map((c, i) => el([0xbb], cat([
    el([0xb3], uint(c.ms, 8)),
    el([0xb7], cat([el([0xf7], uint(1, 1)), el([0xf1], uint(positions[i], 8))])),
  ])))));
  const zeros = clusters.map(() => 0);
  const cuesLen = cueSize(zeros).length;
  // SeekHead: where Info, Tracks and Cues are (positions relative to the segment's data).
  const seekEntry = (id, pos) => el([0x4d, 0xbb], cat([el([0x53, 0xab], new Uint8Array(id)), el([0x53, 0xac], uint(pos, 8))]));
  const seekLen = el([0x11, 0x4d, 0x9b, 0x74], cat([seekEntry([1, 2, 3, 4], 0), seekEntry([1, 2, 3, 4], 0), seekEntry([1, 2, 3, 4], 0)])).length;
  const infoAt = seekLen, tracksAt = infoAt + info.length, cuesAt = tracksAt + tracks.length;
  let at = cuesAt + cuesLen;
  const positions = clusters.map((c) => { const p = at; at += c.bytes.length; return p; });
  const seekHead = el([0x11, 0x4d, 0x9b, 0x74], cat([
    seekEntry([0x15, 0x49, 0xa9, 0x66], infoAt), seekEntry([0x16, 0x54, 0xae, 0x6b], tracksAt),
    seekEntry([0x1c, 0x53, 0xbb, 0x6b], cuesAt),
  ]));
  const segment = el([0x18, 0x53, 0x80, 0x67], cat([seekHead, info, tracks, cueSize(positions), ...clusters.map((c) => c.bytes)]));
  return new Blob([header, segment], { type: 'video/webm' });
}

async function main() {
  const servers = [await serve(process.env.PAGE_PORT), await serve(process.env.OTHER_PORT)];
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'coffer-chromium-'));
  // A fresh profile (launchPersistentContext passes it as --user-data-dir).
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    viewport: { width: 900, height: 700 },
  });
  try {
    await run(context);
  } finally {
    await context.close();
    for (const s of servers) s.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

async function run(context) {
  const page = context.pages()[0] || await context.newPage();
  const seen = [];
  context.on('response', (r) => {
    const req = r.request();
    seen.push({ url: r.url(), status: r.status(), method: req.method(), range: req.headers().range });
  });
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(m.text()));
  const dialogs = [];
  page.on('dialog', (d) => { dialogs.push(d.message()); d.dismiss(); });
  await page.goto(`${PAGE}/`);

  // The page uploads its files with fetch and a bearer token (CORS), then mints view URLs.
  const pdf = pdfDocument('coffer inline PDF');
  const script = '<script>alert("ran")</script><img src=x onerror="alert(\'ran\')"> plain text';
  const ids = await page.evaluate(async ({ API, TOKEN, pdf, script, makeWebm }) => {
    const auth = { Authorization: `Bearer ${TOKEN}` };
    const upload = async (name, body) => {
      const r = await fetch(`${API}/api/v1/files?filename=${name}`, { method: 'POST', headers: auth, body });
      if (r.status !== 201) throw new Error(`upload ${name}: ${r.status} ${await r.text()}`);
      return (await r.json());
    };
    const canvas = new OffscreenCanvas(64, 48);
    const ctx = canvas.getContext('2d');
    ctx.fillStyle = '#c33'; ctx.fillRect(0, 0, 64, 48);
    const png = await canvas.convertToBlob({ type: 'image/png' });
    // eslint-disable-next-line no-new-func
    const webm = await (new Function(`return (${makeWebm})`)())();
    const files = {
      png: await upload('pic.png', png),
      pdf: await upload('doc.pdf', new Blob([pdf], { type: 'application/pdf' })),
      txt: await upload('note.txt', new Blob([script], { type: 'text/plain' })),
      webm: await upload('clip.webm', webm),
    };
    const views = {};
    for (const [k, f] of Object.entries(files)) {
      const r = await fetch(`${API}/api/v1/files/${f.id}/view-url`, {
        method: 'POST', headers: { ...auth, 'Content-Type': 'application/json' },
        body: JSON.stringify({ expires_in: 600 }),
      });
      if (r.status !== 201) throw new Error(`view-url ${k}: ${r.status}`);
      views[k] = `${API}${(await r.json()).url}`;
    }
    return { files, views };
  }, { API, TOKEN, pdf, script, makeWebm: makeWebm.toString() });
  const { files, views } = ids;
  check('the page uploaded a PNG, a PDF, a text file and a WebM', files.webm.size > 4_000_000, `webm ${files.webm.size} bytes`);

  // Preflights are cached: 10 calls to each of two new URLs with a bearer token.
  let before = await preflights();
  await page.evaluate(async ({ API, TOKEN, id }) => {
    const auth = { Authorization: `Bearer ${TOKEN}` };
    for (let i = 0; i < 10; i++) {
      for (const url of [`${API}/api/v1/users/me`, `${API}/api/v1/files/${id}`]) {
        const r = await fetch(url, { headers: auth });
        if (r.status !== 200) throw new Error(`${url}: ${r.status}`);
      }
    }
  }, { API, TOKEN, id: files.png.id });
  const cached = (await preflights()) - before;
  check('preflights are cached: 20 calls to 2 URLs, 2 preflights', cached === 2, `${cached} preflights`);

  // <img> and <video> from view URLs: no preflight, no credentials.
  before = await preflights();
  const media = await page.evaluate(async ({ views }) => {
    const img = new Image();
    img.src = views.png;
    await img.decode();
    document.body.append(img);
    const video = document.createElement('video');
    video.preload = 'metadata';
    video.muted = true;
    video.src = views.webm;
    document.body.append(video);
    await new Promise((ok, fail) => { video.onloadedmetadata = ok; video.onerror = () => fail(new Error(`video error ${video.error && video.error.message}`)); });
    const duration = video.duration;
    video.currentTime = duration / 2;
    await new Promise((ok) => { video.onseeked = ok; });
    await new Promise((ok) => { if (video.readyState >= 2) ok(); else video.onloadeddata = ok; });
    return { width: img.naturalWidth, height: img.naturalHeight, duration, at: video.currentTime, ready: video.readyState };
  }, { views });
  check('an <img> shows a private file from its view URL', media.width === 64 && media.height === 48, JSON.stringify(media));
  check('a <video> plays from its view URL and seeks to the middle', media.duration === 6 && Math.abs(media.at - 3) < 0.01 && media.ready >= 2, JSON.stringify(media));
  const videoResponses = seen.filter((s) => s.url === views.webm);
  const middle = videoResponses.filter((s) => {
    const m = /^bytes=(\d+)-/.exec(s.range || '');
    return s.status === 206 && m && Number(m[1]) > files.webm.size / 4;
  });
  check('seeking to the middle was served a 206 from the middle of the file', middle.length >= 1,
    JSON.stringify(videoResponses.map((s) => [s.status, s.range])));
  const mediaPreflights = (await preflights()) - before;
  check('<img> and <video> from view URLs send no preflight', mediaPreflights === 0, `${mediaPreflights}`);
  if (SHOTS) await page.screenshot({ path: path.join(SHOTS, 'media.png') });

  // A PDF in an iframe of an allowed ancestor renders; another origin may not frame it.
  const pdfFrame = await framed(page, `${views.pdf}&disposition=inline`);
  check('a PDF is framed by an allowed ancestor', pdfFrame.url === `${views.pdf}&disposition=inline`, pdfFrame.url);
  check("the PDF renders in Chromium's viewer", pdfFrame.viewer, JSON.stringify(pdfFrame));
  if (SHOTS) await page.screenshot({ path: path.join(SHOTS, 'pdf-allowed.png') });
  const other = await context.newPage();
  const otherConsole = [];
  other.on('console', (m) => otherConsole.push(m.text()));
  await other.goto(`${OTHER}/`);
  const refused = await framed(other, `${views.pdf}&disposition=inline`);
  check('another origin may not frame it', refused.url.startsWith('chrome-error://') && !refused.viewer, JSON.stringify(refused));
  check('the browser says why (frame-ancestors)', otherConsole.some((l) => l.includes('frame-ancestors')), JSON.stringify(otherConsole));
  if (SHOTS) await other.screenshot({ path: path.join(SHOTS, 'pdf-refused.png') });
  await other.close();

  // A text file shown inline runs no script, framed or opened on its own.
  const messages = [];
  await page.exposeFunction('reportMessage', (m) => messages.push(m));
  await page.evaluate(() => window.addEventListener('message', (e) => window.reportMessage(String(e.data))));
  const textFrame = await framed(page, `${views.txt}&disposition=inline`);
  const shown = await page.frame({ url: `${views.txt}&disposition=inline` })?.evaluate(() => document.body.innerText);
  check('a text file is framed and shown as text', textFrame.url.startsWith(views.txt) && (shown || '').includes('<script>alert("ran")</script>'), JSON.stringify(shown));
  const alone = await context.newPage();
  const aloneDialogs = [];
  alone.on('dialog', (d) => { aloneDialogs.push(d.message()); d.dismiss(); });
  await alone.goto(`${views.txt}&disposition=inline`);
  await alone.waitForTimeout(500);
  const scripts = await alone.evaluate(() => document.querySelectorAll('script').length);
  check('a text file opened inline runs no script', aloneDialogs.length === 0 && dialogs.length === 0 && scripts === 0 && messages.length === 0,
    JSON.stringify({ aloneDialogs, dialogs, scripts, messages }));
  await alone.close();

  await uppyRecipe(page);
  await uppyWithGrant(page);
  await uppyTus(page);

  // Revocation: the next request through any earlier view URL is a 401. (The browser turns a
  // 401 problem+json answer to an <img> into a network error (ORB), so the status is read
  // from the server's own counters.)
  const revoke = await page.evaluate(async ({ API, TOKEN }) => {
    const r = await fetch(`${API}/api/v1/users/me/revoke-view-urls`, { method: 'POST', headers: { Authorization: `Bearer ${TOKEN}` } });
    return r.status;
  }, { API, TOKEN });
  check('revocation answers 204', revoke === 204, `${revoke}`);
  const refusedBefore = await contentStatus(401);
  const loaded = await page.evaluate(async ({ views }) => {
    const img = new Image();
    img.src = `${views.png}&after=revoke`;
    return img.decode().then(() => true, () => false);
  }, { views });
  const refusedImg = (await contentStatus(401)) - refusedBefore;
  check('after revocation the <img> fails, its request answered 401', !loaded && refusedImg === 1, JSON.stringify({ loaded, refusedImg }));
  const direct = await page.evaluate(async ({ views }) => (await fetch(views.webm, { headers: { Range: 'bytes=0-99' } })).status, { views });
  check('after revocation a fetch of the video view URL is a 401', direct === 401, `${direct}`);
}

/// The README's Uppy recipe: coffer's problem detail is the error, a refusal is sent once, a
/// network failure is retried.
async function uppyRecipe(page) {
  const refusedBefore = await uploadStatus(415);
  const r = await page.evaluate(async ({ API, TOKEN }) => {
    const { Uppy, XHRUpload } = await import('/uppy.min.mjs');
    const { cofferUppy } = await import('/uppy_recipe.mjs');
    const uppy = cofferUppy({ Uppy, XHRUpload }, { api: API, getToken: () => TOKEN });
    const errors = [];
    uppy.on('upload-error', (file, error) => errors.push(error.message));
    uppy.addFile({ name: 'hello.txt', type: 'text/plain', data: new Blob(['hello from uppy']) });
    uppy.addFile({ name: 'tool.exe', type: 'application/octet-stream', data: new Blob(['MZ not welcome']) });
    const result = await uppy.upload();
    // What coffer itself says about that file.
    const direct = await fetch(`${API}/api/v1/files?filename=tool.exe`, {
      method: 'POST', headers: { Authorization: `Bearer ${TOKEN}` }, body: 'MZ not welcome',
    });
    const detail = (await direct.json()).detail;
    // The server is unreachable: retried (three more tries), then reported.
    const attempts = [];
    const down = cofferUppy({ Uppy, XHRUpload }, { api: 'http://127.0.0.1:9', getToken: () => TOKEN, onAttempt: (n) => attempts.push(n) });
    down.addFile({ name: 'later.txt', type: 'text/plain', data: new Blob(['later']) });
    const offline = await down.upload();
    return {
      ok: result.successful.map((f) => [f.name, f.response.status, f.response.body.filename]),
      failed: result.failed.map((f) => [f.name, f.error]),
      errors, detail, attempts, offline: offline.failed.length,
    };
  }, { API, TOKEN });
  const refused = (await uploadStatus(415)) - refusedBefore;
  check('Uppy (the recipe) uploads through CORS', JSON.stringify(r.ok) === JSON.stringify([['hello.txt', 201, 'hello.txt']]), JSON.stringify(r));
  check("Uppy shows coffer's problem detail", r.failed.length === 1 && r.failed[0][1] === r.detail && r.errors[0] === r.detail && /not accepted/.test(r.detail), JSON.stringify(r));
  check('Uppy does not retry a refusal (one 415 from Uppy, one from the direct call)', refused === 2, `${refused}`);
  check('Uppy retries a network failure', JSON.stringify(r.attempts) === '[0,1,2,3]' && r.offline === 1, JSON.stringify(r.attempts));
}

/// The recipe with only an upload grant: the backend (this script, with its API key) mints
/// it, the page uploads with it through Uppy, and the backend then lists the grant's files.
async function uppyWithGrant(page) {
  const minted = await fetch(`${API}/api/v1/upload-grants`, {
    method: 'POST',
    headers: { 'X-API-Key': API_KEY, 'Content-Type': 'application/json' },
    body: JSON.stringify({ max_uploads: 3, extensions: ['txt', 'png'], expires_in: 300 }),
  });
  const grant = await minted.json();
  check('the backend mints a grant with its API key', minted.status === 201 && grant.token.startsWith('cgr_'), JSON.stringify(grant));
  const r = await page.evaluate(async ({ API, GRANT }) => {
    const { Uppy, XHRUpload } = await import('/uppy.min.mjs');
    const { cofferUppy } = await import('/uppy_recipe.mjs');
    const uppy = cofferUppy({ Uppy, XHRUpload }, { api: API, getGrant: () => GRANT });
    const errors = [];
    uppy.on('upload-error', (file, error) => errors.push(error.message));
    uppy.addFile({ name: 'one.txt', type: 'text/plain', data: new Blob(['granted one']) });
    uppy.addFile({ name: 'two.txt', type: 'text/plain', data: new Blob(['granted two']) });
    const first = await uppy.upload();
    // A resumable upload in 256 KiB chunks with the same grant (Uppy's Tus plugin).
    const { Tus } = await import('/uppy.min.mjs');
    const { cofferTusUppy } = await import('/uppy_recipe.mjs');
    const tus = cofferTusUppy({ Uppy, Tus }, { api: API, getGrant: () => GRANT, chunkSize: 256 * 1024 });
    tus.addFile({ name: 'big.txt', type: 'text/plain', data: new Blob(['x'.repeat(700 * 1024)]) });
    const resumable = await tus.upload();
    const tusIds = resumable.successful.map((f) => f.response.uploadURL.split('/').pop());
    // Used up now: a fourth file is refused, with coffer's words.
    uppy.addFile({ name: 'three.txt', type: 'text/plain', data: new Blob(['one too many']) });
    const third = await uppy.upload();
    // The grant is no credential for anything else.
    const list = await fetch(`${API}/api/v1/files`, { headers: { 'Upload-Grant': GRANT } });
    return {
      ok: first.successful.map((f) => [f.name, f.response.status, f.response.body.id, f.response.body.grant_id]),
      tusIds, tusFailed: resumable.failed.map((f) => String(f.error)),
      failed: third.failed.map((f) => f.name),
      errors, listStatus: list.status,
    };
  }, { API, GRANT: grant.token });
  const ids = [...r.ok.map((f) => f[2]), ...r.tusIds].sort();
  check('Uppy uploads with only a grant', r.ok.length === 2 && r.ok.every((f) => f[1] === 201 && f[3] === grant.id), JSON.stringify(r));
  check("Uppy's Tus plugin uploads in chunks with only a grant", r.tusIds.length === 1 && r.tusFailed.length === 0, JSON.stringify(r));
  check('a used-up grant is refused, in coffer\'s words', r.failed.length === 1 && /grant/.test(r.errors[0] || ''), JSON.stringify(r));
  check('a grant cannot list files', r.listStatus === 401, `${r.listStatus}`);
  const detail = await (await fetch(`${API}/api/v1/upload-grants/${grant.id}`, { headers: { 'X-API-Key': API_KEY } })).json();
  check("the backend lists the grant's files", detail.uses === 3 && JSON.stringify([...detail.file_ids].sort()) === JSON.stringify(ids), JSON.stringify(detail));
}

/// The README's tus variant: Uppy's Tus plugin uploads a multi-MiB file in chunks through
/// CORS, and the stored file has the same sha256.
async function uppyTus(page) {
  const refusedBefore = await tusCreations(415);
  const r = await page.evaluate(async ({ API, TOKEN }) => {
    const { Uppy, Tus } = await import('/uppy.min.mjs');
    const { cofferTusUppy, tusProblemDetail } = await import('/uppy_recipe.mjs');
    const uppy = cofferTusUppy({ Uppy, Tus }, { api: API, getToken: () => TOKEN, chunkSize: 1024 * 1024 });
    const bytes = new Uint8Array(3 * 1024 * 1024 + 17);
    for (let i = 0; i < bytes.length; i++) bytes[i] = 97 + (i % 26);
    const want = [...new Uint8Array(await crypto.subtle.digest('SHA-256', bytes))]
      .map((b) => b.toString(16).padStart(2, '0')).join('');
    uppy.addFile({ name: 'letters.txt', type: 'text/plain', data: new Blob([bytes]) });
    const result = await uppy.upload();
    const done = result.successful.map((f) => f.response.uploadURL);
    const id = done.length === 1 ? done[0].split('/').pop() : null;
    const file = id ? await (await fetch(`${API}/api/v1/files/${id}`, { headers: { Authorization: `Bearer ${TOKEN}` } })).json() : null;
    // A refused file: coffer's detail reaches the page, and it is not tried again.
    const refusing = cofferTusUppy({ Uppy, Tus }, { api: API, getToken: () => TOKEN });
    const shown = [];
    refusing.on('upload-error', (f, err) => shown.push(tusProblemDetail(err)));
    refusing.addFile({ name: 'tool.exe', type: 'application/octet-stream', data: new Blob(['MZ not welcome']) });
    await refusing.upload();
    return { done, failed: result.failed.map((f) => String(f.error)), want, file, shown };
  }, { API, TOKEN });
  const refused = (await tusCreations(415)) - refusedBefore;
  check("Uppy Tus shows coffer's problem detail and does not retry a refusal",
    r.shown.length === 1 && /not accepted/.test(r.shown[0]) && refused === 1, JSON.stringify({ shown: r.shown, refused }));
  check('Uppy Tus (the recipe) uploads 3 MiB in 1 MiB chunks through CORS to the exact sha256',
    r.file && r.file.sha256 === r.want && r.file.filename === 'letters.txt' && r.failed.length === 0, JSON.stringify(r));
}

/// Answers of the tus creation route with this status so far (the server's metrics).
async function tusCreations(status) {
  const text = await (await fetch(`${API}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('coffer_http_requests_total{method="POST",route="/api/v1/uploads",status="' + status + '"}'));
  return line ? Number(line.split(' ').pop()) : 0;
}

/// Answers of the upload route with this status so far (the server's metrics).
async function uploadStatus(status) {
  const text = await (await fetch(`${API}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('coffer_http_requests_total{method="POST",route="/api/v1/files",status="' + status + '"}'));
  return line ? Number(line.split(' ').pop()) : 0;
}

/// Answers of the content route with this status so far (the server's metrics).
async function contentStatus(status) {
  const text = await (await fetch(`${API}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('coffer_http_requests_total{method="GET",route="/api/v1/files/{id}/content",status="' + status + '"}'));
  return line ? Number(line.split(' ').pop()) : 0;
}

/// Put `src` into an iframe of `page`; report where the frame ended up and whether
/// Chromium's PDF viewer runs inside it.
async function framed(page, src) {
  await page.evaluate(async (src) => {
    const f = document.createElement('iframe');
    f.width = 600; f.height = 300;
    f.src = src;
    const loaded = new Promise((ok) => { f.onload = ok; });
    document.body.append(f);
    await loaded;
  }, src);
  // The viewer attaches its own frames after the load event.
  await page.waitForTimeout(1500);
  const frame = page.frames().find((f) => f.parentFrame() === page.mainFrame() && (f.url() === src || f.url().startsWith('chrome-error://')));
  const all = page.frames().map((f) => f.url());
  const viewer = !!frame && frame.childFrames().some((c) => c.url().startsWith('chrome-extension://'));
  return { url: frame ? frame.url() : 'none', viewer, frames: all };
}

main().then(() => {
  console.log(failed === 0 ? 'all checks passed' : `${failed} checks failed`);
  process.exit(failed === 0 ? 0 : 1);
}, (e) => {
  console.log(`FAIL unexpected error: ${e.stack || e}`);
  process.exit(1);
});
