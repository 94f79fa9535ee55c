// A proxyless gRPC client for weft's interop tests, using @grpc/grpc-js-xds.
// Calls /weft.Echo/Call on an xds:/// target (GRPC_XDS_BOOTSTRAP names the control plane) for a
// bounded time, and prints one JSON line per interval with replies per backend name and errors.
'use strict';
require('@grpc/grpc-js-xds').register();
const grpc = require('@grpc/grpc-js');

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const target = args.target;
const duration = Number(args.duration || 20) * 1000;
const interval = Number(args.interval || 0.25) * 1000;
const client = new grpc.Client(target, grpc.credentials.createInsecure());
const ident = (x) => x;

let counts = {};
let errors = 0;
let lastError = null;
const end = Date.now() + duration;

function report() {
  process.stdout.write(JSON.stringify({ counts, errors, last_error: lastError }) + '\n');
  counts = {};
  errors = 0;
  lastError = null;
}

function callOnce() {
  if (Date.now() >= end) {
    report();
    client.close();
    clearInterval(timer);
    return;
  }
  const deadline = new Date(Date.now() + 1000);
  client.makeUnaryRequest('/weft.Echo/Call', ident, ident, Buffer.alloc(0), { deadline }, (err, reply) => {
    if (err) {
      errors += 1;
      lastError = `${err.code}: ${err.details}`;
      setTimeout(callOnce, 50);
    } else {
      const name = reply.toString();
      counts[name] = (counts[name] || 0) + 1;
      setImmediate(callOnce);
    }
  });
}

const timer = setInterval(report, interval);
callOnce();
