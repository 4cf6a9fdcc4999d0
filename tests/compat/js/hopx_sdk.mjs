// The official @hopx-ai/sdk against agentplex, used as its README shows and as a script would:
// back to back, no pauses. Every step's outcome lands in the JSON result (see harness.mjs);
// tests/compat/test_hopx_js_sdk.py asserts on it.
//
// Environment: HOPX_BASE_URL, HOPX_API_KEY, optional HOPX_RESULT_FILE (else JSON on stdout).
import { BASE_URL, API_KEY, step, expectError, finish, withTimeout } from "./harness.mjs";
import { Sandbox, HopxError } from "@hopx-ai/sdk";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const local = mkdtempSync(join(tmpdir(), "hopx-js-"));
process.on("exit", () => rmSync(local, { recursive: true, force: true }));

// ---------------------------------------------------------------- control plane, no sandbox
await step("health_check", () => Sandbox.healthCheck(BASE_URL));
await step("list_templates", async () => {
  const templates = await Sandbox.listTemplates({ apiKey: API_KEY, baseURL: BASE_URL });
  return templates.map((t) => ({
    id: t.id,
    name: t.name,
    displayName: t.displayName,
    defaultResources: t.defaultResources ?? null,
    minResources: t.minResources ?? null,
    maxResources: t.maxResources ?? null,
  }));
});
await step("get_template", async () => {
  const t = await Sandbox.getTemplate("python", { apiKey: API_KEY, baseURL: BASE_URL });
  return { id: t.id, name: t.name, defaultResources: t.defaultResources ?? null };
});

// ---------------------------------------------------------------- create and inspect
const sandbox = await step("create", () =>
  Sandbox.create({
    template: "python",
    apiKey: API_KEY,
    baseURL: BASE_URL,
    timeoutSeconds: 900,
    envVars: { GREETING: "hello" },
  }),
);
if (!sandbox) finish();

await step("get_info", async () => {
  const info = await sandbox.getInfo();
  return {
    sandboxId: info.sandboxId,
    status: info.status,
    templateName: info.templateName,
    publicHost: info.publicHost,
    resources: info.resources ?? null,
    timeoutSeconds: info.timeoutSeconds,
    expiresAt: info.expiresAt ?? null,
  };
});
await step("is_healthy", () => sandbox.isHealthy());
await step("agent_info", async () => (await sandbox.getAgentInfo()).languages ?? null);
await step("metrics_snapshot", async () => typeof (await sandbox.getMetricsSnapshot()).timestamp);

// ---------------------------------------------------------------- code
await step("run_code_define", async () => {
  const r = await sandbox.runCode("x = 41\nprint('ready')");
  return { stdout: r.stdout, success: r.success, exitCode: r.exitCode };
});
await step("run_code_state", async () => (await sandbox.runCode("print(x + 1)")).stdout);
await step("run_code_env_from_create", async () =>
  (await sandbox.runCode("import os\nprint(os.environ['GREETING'])")).stdout,
);
await step("run_code_matplotlib", async () => {
  const r = await sandbox.runCode("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()");
  const png = (r.richOutputs || []).find((o) => o.type === "image/png");
  const data = png ? Buffer.from(png.data["image/png"], "base64") : Buffer.alloc(0);
  return { success: r.success, types: (r.richOutputs || []).map((o) => o.type), pngMagic: data.subarray(1, 4).toString() };
});
await step("run_code_dataframe", async () => {
  const r = await sandbox.runCode("import pandas as pd\npd.DataFrame({'a': [1, 2]})");
  return (r.richOutputs || []).map((o) => o.type);
});
await step("run_code_bash", async () =>
  (await sandbox.runCode("echo $GREETING from bash", { language: "bash" })).stdout,
);
await step("run_code_error", async () => {
  const r = await sandbox.runCode("1 / 0");
  return { success: r.success, zeroDivision: r.stderr.includes("ZeroDivisionError") };
});
await expectError("run_code_timeout", () => sandbox.runCode("import time\ntime.sleep(30)", { timeout: 1 }));
await step("run_code_after_timeout", async () => (await sandbox.runCode("print('still usable')")).stdout);
await step("run_ipython", async () => {
  const r = await sandbox.runIpython("y = 5\ny * 2");
  return { success: r.success, result: r.result ?? null, stdout: r.stdout };
});

