// Plumbing of the OpenCode SDK scripts: steps that record their outcome instead of stopping the
// script (one run shows every failure), saved after every step so a hung script still tells how
// far it got.
import { writeFileSync } from "node:fs";

export const BASE_URL = process.env.OPENCODE_BASE_URL;
export const API_KEY = process.env.OPENCODE_API_KEY;
if (!BASE_URL) {
  console.error("set OPENCODE_BASE_URL (and OPENCODE_API_KEY when the server wants one)");
  process.exit(2);
}
export const AUTH = API_KEY ? { Authorization: `Bearer ${API_KEY}` } : {};

export const steps = {};

function save(extra = {}) {
  const text = JSON.stringify({ steps, ...extra }, null, 1);
  if (process.env.OPENCODE_RESULT_FILE) writeFileSync(process.env.OPENCODE_RESULT_FILE, text);
  return text;
}

export function describe(error) {
  if (!(error instanceof Error)) return { name: typeof error, message: String(error) };
  return { name: error.name, message: String(error.message).slice(0, 1000) };
}

export function withTimeout(promise, seconds, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${seconds}s`)), seconds * 1000);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Run one step; its value (or its error) lands in `steps[name]`. Never throws.
export async function step(name, fn, seconds = 60) {
  const started = Date.now();
  steps[name] = { ok: false, error: { name: "Running", message: "the step never ended" } };
  try {
    const value = await withTimeout(Promise.resolve().then(fn), seconds, name);
    steps[name] = { ok: true, value: value === undefined ? null : value, ms: Date.now() - started };
    return value;
  } catch (error) {
    steps[name] = { ok: false, error: describe(error), ms: Date.now() - started };
    return undefined;
  } finally {
    save();
  }
}

// The SDK's result tuple `{data, error, response}` as a step value: the data of a 2xx answer,
// else an Error carrying the status and the parsed error body.
export async function data(call) {
  const { data, error, response } = await call;
  if (error !== undefined || !response?.ok) {
    throw new Error(`HTTP ${response?.status}: ${JSON.stringify(error)}`);
  }
  return data;
}

// The status and error body of a call that must fail.
export async function failure(call) {
  const { data, error, response } = await call;
  if (response?.ok) throw new Error(`expected an error, got ${response.status}: ${JSON.stringify(data)}`);
  return { status: response?.status ?? null, error: error ?? null };
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function finish(extra = {}) {
  const text = save(extra);
  if (!process.env.OPENCODE_RESULT_FILE) process.stdout.write(text + "\n");
  process.exit(0); // open SSE streams must not keep the script alive
}
