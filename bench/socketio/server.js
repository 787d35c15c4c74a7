// The Socket.IO peer of the fan-out benchmark (B1), built the way its
// documentation recommends for more than one node: Socket.IO 4.8 with the
// Redis adapter, so that events published by the Redis emitter (emitter.js)
// from anywhere reach the sockets of every server.
//
// It does what realtime does for a socket, no less: verifies the same EdDSA
// access token (signature, typ, iss, aud, exp) before the connection is
// accepted, and lets a socket join only its own `user:<sub>` room or the
// public `catalog` room. WebSocket transport only (the load client speaks
// Engine.IO v4 over a plain WebSocket, no long-polling upgrade).
//
// Environment: PORT (0 for any), REDIS_URL, KEY (the adapter's channel
// prefix, so concurrent runs do not hear each other), JWKS (the JWK Set,
// JSON), ISSUER, AUDIENCE. Prints `listening <port>` when ready.
'use strict';

const http = require('node:http');
const crypto = require('node:crypto');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');

const issuer = process.env.ISSUER || 'signalbox-auth';
const audience = process.env.AUDIENCE || 'signalbox';
const keys = new Map(
  JSON.parse(process.env.JWKS).keys.map((jwk) => [
    jwk.kid,
    crypto.createPublicKey({ key: jwk, format: 'jwk' }),
  ]),
);

// The claims of a valid access token, or null.
function verify(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  let header, claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url'));
    claims = JSON.parse(Buffer.from(parts[1], 'base64url'));
  } catch {
    return null;
  }
  const key = keys.get(header.kid);
  if (!key || header.alg !== 'EdDSA' || header.typ !== 'at+jwt') return null;
  const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
  if (!crypto.verify(null, signed, key, Buffer.from(parts[2], 'base64url'))) return null;
  if (claims.iss !== issuer || claims.aud !== audience) return null;
  if (typeof claims.exp !== 'number' || claims.exp < Date.now() / 1000) return null;
  return claims;
}

async function main() {
  const pub = createClient({ url: process.env.REDIS_URL || 'redis://127.0.0.1:6379' });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);

  const server = http.createServer();
  const io = new Server(server, {
    transports: ['websocket'],
    serveClient: false,
    adapter: createAdapter(pub, sub, { key: process.env.KEY || 'socket.io' }),
  });

  // Authentication: the token travels in the CONNECT packet (`40{"token":…}`).
  io.use((socket, next) => {
    const claims = verify(socket.handshake.auth && socket.handshake.auth.token);
    if (!claims) return next(new Error('invalid token'));
    socket.data.sub = claims.sub;
    next();
  });

  io.on('connection', (socket) => {
    socket.on('subscribe', (channel, ack) => {
      const allowed = channel === 'catalog' || channel === `user:${socket.data.sub}`;
      if (allowed) socket.join(channel);
      if (typeof ack === 'function') ack({ ok: allowed });
    });
  });

  server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
    process.stdout.write(`listening ${server.address().port}\n`);
  });
  const stop = () => io.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
