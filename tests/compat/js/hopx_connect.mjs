// A second process attaching to a sandbox another script created, as the SDK's README shows:
// Sandbox.connect(id), then use it. Usage: node hopx_connect.mjs <sandbox id>
import { BASE_URL, API_KEY, step, finish } from "./harness.mjs";
import { Sandbox } from "@hopx-ai/sdk";

const sandboxId = process.argv[2];
const sandbox = await step("connect", () => Sandbox.connect(sandboxId, API_KEY, BASE_URL));
if (sandbox) {
  // the variable the first process defined is there: it is the same sandbox and kernel
  await step("state_from_first_process", async () => (await sandbox.runCode("print(x)")).stdout);
  await step("read_file_of_first_process", () => sandbox.files.read("/workspace/from-first.txt"));
  await step("write_file_for_first_process", async () => {
    await sandbox.files.write("/workspace/from-second.txt", "second process");
    return true;
  });
}
finish();
