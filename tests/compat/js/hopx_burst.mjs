// A script's pace on one sandbox's data plane: N calls back to back (default 100).
// Usage: node hopx_burst.mjs [calls]
import { BASE_URL, API_KEY, step, finish } from "./harness.mjs";
import { Sandbox } from "@hopx-ai/sdk";

const calls = Number(process.argv[2] || 100);
const sandbox = await step("create", () =>
  Sandbox.create({ template: "bash", apiKey: API_KEY, baseURL: BASE_URL }),
);
if (sandbox) {
  await step("burst", async () => {
    const started = Date.now();
    const errors = {}; // error class -> how many
    for (let i = 0; i < calls; i++) {
      try {
        await sandbox.files.exists("/workspace");
      } catch (error) {
        const kind = `${error.name} ${error.statusCode ?? ""}`.trim();
        errors[kind] = (errors[kind] ?? 0) + 1;
      }
    }
    return { calls, errors, seconds: (Date.now() - started) / 1000 };
  });
  await step("kill", async () => {
    await sandbox.kill();
    return true;
  });
}
finish();
