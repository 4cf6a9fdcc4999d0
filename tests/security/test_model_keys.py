"""Model keys stay in the server: code in a sandbox cannot read OPENAI_API_KEY or
ANTHROPIC_API_KEY of the server's environment, by any route the agent's tools offer.

The keys are set in this (the server's) process before the sandbox manager starts, so the
zygotes, the warm pool and every sandbox are made by a process that holds them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from agentplex.agent.tools import SandboxTools
from agentplex.core.ports import ToolContext, ToolResult
from agentplex.sandbox import SandboxManager
from tests.sandbox.conftest import create

pytestmark = pytest.mark.asyncio(loop_scope="module")

OPENAI = "sk-openai-" + uuid.uuid4().hex
ANTHROPIC = "sk-ant-" + uuid.uuid4().hex
SECRETS = (OPENAI, ANTHROPIC)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def manager(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SandboxManager]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_API_KEY", OPENAI)
        mp.setenv("ANTHROPIC_API_KEY", ANTHROPIC)
        async with SandboxManager(tmp_path_factory.mktemp("data"), pool_size=1) as m:
            await m.wait_pool(120)
            yield m


async def _call(manager: SandboxManager, sandbox_id: str, name: str, code: str) -> ToolResult:
    async def sandbox() -> str:
        return sandbox_id

    async def progress(_text: str) -> None:
        return None

    ctx = ToolContext("env", "ses_k", "msg_k", "call_k", sandbox, progress, timeout=60.0)
    key = "command" if name == "bash" else "code"
    return await SandboxTools(manager).call(ctx, name, {key: code})


def _leaks(text: str) -> list[str]:
    return [s[:12] + "..." for s in SECRETS if s in text]


# Reads every /proc/<pid>/{environ,cmdline} (and each thread's) the code can see, and the
# files of the trees it can write or that were generated for it; prints the text around each
# place that looks like a key (the probe itself knows only the keys' prefixes), and counts.
_PROBE = r"""
import os, re
LOOK = re.compile(rb"(sk-openai-|sk-ant-|OPENAI_API_KEY|ANTHROPIC_API_KEY).{0,80}")
hits, read, refused = [], 0, 0
def scan(path, limit=-1):
    global read, refused
    try:
        with open(path, "rb") as f:
            data = f.read(limit)
    except OSError:
        refused += 1
        return
    read += 1
    hits.extend(f"{path}: {m.group(0)!r}" for m in LOOK.finditer(data))
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    places = [f"/proc/{pid}"]
    try:
        places += [f"/proc/{pid}/task/{t}" for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        pass
    for place in places:
        scan(f"{place}/environ")
        scan(f"{place}/cmdline")
for top in ("/etc", "/tmp", "/run", "/workspace", "/var"):
    for root, _dirs, files in os.walk(top):
        for file in files:
            scan(os.path.join(root, file), 1 << 20)
hits.extend(f"env: {k}={v}" for k, v in os.environ.items() if LOOK.search(f"{k}={v}".encode()))
print("\n".join(hits))
print(f"PROBED read={read} refused={refused}")
"""


@pytest.mark.parametrize("template", ["python", "bash"])
async def test_sandbox_code_cannot_read_the_model_keys(
    manager: SandboxManager, template: str
) -> None:
    assert os.environ["OPENAI_API_KEY"] == OPENAI  # the server does hold them
    handle = await create(manager, template)
    server_pid = os.getpid()
    for name, code in (
        ("bash", "env; cat /proc/self/environ; cat /proc/1/environ; cat /proc/$PPID/environ"),
        ("bash", f"cat /proc/{server_pid}/environ /proc/{server_pid}/cmdline"),
        ("bash", "for e in /proc/[0-9]*/environ; do cat $e; echo; done"),
        ("python", "import os; print(dict(os.environ))"),
        ("python", f"print(open('/proc/{server_pid}/environ', 'rb').read())"),
    ):
        result = await _call(manager, handle.id, name, code)
        text = result.output + (result.error or "")
        assert not result.metadata.get("truncated"), "a leak could hide in what was cut"
        assert not _leaks(text), f"{name} `{code[:60]}` read a model key"
    probe = await _call(manager, handle.id, "python", _PROBE)
    assert probe.error is None, probe.error
    assert "PROBED read=" in probe.output  # it ran and walked /proc
    assert not probe.metadata["truncated"]
    assert not _leaks(probe.output)


async def test_no_process_the_sandbox_layer_started_holds_the_keys(
    manager: SandboxManager,
) -> None:
    """Not even on the host: zygotes, bubblewraps, agentds, kernels and commands all start
    from a clean environment, so a process that escaped would find no key there either."""
    handle = await create(manager, "python")
    await _call(manager, handle.id, "python", "x = 1")  # the kernel runs
    await _call(manager, handle.id, "bash", "sleep 0.1")
    holders = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if _leaks(environ):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            holders.append(f"{entry.name}: {cmdline[:120]}")
    assert holders == []


async def test_the_probe_finds_a_key_that_is_there(manager: SandboxManager) -> None:
    """The control: a key handed to a sandbox on purpose (its own env_vars) is found, so the
    tests above would see one that leaked."""
    handle = await create(manager, "python", env_vars={"OPENAI_API_KEY": OPENAI})
    probe = await _call(manager, handle.id, "python", _PROBE)
    assert OPENAI in probe.output
    shell = await _call(manager, handle.id, "bash", "env")
    assert OPENAI in shell.output
