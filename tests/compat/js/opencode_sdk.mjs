// The official @opencode-ai/sdk (v1 entry, unchanged) driving a server the way its README
// shows: sessions, prompts, the event stream, abort, config. Every step's outcome is written as
// JSON (tests/compat/test_opencode_js_sdk.py asserts on it). The server answers with the fake
// model (tests/compat/fixtures/opencode/fake_openai.py): "TOOL" -> a bash call, "SLOW" -> 40
// chunks 0.25 s apart, anything else -> "Hello! I am a fake model.".
//
// Env: OPENCODE_BASE_URL, OPENCODE_API_KEY (sent as a bearer token), OPENCODE_RESULT_FILE,
// OPENCODE_SECRET (a model key the server holds: it must appear in no answer).
import net from "node:net";
import { createOpencodeClient } from "@opencode-ai/sdk";
import { AUTH, BASE_URL, data, failure, finish, sleep, step } from "./opencode_harness.mjs";

const client = createOpencodeClient({ baseUrl: BASE_URL, headers: AUTH });
const SECRET = process.env.OPENCODE_SECRET || "";

// One subscription to /event for the whole script; events are kept with their arrival order.
const seen = [];
const waiters = [];
function wake() {
  for (const w of [...waiters]) {
    const found = seen.slice(w.from).find(w.match);
    if (found) {
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve(found);
    }
  }
}
function waitFor(match, from = 0, seconds = 60, what = "event") {
  return new Promise((resolve, reject) => {
    const w = { match, from, resolve };
    waiters.push(w);
    wake();
    setTimeout(() => {
      if (waiters.includes(w)) {
        waiters.splice(waiters.indexOf(w), 1);
        const types = seen.slice(from).map((e) => e.type).slice(-20);
        reject(new Error(`no ${what} within ${seconds}s; last: ${JSON.stringify(types)}`));
      }
    }, seconds * 1000);
  });
}
const sessionOf = (e) =>
  e?.properties?.sessionID ?? e?.properties?.info?.sessionID ?? e?.properties?.part?.sessionID;
const idleOf = (sid) => (e) => e.type === "session.idle" && sessionOf(e) === sid;
const chunkOf = (sid) => (e) =>
  sessionOf(e) === sid &&
  (e.type === "message.part.delta" || (e.type === "message.part.updated" && e.properties.delta));

// The text a client rebuilds from the deltas of one message: OpenCode's message.part.delta, or
// (the v1 SDK's own type) message.part.updated with `delta`; a server may send both kinds, a
// client uses one: the deltas of message.part.delta when there are any.
function deltasOf(events, messageID) {
  const own = events.filter(
    (e) => e.type === "message.part.delta" && e.properties.messageID === messageID && e.properties.field === "text",
  );
  const list = own.length
    ? own.map((e) => ({ part: e.properties.partID, delta: e.properties.delta }))
    : events
        .filter((e) => e.type === "message.part.updated" && e.properties.delta && e.properties.part.messageID === messageID)
        .map((e) => ({ part: e.properties.part.id, delta: e.properties.delta }));
  const byPart = {};
  for (const { part, delta } of list) byPart[part] = (byPart[part] ?? "") + delta;
  return byPart;
}

async function subscribe() {
  const sub = await client.event.subscribe();
  (async () => {
    for await (const event of sub.stream) {
      seen.push(event);
      wake();
    }
  })().catch((error) => seen.push({ type: "__stream_error", message: String(error) }));
  await waitFor((e) => e.type === "server.connected", 0, 20, "server.connected");
}

await step("subscribe", subscribe);

const created = await step("create", () => data(client.session.create({ body: { title: "js sdk" } })));
const sid = created?.id;

