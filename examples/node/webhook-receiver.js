// An example receiver of the reconciler's webhooks (Node.js, no npm packages).
//
// It checks the signature and the timestamp, keeps each notification once
// (Idempotency-Key) and answers 2xx only after it has kept it, so the
// reconciler retries anything it did not answer. Replace handle() with what
// your CRM does, e.g. socketManager.emit(...) (see docs/notifications.md).
//
//   WEBHOOK_SECRET=... node webhook-receiver.js --port 8080
//
// Each accepted notification is printed as one JSON line.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');

const TOLERANCE_S = 300; // older (or this far in the future) is a replay: refused
const MAX_BODY_BYTES = 1048576;

function verify(secret, header, body, nowS = Date.now() / 1000) {
  const parts = Object.fromEntries(
    (header || '').split(',').filter((p) => p.includes('=')).map((p) => {
      const i = p.indexOf('=');
      return [p.slice(0, i), p.slice(i + 1)];
    }));
  const t = Number.parseInt(parts.t, 10);
  if (!Number.isFinite(t) || Math.abs(nowS - t) > TOLERANCE_S) return false;
  const expected = crypto.createHmac('sha256', secret)
    .update(`${t}.`).update(body).digest('hex');
  const given = Buffer.from(parts.v1 || '', 'utf8');
  const wanted = Buffer.from(expected, 'utf8');
  return given.length === wanted.length && crypto.timingSafeEqual(given, wanted);
}

// A real CRM keeps the keys in its database (a unique constraint, in the same
// transaction as the change it makes).
const seen = new Set();

function handle(notification) {
  process.stdout.write(JSON.stringify(notification) + '\n');
}

function answer(res, status, body) {
  res.writeHead(status, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify(body));
}

function secretFromEnv() {
  if (process.env.WEBHOOK_SECRET) return process.env.WEBHOOK_SECRET;
  if (process.env.WEBHOOK_SECRET_FILE) return fs.readFileSync(process.env.WEBHOOK_SECRET_FILE, 'utf8').trim();
  console.error('set WEBHOOK_SECRET or WEBHOOK_SECRET_FILE');
  process.exit(2);
}

function main() {
  const secret = secretFromEnv();
  const portAt = process.argv.indexOf('--port');
  const port = portAt > 0 ? Number(process.argv[portAt + 1]) : 8080;
  const server = http.createServer((req, res) => {
    if (req.method !== 'POST') return answer(res, 405, { error: 'POST only' });
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) req.destroy(); else chunks.push(chunk);
    });
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      if (!verify(secret, req.headers['reconciler-signature'], body)) {
        return answer(res, 401, { error: 'bad or old signature' });
      }
      let notification;
      try { notification = JSON.parse(body.toString('utf8')); } catch {
        return answer(res, 400, { error: 'not JSON' });
      }
      const key = req.headers['idempotency-key'];
      if (!key || seen.has(key)) return answer(res, 200, { duplicate: true });
      seen.add(key);
      handle(notification);
      return answer(res, 200, { ok: true });
    });
  });
  server.listen(port, '127.0.0.1', () => {
    console.error(`listening on 127.0.0.1:${server.address().port}`);
  });
}

if (require.main === module) main();
module.exports = { verify };
