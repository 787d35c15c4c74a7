// Feeds the Socket.IO peer of the fan-out benchmark (B1) the way a backend
// service would: through @socket.io/redis-emitter, which publishes on Redis
// for the servers' Redis adapter to deliver.
//
// Reads one event per line on stdin, `{"room":"catalog","data":{…}}`, and
// emits `event` with `data` to the room. The benchmark writes the lines at
// the rate it wants; `data` carries the publish time it measures from.
// Environment: REDIS_URL, KEY (the same prefix as the server's adapter).
// Prints `ready` once connected.
'use strict';

const readline = require('node:readline');
const { Emitter } = require('@socket.io/redis-emitter');
const { createClient } = require('redis');

async function main() {
  const client = createClient({ url: process.env.REDIS_URL || 'redis://127.0.0.1:6379' });
  await client.connect();
  const emitter = new Emitter(client, { key: process.env.KEY || 'socket.io' });
  const lines = readline.createInterface({ input: process.stdin });
  lines.on('line', (line) => {
    const { room, data } = JSON.parse(line);
    emitter.to(room).emit('event', data);
  });
  lines.on('close', () => client.quit().then(() => process.exit(0)));
  process.stdout.write('ready\n');
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
