"""The workspace quota covers what a sandbox can fill on the host: bytes and entries (inodes),
in its workspace and in a template layer it builds (issue 7)."""

from __future__ import annotations

import uuid

import pytest

from agentplex.core.ports import Resources, Template
from agentplex.sandbox import SandboxManager
from agentplex.sandbox.agentd.usage import tree_usage
from tests.sandbox.conftest import call, create

pytestmark = pytest.mark.asyncio(loop_scope="module")
MB = 1024 * 1024
QUOTA_MB = 64  # -> at most 16,384 files and directories


def _template(**extra: object) -> Template:
    return Template(
        id="small",
        name="small",
        display_name="Small",
        language="python",
        resources=Resources(vcpu=1.0, memory_mb=512, disk_mb=QUOTA_MB),
        builtin=False,
        **extra,  # type: ignore[arg-type]
    )


async def test_a_build_cannot_fill_the_host_disk_through_its_layer(
    manager: SandboxManager,
) -> None:
    layer_id = "tpl-" + uuid.uuid4().hex[:12]
    h = await create(manager, _template(layer_id=layer_id, layer_writable=True))
    # what a build's setup command may run: 4 x 40 MiB into a 64 MiB quota, outside /workspace
    writer = 'for i in 1 2 3 4; do fallocate -l 40M "$TEMPLATE_LAYER/f$i"; sleep 1; done; echo done'
    _, body = await call(h, "POST", "/commands/run", json={"command": writer, "timeout": 60})
    assert body["exit_code"] == 137 and "disk quota exceeded" in body["stderr"], body
    assert "done" not in body["stdout"]
    layer = manager.layers_dir / layer_id / "layer"
    used, _ = tree_usage(layer)
    assert used <= 2 * 40 * MB, used // MB
    await manager.delete(h.id)


async def test_too_many_files_stop_the_writer_and_refuse_writes(manager: SandboxManager) -> None:
    h = await create(manager, _template())
    maker = "for i in range(200_000): open(f'f{i}', 'w').close()\nprint('done')"
    _, body = await call(
        h, "POST", "/commands/run", json={"command": f'python3 -c "{maker}"', "timeout": 120}
    )
    assert body["exit_code"] == 137 and "too many files" in body["stderr"], body
    assert "done" not in body["stdout"]
    _, entries = tree_usage(h.workspace)
    assert 16_384 < entries < 100_000, entries
    # a few bytes would fit the byte quota, but another file must not be made
    status, refused = await call(
        h, "POST", "/files/write", json={"path": "/workspace/more.txt", "content": "x"}
    )
    assert status == 507, refused
    # once the files are gone, writes work again
    _, body = await call(
        h, "POST", "/commands/run", json={"command": "find . -name 'f*' -delete", "timeout": 120}
    )
    assert body["exit_code"] == 0, body
    status, _ = await call(
        h, "POST", "/files/write", json={"path": "/workspace/more.txt", "content": "x"}
    )
    assert status == 200
    await manager.delete(h.id)