// ---------------------------------------------------------------- commands
await step("command_run", async () => {
  const r = await sandbox.commands.run("ls /workspace && echo done");
  return { exitCode: r.exit_code, stdout: r.stdout };
});
await step("command_env_workdir", async () => {
  const r = await sandbox.commands.run("echo $WHO in $(pwd)", { env: { WHO: "js" }, workingDir: "/tmp" });
  return r.stdout;
});
await step("command_background", async () => {
  const r = await sandbox.commands.run("sleep 1 && echo done", { background: true, timeout: 30 });
  return { processId: r.process_id ?? null };
});

// ---------------------------------------------------------------- files
await step("files_write_read", async () => {
  await sandbox.files.write("/workspace/notes.txt", "line one\n");
  return sandbox.files.read("/workspace/notes.txt");
});
await step("files_exists", () => sandbox.files.exists("/workspace/notes.txt"));
await step("files_mkdir_list", async () => {
  await sandbox.files.mkdir("/workspace/sub");
  const files = await sandbox.files.list("/workspace");
  return files.map((f) => ({ name: f.name, isDir: f.isDir, size: f.size }));
});
await step("files_bytes", async () => {
  await sandbox.files.writeBytes("/workspace/raw.bin", Buffer.from([0, 1, 2, 255]));
  return [...(await sandbox.files.readBytes("/workspace/raw.bin"))];
});
await step("files_upload_download", async () => {
  const path = join(local, "upload.bin");
  writeFileSync(path, Buffer.from("\x00\x01binary", "latin1"));
  await sandbox.files.upload(path, "/workspace/upload.bin");
  const back = await sandbox.files.download("/workspace/upload.bin");
  return back.toString("latin1") === "\x00\x01binary";
});
await step("files_remove", async () => {
  await sandbox.files.remove("/workspace/notes.txt");
  return sandbox.files.exists("/workspace/notes.txt");
});
await expectError("files_read_missing", () => sandbox.files.read("/workspace/missing.txt"));
await expectError("files_read_outside", () => sandbox.files.read("/etc/shadow"));

// ---------------------------------------------------------------- env
await step("env_set_get", async () => {
  await sandbox.env.set("MODE", "test");
  return sandbox.env.get("MODE");
});
await step("env_update_get_all", async () => {
  await sandbox.env.update({ LEVEL: "debug" });
  const all = await sandbox.env.getAll();
  return { MODE: all.MODE ?? null, LEVEL: all.LEVEL ?? null, GREETING: all.GREETING ?? null };
});
await step("env_delete", async () => {
  await sandbox.env.delete("LEVEL");
  return "LEVEL" in (await sandbox.env.getAll());
});
await step("env_in_code", async () =>
  (await sandbox.runCode("import os\nprint(os.environ.get('MODE'))")).stdout,
);

// ---------------------------------------------------------------- background and processes
const background = await step("run_code_background", async () => {
  const r = await sandbox.runCodeBackground("import time\ntime.sleep(30)", { name: "sleeper" });
  return { processId: r.process_id ?? null, status: r.status ?? null };
});
await step("list_processes", async () => {
  const processes = await sandbox.listProcesses();
  return (processes || []).map((p) => ({ processId: p.process_id, status: p.status, name: p.name }));
});
await step("kill_process", async () => {
  await sandbox.killProcess(background.processId);
  const processes = await sandbox.listProcesses();
  return processes.find((p) => p.process_id === background.processId)?.status ?? null;
});
await step("list_system_processes", async () => {
  const processes = await sandbox.listSystemProcesses();
  return { count: processes.length, first: processes[0] ?? null };
});
await step("jupyter_sessions", async () => {
  const sessions = await sandbox.getJupyterSessions();
  return { count: sessions.length, first: sessions[0] ?? null };
});
await step("cache_stats", () => sandbox.cache.stats());
await step("cache_clear", () => sandbox.cache.clear());