await step("list", async () => (await data(client.session.list())).map((s) => s.id));
await step("get", () => data(client.session.get({ path: { id: sid } })));
await step("update", () => data(client.session.update({ path: { id: sid }, body: { title: "renamed by js" } })));
await step("get_after_update", async () => (await data(client.session.get({ path: { id: sid } }))).title);
await step("session_events", async () => {
  await waitFor((e) => e.type === "session.updated" && sessionOf(e) === sid, 0, 10, "session.updated");
  return seen.filter((e) => sessionOf(e) === sid).map((e) => e.type);
});

// a turn's last events may reach /event after its HTTP answer: each turn waits for its idle
async function promptAndIdle(text) {
  const from = seen.length;
  const answer = await data(client.session.prompt({ path: { id: sid }, body: { parts: [{ type: "text", text }] } }));
  await waitFor(idleOf(sid), from, 60, "session.idle");
  return answer;
}

await step("prompt", () => promptAndIdle("Hello there"));

await step("prompt_async", async () => {
  const from = seen.length;
  const { response } = await client.session.promptAsync({
    path: { id: sid },
    body: { parts: [{ type: "text", text: "Hello again" }] },
  });
  await waitFor(idleOf(sid), from, 60, "session.idle");
  const events = seen.slice(from).filter((e) => sessionOf(e) === sid);
  const assistant = events.filter((e) => e.type === "message.updated" && e.properties.info.role === "assistant");
  const last = assistant.at(-1)?.properties.info;
  const texts = events.filter((e) => e.type === "message.part.updated" && e.properties.part.type === "text");
  return {
    status: response.status,
    types: events.map((e) => e.type),
    finish: last?.finish ?? null,
    deltas: last ? Object.values(deltasOf(events, last.id)) : [],
    finalText: texts.at(-1)?.properties.part.text ?? null,
  };
});

await step("messages", () => data(client.session.messages({ path: { id: sid } })));

await step("tool", async () => {
  const from = seen.length;
  const answer = await promptAndIdle("Please run TOOL now");
  const states = seen
    .slice(from)
    .filter((e) => e.type === "message.part.updated" && e.properties.part.type === "tool")
    .map((e) => e.properties.part.state.status);
  const messages = await data(client.session.messages({ path: { id: sid } }));
  const toolPart = messages.flatMap((m) => m.parts).find((p) => p.type === "tool");
  return { answer, states, toolPart };
});

await step(
  "abort_slow",
  async () => {
    const from = seen.length;
    const prompt = client.session.prompt({
      path: { id: sid },
      body: { parts: [{ type: "text", text: "Answer SLOW please" }] },
    });
    await waitFor(chunkOf(sid), from, 60, "the SLOW answer's first chunk");
    const busy = await data(client.session.status());
    const started = Date.now();
    const aborted = await data(client.session.abort({ path: { id: sid } }));
    const answer = await data(prompt);
    const answeredMs = Date.now() - started;
    await waitFor(idleOf(sid), from, 10, "session.idle after abort");
    const idle = await data(client.session.status());
    return { busy: busy[sid] ?? null, aborted, answer, answeredMs, idle };
  },
  90,
);

await step("usable_after_abort", async () => {
  const answer = await promptAndIdle("Still there?");
  return answer.parts.filter((p) => p.type === "text").map((p) => p.text);
});

await step("config", async () => {
  const config = await data(client.config.get());
  const text = JSON.stringify(config);
  return { keys: Object.keys(config), hasApiKey: text.includes("apiKey"), hasSecret: SECRET !== "" && text.includes(SECRET) };
});
await step("providers", async () => {
  const got = await data(client.config.providers());
  const text = JSON.stringify(got);
  return {
    providers: got.providers.map((p) => ({ id: p.id, models: Object.keys(p.models ?? {}) })),
    default: got.default,
    hasApiKey: text.includes("apiKey"),
    hasSecret: SECRET !== "" && text.includes(SECRET),
  };
});

