'use strict';
// A gateway's side of the session-reconciler protocol, with the `ioredis` npm package.
//
//   start      EVAL start.lua over lease, queue, parked list, parked-meta  then XADD session.started
//              (takes the lease and puts the parked messages back at the head of the queue,
//              oldest first, in one step: drain only after it returns; a restore is
//              audited on the audit stream: intent (MULTI: XADD + HSET open-actions)
//              before the script, done after by EVAL outcome.lua)
//   heartbeat  SET {prefix}lease:{queue} <json> XX EX ttl  (nil reply: the lease was gone,
//                                                         so it is a start again)
//   stop       DEL {prefix}lease:{queue}                   then XADD session.stopped
//
// The lease, parked list and parked-meta keys carry the queue key as their hash tag, so the
// start script runs in one Redis Cluster slot. The sessions stream is in another slot: the
// event is a second step, after the script. A stream entry has the fields v, type, key and
// data (the event as JSON, see events/events.schema.json in the session-reconciler repository).
// With partitions (the reconciler's RECONCILER_STREAM_PARTITIONS > 1) a session's events go to
// the sessions stream of its partition, CRC-32 of its name modulo the partition count, tagged
// {events-N} (zlib.crc32, Node.js 20.15 or newer).

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const zlib = require('node:zlib');
const Redis = require('ioredis');

const SCHEMA_VERSION = '1';
const SESSION_NAME = /^[A-Za-z0-9._-]{1,64}$/;
const CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
// The start handshake, the same text as events/parked_scripts.py START (a test compares them).
const START_SCRIPT = fs.readFileSync(path.join(__dirname, 'start.lua'), 'utf8');
// An action's outcome, only while its intent is open: events/action_log.py OUTCOME_LUA.
const OUTCOME_SCRIPT = fs.readFileSync(path.join(__dirname, 'outcome.lua'), 'utf8');
const SETTLED_TTL_S = 7 * 86400;

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
  // parkedRetention: the reconciler's RECONCILER_PARKED_RETENTION_S; given, batches parked
  // longer than that stay parked for the reconciler to drop (content audited).
  constructor(client, {
    prefix = 'reconciler:', queuePattern = 'queue:{session}', gateway = null, ttl = 30,
    parkedRetention = null, settledTtl = SETTLED_TTL_S, partitions = 1,
  } = {}) {
    this.client = client;
    this.prefix = prefix;
    this.queuePattern = queuePattern;
    this.gateway = gateway;
    this.ttl = Math.max(1, Math.ceil(ttl));
    this.parkedRetention = parkedRetention;
    // How long a key's settled actions are remembered: the reconciler's RECONCILER_SETTLED_TTL_S.
    this.settledTtl = Math.max(1, Math.floor(settledTtl));
    if (!Number.isInteger(partitions) || partitions < 1) {
      throw new Error(`the partition count must be a whole number of at least 1, not ${partitions}`);
    }
    this.partitions = partitions;
    if (!client.reconcilerStart) {
      client.defineCommand('reconcilerStart', { numberOfKeys: 4, lua: START_SCRIPT });
      client.defineCommand('reconcilerOutcome', { numberOfKeys: 3, lua: OUTCOME_SCRIPT });
    }
  }

  queueKey(name) {
    return this.queuePattern.replace('{session}', checkedName(name));
  }

  leaseKey(name) {
    return `${this.prefix}lease:{${this.queueKey(name)}}`;
  }

  leaseValue() {
    return JSON.stringify({ gateway: this.gateway, started_at: new Date().toISOString() });
  }

  // XADD one event (fields: v, type, key, data) to `stream`; returns the event id.
  async xaddEvent(stream, type, name, fields) {
    const { id, entry } = this.entry(type, name, fields);
    await this.client.xadd(stream, '*', ...entry);
    return id;
  }

  // An event as a stream entry's fields and values (v, type, key, data), and its id.
  entry(type, name, fields) {
    const event = {
      type, id: ulid(), occurred_at: new Date().toISOString(), source: 'gateway', key: name,
      ...fields,
    };
    const data = JSON.stringify(event);
    return { id: event.id, data, entry: ['v', SCHEMA_VERSION, 'type', type, 'key', name, 'data', data] };
  }

  // The sessions stream of a session's partition: the reconciler's KeySpace.stream_for.
  sessionsStream(name) {
    if (this.partitions === 1) return `${this.prefix}{events}:sessions`;
    const partition = zlib.crc32(Buffer.from(checkedName(name), 'utf8')) % this.partitions;
    return `${this.prefix}{events-${partition}}:sessions`;
  }

  async publish(type, name, fields) {
    return this.xaddEvent(this.sessionsStream(name), type, name, { gateway: this.gateway, ...fields });
  }

  // A step of the handshake's restore on the audit stream (same {events} slot as the sessions
  // stream): 'intent' before the script, written with its entry in the session's open-actions
  // hash, then 'done' or 'skipped' by the outcome script, which writes it only while that
  // intent is open; one action id.  A gateway that dies in between leaves the intent for the
  // reconciler to settle.
  async auditRestore(name, { actionId, causeId, outcome, parked, restored = 0 }) {
    let reason = `start handshake: restore ${parked} parked messages`;
    let after = null;
    if (outcome === 'done') {
      reason = `start handshake: ${restored} parked messages back at the head`;
      after = { parked: parked - restored, restored };
    } else if (outcome === 'skipped') {
      reason = 'nothing to restore (restored already, or past retention)';
    }
    const { data, entry } = this.entry('audit.action', name, {
      cause_id: causeId, cause_type: 'session.started', action: 'restore_parked',
      action_id: actionId, target: this.queueKey(name), outcome, dry_run: false, reason,
      before: { parked }, after,
    });
    const audit = `${this.prefix}{events}:audit`;
    const open = `${this.prefix}{events}:open-actions:${name}`;
    if (outcome === 'intent') {
      await this.client.multi().xadd(audit, '*', ...entry)
        .hset(open, actionId, data).exec();
      return;
    }
    await this.client.reconcilerOutcome(audit, open, `${this.prefix}{events}:settled-actions:${name}`,
      actionId, outcome, this.settledTtl, ...entry);
  }

  // The START script: the lease, and (restore) the parked messages back, in one step.
  async handshake(name, restore) {
    const queue = this.queueKey(name);
    const cutoff = this.parkedRetention === null
      ? 0 : Math.max(1, Date.now() - Math.round(this.parkedRetention * 1000));
    return Number(await this.client.reconcilerStart(
      this.leaseKey(name), queue, `${this.prefix}parked:{${queue}}`,
      `${this.prefix}parked-meta:{${queue}}`, this.leaseValue(), this.ttl, cutoff,
      restore ? '1' : '0'));
  }

  // Take the lease and put the parked messages back; returns how many came back.
  // When it resolves the queue is ready to drain: parked messages first, then newer ones.
  async start(name) {
    const parkedKey = `${this.prefix}parked:{${this.queueKey(name)}}`;
    const started = { id: ulid(), occurred_at: new Date().toISOString(), lease_ttl_s: this.ttl };
    let parked = await this.client.llen(parkedKey);
    if (parked === 0) {
      await this.handshake(name, false);
      parked = await this.client.llen(parkedKey); // parked just before the lease took?
    }
    if (parked === 0) {
      await this.publish('session.started', name, started);
      return 0;
    }
    const actionId = crypto.createHash('sha256')
      .update(`restore_parked|${this.queueKey(name)}|${started.id}`).digest('hex').slice(0, 32);
    const step = { actionId, causeId: started.id, parked };
    await this.auditRestore(name, { ...step, outcome: 'intent' });
    const restored = await this.handshake(name, true);
    await this.publish('session.started', name, started);
    await this.auditRestore(name, { ...step, outcome: restored > 0 ? 'done' : 'skipped', restored });
    return restored;
  }

  // true: the lease was refreshed; false: it had expired and the session was started again.
  async heartbeat(name) {
    const reply = await this.client.set(this.leaseKey(name), this.leaseValue(), 'EX', this.ttl, 'XX');
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
    queuePattern: env.RECONCILER_QUEUE_PATTERN || 'queue:{session}',
    gateway: env.GATEWAY_ID || null,
    ttl: Number(env.RECONCILER_SESSION_TTL_S || 30),
    parkedRetention: env.RECONCILER_PARKED_RETENTION_S
      ? Number(env.RECONCILER_PARKED_RETENTION_S) : null,
    settledTtl: Number(env.RECONCILER_SETTLED_TTL_S || SETTLED_TTL_S),
    partitions: Number(env.RECONCILER_STREAM_PARTITIONS || 1),
  });
}