// ---------------------------------------------------------------- WebSockets
async function stream(sb) {
  const messages = [];
  const code = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.05)";
  for await (const message of sb.runCodeStream(code)) messages.push(message);
  return {
    stdout: messages.filter((m) => m.type === "stdout").map((m) => m.data).join(""),
    types: [...new Set(messages.map((m) => m.type))],
    last: messages.at(-1)?.type ?? null,
  };
}
async function terminal(sb) {
  const ws = await sb.terminal.connect();
  sb.terminal.sendInput(ws, "echo term-$((40+2))\n");
  let seen = "";
  for await (const message of sb.terminal.output(ws)) {
    seen += String(message.data ?? "");
    if (seen.includes("term-42")) break;
  }
  ws.close();
  return seen.includes("term-42");
}
await step("execute_stream", () => stream(sandbox), 30);
await step("terminal", () => terminal(sandbox), 30);
await step("watch_files", async () => {
  const watcher = sandbox.watchFiles("/workspace");
  const first = watcher.next();
  await new Promise((resolve) => setTimeout(resolve, 1000)); // let the watch start
  await sandbox.files.write("/workspace/watched.txt", "x");
  let next = first;
  for (let i = 0; i < 20; i++) {
    const { value, done } = await withTimeout(next, 20, "file watch");
    if (done) return null;
    if (String(value.path ?? "").endsWith("watched.txt")) return { type: value.type, event: value.event ?? null };
    next = watcher.next();
  }
  return null;
}, 30);

// ---------------------------------------------------------------- listing
await step("list_sandboxes", async () => {
  const listed = await Sandbox.list({ apiKey: API_KEY, baseURL: BASE_URL });
  return listed.map((s) => s.sandboxId).includes(sandbox.sandboxId);
});
await step("iter_sandboxes", async () => {
  for await (const s of Sandbox.iter({ apiKey: API_KEY, baseURL: BASE_URL, status: "running" })) {
    if (s.sandboxId === sandbox.sandboxId) return true;
  }
  return false;
});

// ---------------------------------------------------------------- lifecycle
await step("pause", async () => {
  await sandbox.pause();
  return (await sandbox.getInfo()).status;
});
await step("resume", async () => {
  await sandbox.resume();
  return (await sandbox.getInfo()).status;
});
await step("state_after_resume", async () => (await sandbox.runCode("print(x)")).stdout);
await step("set_timeout", async () => {
  await sandbox.setTimeout(300);
  const info = await sandbox.getInfo();
  return { timeoutSeconds: info.timeoutSeconds, secondsLeft: await sandbox.getTimeToExpiry() };
});

// ---------------------------------------------------------------- async execution with a callback
const callbacks = [];
const receiver = http.createServer((req, res) => {
  let body = "";
  req.on("data", (chunk) => (body += chunk));
  req.on("end", () => {
    try {
      callbacks.push(JSON.parse(body));
    } catch {
      callbacks.push({ raw: body });
    }
    res.writeHead(200, { "content-type": "application/json" }).end("{}");
  });
});
await new Promise((resolve) => receiver.listen(0, "127.0.0.1", resolve));
const asyncRun = await step("run_code_async", async () => {
  const r = await sandbox.runCodeAsync("print('called back')", {
    callbackUrl: `http://127.0.0.1:${receiver.address().port}/callback`,
  });
  return { executionId: r.execution_id ?? null, status: r.status ?? null, callbackUrl: r.callback_url ?? null };
});
if (asyncRun) {
  await step("async_callback", async () => {
    for (let i = 0; i < 200 && callbacks.length === 0; i++) await new Promise((r) => setTimeout(r, 100));
    const body = callbacks[0];
    if (!body) throw new Error("no callback within 20s");
    return { executionId: body.execution_id ?? null, stdout: body.stdout ?? null, status: body.status ?? null };
  }, 30);
}
receiver.close();

