'use strict';
// Sends N notifications with @parse/node-apn to an APNs host; prints one JSON line:
// {"sent": n, "failed": n, "reasons": {reason: count}}.
//   node node_apn_send.js '{"port":…,"ca":FILE,"n":1000,"topic":…,"token":{…}|null,"cert":FILE,"key":FILE}'
const apn = require('@parse/node-apn');
const a = JSON.parse(process.argv[2]);
// requestTimeout: node-apn's 5 s per request is a liveness limit that 1,000 requests at once
// overrun on a loaded CI machine ("apn write timeout"); the tests check outcomes, not timings.
const opts = { address: '127.0.0.1', port: a.port, ca: [a.ca], production: false, requestTimeout: 60000 };
if (a.token) opts.token = a.token; else { opts.cert = a.cert; opts.key = a.key; }
const provider = new apn.Provider(opts);
async function main() {
  const sends = [];
  for (let i = 0; i < a.n; i++) {
    const note = new apn.Notification();
    note.rawPayload = { aps: { alert: `n${i}` } };
    note.topic = a.topic;
    note.pushType = 'alert';
    sends.push(provider.send(note, i.toString(16).padStart(64, '0')));
  }
  const timer = setTimeout(() => { console.log(JSON.stringify({ error: 'timeout' })); process.exit(2); }, (a.timeout || 60) * 1000);
  const results = await Promise.all(sends);
  clearTimeout(timer);
  let sent = 0, failed = 0; const reasons = {};
  for (const r of results) {
    sent += r.sent.length; failed += r.failed.length;
    for (const f of r.failed) {
      const k = (f.response && f.response.reason) || f.status || (f.error && f.error.message) || 'error';
      reasons[k] = (reasons[k] || 0) + 1;
    }
  }
  console.log(JSON.stringify({ sent, failed, reasons }));
  await Promise.race([provider.shutdown(), new Promise(r => setTimeout(r, 2000))]);
  process.exit(0);
}
main().catch(err => { console.error(String(err)); process.exit(2); });