// The gateway's drain loop: start the session, then pop its queue from the head and hand
// each message on (here: print it as a JSON line) until `count` messages went out.
async function drain(client, sessions, name, count) {
  const queue = sessions.queueKey(name);
  const restored = await sessions.start(name);
  console.error(`session ${name} live; ${restored} parked messages back at the head`);
  for (let sent = 0; sent < count;) {
    const popped = await client.blpop(queue, 1);
    if (popped !== null) {
      process.stdout.write(`${JSON.stringify(popped[1])}\n`);
      sent += 1;
    }
  }
}

const USAGE = 'usage: node gateway.js start|heartbeat|stop|demo|run NAME | drain NAME COUNT';

async function main(argv) {
  const [action, name, count] = argv;
  if (!['start', 'heartbeat', 'stop', 'demo', 'run', 'drain'].includes(action) || !name
      || (action === 'drain' && !(Number(count) >= 0))) {
    console.error(USAGE);
    return 2;
  }
  checkedName(name);
  const client = new Redis(process.env.REDIS_URL || 'redis://127.0.0.1:6379/0',
    { maxRetriesPerRequest: 3 });
  client.on('error', (error) => console.error('redis:', error.message));
  const sessions = fromEnvironment(client);
  try {
    if (action === 'start') console.log(`restored ${await sessions.start(name)}`);
    if (action === 'heartbeat') console.log((await sessions.heartbeat(name)) ? 'refreshed' : 'started again');
    if (action === 'stop') await sessions.stop(name);
    if (action === 'drain') await drain(client, sessions, name, Number(count));
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
    if (action !== 'drain') console.log(`session ${name}: ${action} done`);
    return 0;
  } finally {
    await client.quit();
  }
}

module.exports = { GatewaySessions, fromEnvironment, ulid, START_SCRIPT };

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => { process.exitCode = code; },
    (error) => { console.error(`gateway: error: ${error.message}`); process.exitCode = 1; },
  );
}
