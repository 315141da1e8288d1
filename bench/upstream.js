// A fast OpenAI-wire upstream for bench/gateway.py: answers /v1/chat/completions
// (JSON, or SSE when "stream": true) with a fixed reply, at once. It must never be the
// bottleneck, so it does no validation beyond parsing the body.
//   node bench/upstream.js PORT [CHUNKS]
"use strict";
const http = require("http");

const port = Number(process.argv[2] || 0);
const nChunks = Number(process.argv[3] || 8);
const words = Array.from({ length: nChunks }, (_, i) => (i === 0 ? "Hello" : " w" + i));
const usage = { prompt_tokens: 5, completion_tokens: nChunks, total_tokens: 5 + nChunks };

function chat(model) {
  return JSON.stringify({
    id: "chatcmpl-up", object: "chat.completion", created: 1, model,
    choices: [{ index: 0, message: { role: "assistant", content: words.join("") }, finish_reason: "stop" }],
    usage,
  });
}

function streamBody(model, includeUsage) {
  const head = { id: "chatcmpl-up", object: "chat.completion.chunk", created: 1, model };
  const frames = [];
  const push = (choices, extra) => frames.push("data: " + JSON.stringify({ ...head, choices, ...extra }) + "\n\n");
  push([{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }]);
  for (const w of words) push([{ index: 0, delta: { content: w }, finish_reason: null }]);
  push([{ index: 0, delta: {}, finish_reason: "stop" }]);
  if (includeUsage) push([], { usage });
  frames.push("data: [DONE]\n\n");
  return frames;
}

const server = http.createServer((req, res) => {
  const parts = [];
  req.on("data", (c) => parts.push(c));
  req.on("end", () => {
    if (req.method === "GET" && req.url === "/v1/models") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ object: "list", data: [{ id: "bench", object: "model", created: 1, owned_by: "bench" }] }));
      return;
    }
    let body = {};
    try { body = JSON.parse(Buffer.concat(parts).toString() || "{}"); } catch (e) { body = {}; }
    const model = body.model || "bench";
    if (body.stream) {
      res.writeHead(200, { "content-type": "text/event-stream" });
      const include = !!(body.stream_options && body.stream_options.include_usage);
      for (const f of streamBody(model, include)) res.write(f);
      res.end();
    } else {
      const out = chat(model);
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(out) });
      res.end(out);
    }
  });
});
server.keepAliveTimeout = 75000;
server.listen(port, "127.0.0.1", () => {
  process.stdout.write("http://127.0.0.1:" + server.address().port + "\n");
});
