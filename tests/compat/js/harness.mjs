// Shared plumbing of the JS SDK scripts: steps that record their outcome instead of stopping
// the script (so one run shows every failure), and a log of every HTTP request the SDK made.
import axios from "axios";
import { writeFileSync } from "node:fs";

export const BASE_URL = process.env.HOPX_BASE_URL;
export const API_KEY = process.env.HOPX_API_KEY;
if (!BASE_URL || !API_KEY) {
  console.error("set HOPX_BASE_URL and HOPX_API_KEY");
  process.exit(2);
}

// The SDK builds its clients with axios.create when it needs them; wrapping create (before any
// client exists) lets the harness see every request and every failed answer, untouched.
export const http = { count: 0, failures: [], started: Date.now() };
const create = axios.create.bind(axios);
axios.create = (config) => {
  const instance = create(config);
  instance.interceptors.response.use(
    (response) => {
      http.count += 1;
      return response;
    },
    (error) => {
      http.count += 1;
      const config = error.config || {};
      let body = error.response?.data;
      if (Buffer.isBuffer(body) || body instanceof ArrayBuffer) body = Buffer.from(body).toString();
      http.failures.push({
        method: (config.method || "").toUpperCase(),
        url: `${config.baseURL || ""}${config.url || ""}`,
        status: error.response?.status ?? null,
        retryAfter: error.response?.headers?.["retry-after"] ?? null,
        body: typeof body === "string" ? body.slice(0, 500) : body ?? null,
        error: error.response ? undefined : String(error.message),
      });
      return Promise.reject(error);
    },
  );
  return instance;
};

// The SDK prints "[SDK] Got 401 Unauthorized, attempting token refresh..." on stdout when a
// data-plane token stopped working: a user sees it, so the harness counts it.
export const sdkLogs = [];
for (const level of ["log", "warn", "error"]) {
  const original = console[level].bind(console);
  console[level] = (...args) => {
    const text = args.map(String).join(" ");
    if (text.startsWith("[SDK]") || text.startsWith("Skipping invalid JSON")) sdkLogs.push(text);
    original(...args);
  };
}

export const steps = {};

// The result so far, written after every step: if the script hangs and is killed, the test
// still sees how far it got.
function save(extra = {}) {
  const out = {
    steps,
    http: {
      requests: http.count,
      seconds: (Date.now() - http.started) / 1000,
      failures: http.failures,
    },
    sdkLogs,
    ...extra,
  };
  const text = JSON.stringify(out, null, 1);
  if (process.env.HOPX_RESULT_FILE) writeFileSync(process.env.HOPX_RESULT_FILE, text);
  return text;
}

export function describe(error) {
  if (!(error instanceof Error)) return { name: typeof error, message: String(error) };
  return {
    name: error.name,
    code: error.code ?? null,
    statusCode: error.statusCode ?? null,
    requestId: error.requestId ?? null,
    message: String(error.message).slice(0, 500),
  };
}

export function withTimeout(promise, seconds, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${seconds}s`)), seconds * 1000);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// A step's value as plain data (a Sandbox object holds HTTP clients: keep its id).
function jsonable(value) {
  if (value === undefined || value === null) return null;
  if (typeof value === "object" && "sandboxId" in value && "publicClient" in value) {
    return { sandboxId: value.sandboxId };
  }
  try {
    return JSON.parse(JSON.stringify(value));
  } catch {
    return String(value);
  }
}

// Run one step; its value (or its error) lands in `steps[name]`. Never throws.
export async function step(name, fn, seconds = 60) {
  const started = Date.now();
  steps[name] = { ok: false, error: { name: "Running", message: "the step never ended" } };
  try {
    const value = await withTimeout(Promise.resolve().then(fn), seconds, name);
    steps[name] = { ok: true, value: jsonable(value), ms: Date.now() - started };
    return value;
  } catch (error) {
    steps[name] = { ok: false, error: describe(error), ms: Date.now() - started };
    return undefined;
  } finally {
    save();
  }
}

// Run `fn` expecting it to throw; the step's value is the error the SDK raised.
export async function expectError(name, fn, seconds = 60) {
  return step(
    name,
    async () => {
      try {
        await fn();
      } catch (error) {
        return describe(error);
      }
      throw new Error("no error was raised");
    },
    seconds,
  );
}

export function finish(extra = {}) {
  const text = save(extra);
  if (!process.env.HOPX_RESULT_FILE) process.stdout.write(text + "\n");
  // Open WebSockets or watchers must not keep the script alive.
  process.exit(0);
}
