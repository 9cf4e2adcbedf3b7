// The benchmarks' non-Python peer: the protocol's minimum on Node's `ws`, so that the
// server is not what limits a client (see docs/performance.md).
//
//   node benchmarks/node/peer.js        prints "READY <port>", then obeys "quit" on stdin
//
// On connect it sends `1`; it answers `3` with `4`, and every `5` with
// `6{"messageId":...}`; a `5` whose content is a `start` also gets a `startResult`
// (the client's session is ready on it).  It exits when its standard input closes.
"use strict";

const { WebSocketServer } = require("ws");

const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, perMessageDeflate: false });
let serverSeq = 0;

wss.on("connection", (socket) => {
  socket.send("1");
  socket.on("message", (data, isBinary) => {
    if (isBinary || data.length === 0) return;
    const kind = data[0];
    if (kind === 0x33) { // "3": heartbeat
      socket.send("4");
      return;
    }
    if (kind !== 0x35) return; // only "5" carries a message
    let body;
    try {
      body = JSON.parse(data.toString("utf8", 1));
    } catch (err) {
      return;
    }
    socket.send("6" + JSON.stringify({ messageId: body.messageId }));
    const content = body.content;
    if (content && content.type === "start") {
      serverSeq += 1;
      socket.send("5" + JSON.stringify({
        messageId: `srv_${process.pid}_${serverSeq}`,
        content: { type: "startResult", sessionId: content.sessionId },
      }));
    }
  });
  socket.on("error", () => {});
});

wss.on("listening", () => {
  process.stdout.write(`READY ${wss.address().port}\n`);
});

process.stdin.setEncoding("utf8");
let pending = "";
process.stdin.on("data", (chunk) => {
  pending += chunk;
  let newline;
  while ((newline = pending.indexOf("\n")) >= 0) {
    const line = pending.slice(0, newline).trim();
    pending = pending.slice(newline + 1);
    if (line === "quit") process.exit(0);
  }
});
process.stdin.on("end", () => process.exit(0));