// ---------------------------------------------------------------- a script's pace
// Back to back, one sandbox sees a few hundred calls a second; none may be refused.
await step("burst_data_plane", async () => {
  const started = Date.now();
  const errors = {}; // error class -> how many
  for (let i = 0; i < 300; i++) {
    try {
      await sandbox.files.exists("/workspace/upload.bin");
    } catch (error) {
      errors[error.name] = (errors[error.name] ?? 0) + 1;
    }
  }
  return { calls: 300, errors, seconds: (Date.now() - started) / 1000 };
});
await step("burst_data_plane_parallel", async () => {
  const outcomes = await Promise.allSettled(Array.from({ length: 30 }, () => sandbox.env.getAll()));
  const errors = {};
  for (const o of outcomes) if (o.status === "rejected") errors[o.reason?.name] = (errors[o.reason?.name] ?? 0) + 1;
  return errors;
});
await step("burst_control_plane", async () => {
  const started = Date.now();
  const errors = {}; // error class -> how many
  // a status poll without a pause, as scripts write them
  for (let i = 0; i < 100; i++) {
    try {
      await sandbox.getInfo();
    } catch (error) {
      errors[error.name] = (errors[error.name] ?? 0) + 1;
    }
  }
  return { calls: 100, errors, seconds: (Date.now() - started) / 1000 };
});

// ---------------------------------------------------------------- a second Sandbox object
await step("files_for_connect", async () => {
  await sandbox.files.write("/workspace/from-first.txt", "first process");
  return true;
});
const twin = await step("connect_same_process", () => Sandbox.connect(sandbox.sandboxId, API_KEY, BASE_URL));
await step("twin_sees_state", async () => (await twin.runCode("print(x)")).stdout);
await step("first_after_connect", async () => (await sandbox.runCode("print(x * 2)")).stdout);
await step("first_stream_after_connect", () => stream(sandbox), 30);

const second = await step("second_process", () =>
  new Promise((resolve, reject) => {
    const result = join(local, "second.json");
    execFile(
      process.execPath,
      [join(here, "hopx_connect.mjs"), sandbox.sandboxId],
      { env: { ...process.env, HOPX_RESULT_FILE: result }, timeout: 80_000 },
      (error, stdout, stderr) => {
        if (error) reject(new Error(`second process failed: ${error.message}\n${stderr}`));
        else resolve(JSON.parse(readFileSync(result, "utf8")));
      },
    );
  }),
  90,
);
// The first object keeps working after another process connected (and so refreshed the
// token). The server trusts a token it verified for a moment (auth.cache_seconds, 2 s): wait
// past that, as a script doing other work would, so a token the refresh revoked is refused.
await new Promise((resolve) => setTimeout(resolve, 3000));
await step("first_stream_after_second_process", () => stream(sandbox), 30);
await step("first_after_second_process", async () => (await sandbox.runCode("print(x + 1)")).stdout);
await step("first_reads_second_file", () => sandbox.files.read("/workspace/from-second.txt"));
await step("twin_after_second_process", async () => (await twin.runCode("print('twin ok')")).stdout);

// ---------------------------------------------------------------- errors
await expectError("connect_missing_sandbox", () => Sandbox.connect("sbx_does_not_exist", API_KEY, BASE_URL));
await expectError("wrong_api_key", () => Sandbox.list({ apiKey: "apx_wrong", baseURL: BASE_URL }));
await expectError("create_unknown_template", () =>
  Sandbox.create({ template: "no-such-template", apiKey: API_KEY, baseURL: BASE_URL }),
);
await step("error_is_hopx_error", async () => {
  try {
    await Sandbox.connect("sbx_does_not_exist", API_KEY, BASE_URL);
  } catch (error) {
    return error instanceof HopxError;
  }
  return false;
});

// ---------------------------------------------------------------- kill
await step("kill", async () => {
  await sandbox.kill();
  return true;
});
await expectError("get_info_after_kill", () => sandbox.getInfo());

finish({ sandboxId: sandbox.sandboxId, second: second ?? null });
