// Proxyless gRPC (Node @grpc/grpc-js-xds) against weft control.
// usage: node grpc_node.js XDS_ADDR BACKEND_PORT TARGET [BOOTSTRAP_PATH]
// (needs @grpc/grpc-js and @grpc/grpc-js-xds: NODE_PATH=interop/node/node_modules after interop/install)
const grpc = require('@grpc/grpc-js');
const fs = require('fs');
const [xds, port, target, bootstrap = '/tmp/nodex/bootstrap.json'] = process.argv.slice(2);
fs.writeFileSync(bootstrap, JSON.stringify({
  xds_servers: [{server_uri: xds, channel_creds: [{type: 'insecure'}], server_features: ['xds_v3']}],
  node: {id: 'node-client-1', locality: {zone: 'z'}}}));
process.env.GRPC_XDS_BOOTSTRAP = bootstrap;
require('@grpc/grpc-js-xds').register();
const id = x => x;
const server = new grpc.Server();
server.addService({Say: {path: '/test.Echo/Say', requestStream: false, responseStream: false,
  requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id}},
  {Say: (call, cb) => cb(null, Buffer.concat([Buffer.from('hello from node backend '), call.request]))});
server.bindAsync('127.0.0.1:' + port, grpc.ServerCredentials.createInsecure(), async (err) => {
  if (err) { console.log('bind', err); process.exit(1); }
  const client = new grpc.Client(target, grpc.credentials.createInsecure());
  let ok = 0;
  for (let i = 0; i < 5; i++) {
    await new Promise(res => client.makeUnaryRequest('/test.Echo/Say', id, id, Buffer.from('x' + i),
      new grpc.Metadata(), {deadline: Date.now() + 5000, waitForReady: true}, (e, r) => {
        if (e) console.log('error', e.code, e.details); else { console.log('reply', r.toString()); ok++; }
        res();
      }));
  }
  console.log(ok === 5 ? 'OK' : 'FAIL');
  client.close(); server.forceShutdown(); process.exit(0);
});
