// A Dubbo2 consumer built on dubbo2.js (software nobody here wrote), for weft's RPC interop tests.
//
//   node consumer.js HOST:PORT [INTERFACE [GROUP]] [--dubbox]
//
// Connects straight to HOST:PORT with dubbo2.js's DirectlyDubbo (no registry), service
// INTERFACE (default org.example.Greeter) version 1.0.0 and group GROUP (default HSF; "-" for
// none). Reads commands on stdin, one JSON object per line:
//   {"id": n, "method": "echo", "args": ["x"], "props": {"k": "v"}}
// invokes them all at once on the client's one connection, and prints one JSON line per result:
// {"id": n, "ok": value} or {"id": n, "err": message}. Arguments: a string is sent as
// java.lang.String, an integer as int, another number as double, a boolean as boolean,
// {"long": n} as long, {"list": ["a", …]} as String[], {"object": CLASS, "fields": {…}} as an
// object of class CLASS (its fields converted the same way).
//
// Attachments: DirectlyDubbo writes path, interface, version, group, timeout and application on
// every call, but has no option for more (dubbo2.js's registry client sets `ctx.attachments` in a
// middleware). For a command with "props" this script sets that same context field on the call's
// context, and the library's own encoder writes them.
//
// --dubbox: requests in Dubbox's layout (an int -1 between the method and the parameter
// descriptor), which dubbo2.js writes when a call's context says `isSupportedDubbox` (its registry
// client sets that from its options); this script sets it on every call's context.
'use strict';

const readline = require('readline');
const { DirectlyDubbo, Context, java } = require('dubbo2.js');

const argv = process.argv.slice(2);
const dubbox = argv.includes('--dubbox');
const [target, iface = 'org.example.Greeter', groupArg = 'HSF'] = argv.filter(a => a !== '--dubbox');
const group = groupArg === '-' ? undefined : groupArg;

const dubbo = DirectlyDubbo.from({
  dubboAddress: target,
  dubboVersion: '2.0.2',
  dubboInvokeTimeout: 5, // seconds
});

function toJava(v) {
  if (typeof v === 'string') return java.String(v);
  if (typeof v === 'boolean') return java.boolean(v);
  if (Number.isInteger(v)) return java.int(v);
  if (typeof v === 'number') return java.double(v);
  if (v && v.long !== undefined) return java.long(v.long);
  if (v && Array.isArray(v.list)) return java.array.String(v.list);
  if (v && v.object) {
    const fields = {};
    for (const [k, f] of Object.entries(v.fields || {})) fields[k] = toJava(f);
    return java.combine(v.object, fields);
  }
  throw new Error(`unsupported argument ${JSON.stringify(v)}`);
}

const proxies = new Map();
function proxy(method) {
  if (!proxies.has(method)) {
    const p = dubbo.proxyService({
      dubboInterface: iface,
      version: '1.0.0',
      group,
      timeout: 3000,
      methods: { [method]: (...args) => args.map(toJava) },
    });
    proxies.set(method, p[method]);
  }
  return proxies.get(method);
}

function invoke(cmd) {
  const call = () => proxy(cmd.method)(...(cmd.args || []));
  if (!cmd.props && !dubbox) return call();
  // The call's context is created synchronously inside the proxy method.
  const create = Context.create;
  Context.create = () => {
    const ctx = create.call(Context);
    if (cmd.props) ctx.attachments = cmd.props;
    if (dubbox) ctx.isSupportedDubbox = true;
    return ctx;
  };
  try {
    return call();
  } finally {
    Context.create = create;
  }
}

async function main() {
  const rl = readline.createInterface({ input: process.stdin });
  const pending = [];
  for await (const line of rl) {
    if (!line.trim()) continue;
    const cmd = JSON.parse(line);
    // dubbo2.js resolves every call to {res, err}.
    const run = invoke(cmd)
      .then(({ res, err }) =>
        err ? { id: cmd.id, err: String((err && err.message) || err) } : { id: cmd.id, ok: res === undefined ? null : res })
      .then(r => process.stdout.write(JSON.stringify(r) + '\n'));
    pending.push(run);
  }
  await Promise.all(pending);
  process.exit(0);
}

main().catch(e => {
  process.stderr.write(String((e && e.stack) || e) + '\n');
  process.exit(1);
});
