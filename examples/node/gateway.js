'use strict';
// A gateway's side of the session-reconciler protocol, with the `redis` npm package.
//
//   start      SET {prefix}lease:{name} <json> EX ttl     then XADD session.started
//   heartbeat  SET {prefix}lease:{name} <json> XX EX ttl  (nil reply: the lease was gone,
//                                                          so it is a start again)
//   stop       DEL {prefix}lease:{name}                   then XADD session.stopped
//
// The lease key and the sessions stream live in different Redis Cluster slots, so
// they are written one after the other -- the lease first -- never in one MULTI.
// A stream entry has the fields v, type, key and data (the event as JSON, see
// events/events.schema.json in the session-reconciler repository).

const crypto = require('node:crypto');
const { createClient } = require('redis');

const SCHEMA_VERSION = '1';
const SESSION_NAME = /^[A-Za-z0-9._-]{1,64}$/;
const CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

// A time-ordered event id (ULID): 48 bits of milliseconds, 80 random bits.
function ulid() {
  let value = (BigInt(Date.now()) << 80n) | BigInt('0x' + crypto.randomBytes(10).toString('hex'));
  let text = '';
  for (let i = 0; i < 26; i += 1) {
    text = CROCKFORD[Number(value & 31n)] + text;
    value >>= 5n;
  }
  return text;
}

function checkedName(name) {
  if (typeof name !== 'string' || !SESSION_NAME.test(name)) {
    throw new Error(`invalid session name ${JSON.stringify(name)}: use 1-64 of A-Z a-z 0-9 . _ -`);
  }
  return name;
}

class GatewaySessions {
  constructor(client, { prefix = 'reconciler:', gateway = null, ttl = 30, maxLen = 1000000 } = {}) {
    this.client = client;
    this.prefix = prefix;
    this.gateway = gateway;
    this.ttl = Math.max(1, Math.ceil(ttl));
    this.maxLen = maxLen;
    this.stream = `${prefix}{events}:sessions`;
  }

  leaseKey(name) {
    return `${this.prefix}lease:${checkedName(name)}`;
  }

  leaseValue() {
    return JSON.stringify({ gateway: this.gateway, started_at: new Date().toISOString() });
  }

  async publish(type, name, fields) {
    const event = {
      type, id: ulid(), occurred_at: new Date().toISOString(), source: 'gateway', key: name,
      gateway: this.gateway, ...fields,
    };
    const entry = { v: SCHEMA_VERSION, type, key: name, data: JSON.stringify(event) };
    const options = this.maxLen > 0
      ? { TRIM: { strategy: 'MAXLEN', strategyModifier: '~', threshold: this.maxLen } }
      : undefined;
    await this.client.xAdd(this.stream, '*', entry, options);
    return event.id;
  }

  async start(name) {
    await this.client.set(this.leaseKey(name), this.leaseValue(), { EX: this.ttl });
    return this.publish('session.started', name, { lease_ttl_s: this.ttl });
  }

  // true: the lease was refreshed; false: it had expired and the session was started again.
  async heartbeat(name) {
    const reply = await this.client.set(this.leaseKey(name), this.leaseValue(), { EX: this.ttl, XX: true });
    if (reply !== null) return true;
    await this.start(name);
    return false;
  }

  async stop(name) {
    await this.client.del(this.leaseKey(name));
    return this.publish('session.stopped', name, {});
  }

  // Start a session and heartbeat it every ttl/3; call the returned function to stop it.
  async keepAlive(name, onError = (error) => console.error('heartbeat failed:', error.message)) {
    await this.start(name);
    const timer = setInterval(() => { this.heartbeat(name).catch(onError); }, (this.ttl * 1000) / 3);
    return async () => {
      clearInterval(timer);
      await this.stop(name);
    };
  }
}

function fromEnvironment(client, env = process.env) {
  return new GatewaySessions(client, {
    prefix: env.RECONCILER_KEY_PREFIX || 'reconciler:',
    gateway: env.GATEWAY_ID || null,
    ttl: Number(env.RECONCILER_SESSION_TTL_S || 30),
    maxLen: Number(env.RECONCILER_STREAM_MAX_LEN || 1000000),
  });
}

const USAGE = 'usage: node gateway.js start|heartbeat|stop|demo|run NAME';

async function main(argv) {
  const [action, name] = argv;
  if (!['start', 'heartbeat', 'stop', 'demo', 'run'].includes(action) || !name) {
    console.error(USAGE);
    return 2;
  }
  checkedName(name);
  const client = createClient({ url: process.env.REDIS_URL || 'redis://127.0.0.1:6379/0' });
  client.on('error', (error) => console.error('redis:', error.message));
  await client.connect();
  const sessions = fromEnvironment(client);
  try {
    if (action === 'start') await sessions.start(name);
    if (action === 'heartbeat') console.log((await sessions.heartbeat(name)) ? 'refreshed' : 'started again');
    if (action === 'stop') await sessions.stop(name);
    if (action === 'demo') {
      await sessions.start(name);
      await sessions.heartbeat(name);
      await sessions.stop(name);
    }
    if (action === 'run') {
      const stop = await sessions.keepAlive(name);
      console.log(`session ${name} live; Ctrl-C stops it`);
      await new Promise((resolve) => { process.once('SIGINT', resolve); process.once('SIGTERM', resolve); });
      await stop();
    }
    console.log(`session ${name}: ${action} done`);
    return 0;
  } finally {
    await client.quit();
  }
}

module.exports = { GatewaySessions, fromEnvironment, ulid };

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => { process.exitCode = code; },
    (error) => { console.error(`gateway: error: ${error.message}`); process.exitCode = 1; },
  );
}
