// Dubbo2 peers for weft's RPC interop tests, built on sofa-rpc-node with dubbo-remoting as the
// protocol (software nobody here wrote).
//
//   node dubbo_peer.js provider NAME      listens on an ephemeral port, prints "PORT <n>", serves
//                                          org.example.Greeter:1.0.0 (echo, whoami, slow, note, notes,
//                                          prop(key): the request's attachment `key`)
//   node dubbo_peer.js consumer HOST:PORT [INTERFACE]  reads commands (one JSON per line) on stdin, invokes them
//                                          through a sofa-rpc-node Dubbo consumer, prints one JSON
//                                          line per result: {"ok":value} or {"err":message};
//                                          a command's "props" are sent as attachments
'use strict';

const readline = require('readline');
const { RpcServer } = require('sofa-rpc-node').server;
const { RpcClient } = require('sofa-rpc-node').client;
const protocol = require('dubbo-remoting');

const quiet = { info() {}, warn() {}, debug() {}, error() {} };
const IFACE = 'org.example.Greeter';

class Server extends RpcServer {
  createContext(req) {
    return { req };
  }
}

async function provider(name) {
  const server = new Server({ logger: quiet, protocol, port: 0 });
  let notes = 0;
  server.addService({ interfaceName: IFACE, version: '1.0.0', group: 'HSF' }, {
    async echo(s) { return `${name}:${s}`; },
    async whoami() { return name; },
    async slow(ms) { await new Promise(r => setTimeout(r, ms)); return `${name}:slow`; },
    async note() { notes += 1; return null; },
    async notes() { return notes; },
    async prop(key) {
      const props = (this && this.req && this.req.data && this.req.data.requestProps) || {};
      return `${name}:${props[key] === undefined ? '-' : props[key]}`;
    },
  });
  await server.start();
  const port = server.publishPort && server.publishPort !== 0 ? server.publishPort : server.servers[0].address().port;
  process.stdout.write(`PORT ${port}\n`);
}

async function consumer(target, iface) {
  const client = new RpcClient({ logger: quiet, protocol });
  const consumer = client.createConsumer({ interfaceName: iface || IFACE, version: '1.0.0', group: 'HSF', serverHost: target });
  await consumer.ready();
  const rl = readline.createInterface({ input: process.stdin });
  const pending = [];
  for await (const line of rl) {
    if (!line.trim()) continue;
    const cmd = JSON.parse(line);
    // {"method":..., "args":[...], "id": n, "wait": bool}
    const run = consumer.invoke(cmd.method, cmd.args || [], {
      responseTimeout: cmd.timeout || 3000,
      requestProps: cmd.props,
    })
      .then(v => ({ id: cmd.id, ok: v === undefined ? null : v }), e => ({ id: cmd.id, err: String(e && e.message || e) }))
      .then(r => process.stdout.write(JSON.stringify(r) + '\n'));
    pending.push(run);
  }
  await Promise.all(pending);
  process.exit(0);
}

const [mode, arg, arg2] = process.argv.slice(2);
(mode === 'provider' ? provider(arg) : consumer(arg, arg2)).catch(e => {
  process.stderr.write(String(e && e.stack || e) + '\n');
  process.exit(1);
});