// Reconnect: the SDK's SSE client resends the last `id:` it saw as Last-Event-ID when it
// reconnects after an error. A TCP proxy between the SDK and the server cuts the stream in the
// middle of a SLOW answer (as a load balancer dropping a connection would); the SDK reconnects
// through it, and the events sent while it was away must come back, each exactly once.
async function reconnect() {
  const upstream = new URL(BASE_URL);
  const sockets = new Set();
  const requests = [];
  const proxy = net.createServer((downstream) => {
    const up = net.connect(Number(upstream.port), upstream.hostname);
    sockets.add(downstream).add(up);
    let head = "";
    downstream.on("data", (chunk) => {
      if (head.length < 4096) {
        head += chunk.toString("latin1");
        if (head.includes("\r\n\r\n")) requests.push(head.split("\r\n\r\n")[0]);
      }
    });
    downstream.pipe(up).pipe(downstream);
    const close = () => {
      downstream.destroy();
      up.destroy();
    };
    downstream.on("error", close).on("close", close);
    up.on("error", close).on("close", close);
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  const viaProxy = createOpencodeClient({
    baseUrl: `http://127.0.0.1:${proxy.address().port}`,
    headers: AUTH,
  });
  const got = [];
  const errors = [];
  let cut = false;
  const sub = await viaProxy.event.subscribe({
    sseDefaultRetryDelay: 300,
    onSseError: (error) => errors.push(String(error?.message ?? error)),
  });
  let done;
  const finished = new Promise((resolve) => (done = resolve));
  (async () => {
    for await (const event of sub.stream) {
      got.push(event);
      if (idleOf(sid)(event)) done();
      const chunks = got.filter(chunkOf(sid)).length;
      if (!cut && chunks >= 6) {
        cut = true;
        for (const s of sockets) s.destroy(); // the stream dies mid-answer
        sockets.clear();
      }
    }
  })().catch((error) => errors.push(`iterator: ${error}`));
  await sleep(500);
  const from = seen.length;
  const { response } = await client.session.promptAsync({
    path: { id: sid },
    body: { parts: [{ type: "text", text: "Answer SLOW again" }] },
  });
  await Promise.race([finished, sleep(60000)]);
  await waitFor(idleOf(sid), from, 10, "session.idle on the main stream");
  const direct = seen.slice(from).filter((e) => sessionOf(e) === sid);
  const proxied = got.filter((e) => sessionOf(e) === sid);
  const assistant = direct.filter((e) => e.type === "message.updated" && e.properties.info.role === "assistant");
  const messageID = assistant.at(-1)?.properties.info.id;
  const ids = proxied.map((e) => e.id).filter(Boolean);
  proxy.close();
  return {
    status: response.status,
    cut,
    errors,
    reconnectHeaders: requests
      .filter((r) => r.startsWith("GET /event"))
      .map((r) => r.split("\r\n").find((l) => l.toLowerCase().startsWith("last-event-id:")) ?? null),
    directTypes: direct.map((e) => e.type),
    proxiedTypes: proxied.map((e) => e.type),
    duplicateIds: ids.length - new Set(ids).size,
    directText: Object.values(deltasOf(direct, messageID)),
    proxiedText: Object.values(deltasOf(proxied, messageID)),
    sawIdle: proxied.some(idleOf(sid)),
  };
}
await step("reconnect", reconnect, 120);

await step("delete", () => data(client.session.delete({ path: { id: sid } })));
await step("get_deleted", () => failure(client.session.get({ path: { id: sid } })));
await step("delete_again", () => failure(client.session.delete({ path: { id: sid } })));
await step("deleted_event", async () => {
  await waitFor((e) => e.type === "session.deleted" && sessionOf(e) === sid, 0, 10, "session.deleted");
  return true;
});
await step("unknown_session", () => failure(client.session.get({ path: { id: "ses_doesnotexist" } })));

await step("wrong_key", async () => {
  const stranger = createOpencodeClient({ baseUrl: BASE_URL, headers: { Authorization: "Bearer wrong" } });
  return failure(stranger.session.list());
});

finish({ sessionId: sid, streamErrors: seen.filter((e) => e.type === "__stream_error") });
