// A fast HTTP/2 sink for benchmarks/http2_throughput.py: answers every request 200 with an
// apns-id, as APNs does for a good notification. TLS with ALPN h2, certificates from argv.
//   node benchmarks/h2sink.js PORT CERT KEY      (prints "listening PORT" when ready)
"use strict";
const http2 = require("http2");
const fs = require("fs");
const crypto = require("crypto");

const [port, cert, key] = process.argv.slice(2);
const server = http2.createSecureServer({
  cert: fs.readFileSync(cert),
  key: fs.readFileSync(key),
  allowHTTP1: false,
  settings: { maxConcurrentStreams: 1000 },
});
let accepted = 0;
server.on("stream", (stream, headers) => {
  const id = headers["apns-id"] || crypto.randomUUID().toUpperCase();
  stream.on("data", () => {});
  stream.on("end", () => {
    accepted += 1;
    stream.respond({ ":status": 200, "apns-id": id }, { endStream: true });
  });
  stream.on("error", () => {});
});
server.on("sessionError", () => {});
server.listen(Number(port), "127.0.0.1", () => {
  console.log("listening " + server.address().port);
});
process.on("SIGTERM", () => {
  console.log(JSON.stringify({ accepted }));
  process.exit(0);
});
