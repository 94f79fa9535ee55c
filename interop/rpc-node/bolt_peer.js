// SOFARPC Bolt peers for weft's RPC interop tests, built on sofa-rpc-node and its sofa-bolt-node
// protocol (software nobody here wrote).
//
//   node bolt_peer.js provider NAME      listens on an ephemeral port, prints "PORT <n>", serves
//                                        org.example.Greeter:1.0.0: echo(s) -> "NAME:s", whoami(),
//                                        slow(ms), fail(msg) (throws), prop(key) (the caller's
//                                        requestProps[key])
//   node bolt_peer.js consumer HOST:PORT [v2crc] [INTERFACE]
//                                        reads commands (one JSON per line) on stdin, invokes them
//                                        through a sofa-rpc-node Bolt consumer (protocol v1, or v2
//                                        with CRC32 when "v2crc"), prints one JSON line per result:
//                                        {"id":..,"ok":value} or {"id":..,"err":message}.
//                                        {"id":..,"heartbeat":true} sends a Bolt heartbeat on its
//                                        own connection and answers {"id":..,"ok":"ack <id>"}.
'use strict';

const net = require('net');
const readline = require('readline');
const bolt = require('sofa-bolt-node');
const { RpcServer } = require('sofa-rpc-node').server;
const { RpcClient } = require('sofa-rpc-node').client;

const quiet = { info() {}, warn() {}, debug() {}, error() {} };
const IFACE = 'org.example.Greeter';

// Bolt v2 frames with the CRC32 switch on, from the same library.
const boltV2Crc = Object.assign({}, bolt, {
  encoder(options) {
    const e = bolt.encoder(options);
    e.protocolType = 'bolt2';
    e.boltVersion = 2;
    e.crcEnable = true;
    return e;
  },
});

class Server extends RpcServer {
  createContext(req) {
    return { req };
  }
}

async function provider(name) {
  const server = new Server({ logger: quiet, port: 0 });
  server.addService({ interfaceName: IFACE, version: '1.0.0' }, {
    async echo(s) { return `${name}:${s}`; },
    async whoami() { return name; },
    async slow(ms) { await new Promise(r => setTimeout(r, ms)); return `${name}:slow`; },
    async fail(msg) { throw new Error(`${name} refuses: ${msg}`); },
    async prop(key) {
      const props = (this && this.req && this.req.data && this.req.data.requestProps) || {};
      return `${name}:${props[key] === undefined ? '-' : props[key]}`;
    },
  });
  await server.start();
  const port = server.publishPort && server.publishPort !== 0 ? server.publishPort : server.servers[0].address().port;
  process.stdout.write(`PORT ${port}\n`);
}

function heartbeat(target, id) {
  const [host, port] = target.split(':');
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(port), host);
    const enc = bolt.encoder({});
    const dec = bolt.decoder({});
    enc.pipe(sock).pipe(dec);
    const timer = setTimeout(() => { sock.destroy(); reject(new Error('no heartbeat ack in 3s')); }, 3000);
    dec.on('heartbeat_ack', p => {
      clearTimeout(timer);
      sock.destroy();
      resolve(`ack ${p.packetId}`);
    });
    sock.on('error', e => { clearTimeout(timer); reject(e); });
    sock.once('connect', () => enc.writeHeartbeat(id, { timeout: 3000, clientUrl: 'weft-test' }));
  });
}

async function consumer(target, variant, iface) {
  const protocol = variant === 'v2crc' ? boltV2Crc : bolt;
  const client = new RpcClient({ logger: quiet, protocol });
  const consumer = client.createConsumer({ interfaceName: iface || IFACE, version: '1.0.0', serverHost: target });
  await consumer.ready();
  const rl = readline.createInterface({ input: process.stdin });
  const pending = [];
  for await (const line of rl) {
    if (!line.trim()) continue;
    const cmd = JSON.parse(line);
    const call = cmd.heartbeat ?
      heartbeat(target, cmd.id) :
      consumer.invoke(cmd.method, cmd.args || [], {
        responseTimeout: cmd.timeout || 3000,
        requestProps: cmd.props ? Object.assign({ service: consumer.id }, cmd.props) : undefined,
      });
    const run = call
      .then(v => ({ id: cmd.id, ok: v === undefined ? null : v }), e => ({ id: cmd.id, err: String(e && e.message || e) }))
      .then(r => process.stdout.write(JSON.stringify(r) + '\n'));
    pending.push(run);
  }
  await Promise.all(pending);
  process.exit(0);
}

const [mode, arg, arg2, arg3] = process.argv.slice(2);
(mode === 'provider' ? provider(arg) : consumer(arg, arg2, arg3)).catch(e => {
  process.stderr.write(String(e && e.stack || e) + '\n');
  process.exit(1);
});
