"""Unit tests: path confinement, the lifecycle state machine, the warm pool, templates."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from agentplex.errors import SandboxStateConflict
from agentplex.sandbox.agentd.errors import AgentError
from agentplex.sandbox.agentd.paths import PathMapper
from agentplex.sandbox.pool import WarmPool
from agentplex.sandbox.state import SandboxState, next_state
from agentplex.sandbox.templates import builtin_templates
from tests.sandbox.conftest import create


@pytest.fixture
def mapper(tmp_path: Path) -> PathMapper:
    (tmp_path / "ws").mkdir()
    (tmp_path / "tmp").mkdir()
    (tmp_path / "secret").write_text("no")
    return PathMapper("/workspace", str(tmp_path / "ws"), str(tmp_path / "tmp"))


def test_relative_paths_resolve_against_workspace(mapper: PathMapper, tmp_path: Path) -> None:
    assert mapper.resolve("a/b.txt") == str(tmp_path / "ws" / "a" / "b.txt")
    assert mapper.resolve("/workspace/x") == str(tmp_path / "ws" / "x")
    assert mapper.resolve("/tmp/y") == str(tmp_path / "tmp" / "y")
    assert mapper.to_client(str(tmp_path / "ws" / "x")) == "/workspace/x"


@pytest.mark.parametrize("path", ["/etc/passwd", "../secret", "/workspace/../etc", "/", "/tmpx"])
def test_paths_outside_the_sandbox_are_refused(mapper: PathMapper, path: str) -> None:
    with pytest.raises(AgentError) as err:
        mapper.resolve(path)
    assert err.value.code == "PATH_NOT_ALLOWED"
    assert err.value.status == 403


def test_symlinks_leading_out_are_refused(mapper: PathMapper, tmp_path: Path) -> None:
    os.symlink(tmp_path / "secret", tmp_path / "ws" / "link")
    with pytest.raises(AgentError) as err:
        mapper.resolve("link")
    assert err.value.code == "PATH_NOT_ALLOWED"


def test_empty_path_is_an_invalid_request(mapper: PathMapper) -> None:
    with pytest.raises(AgentError) as err:
        mapper.resolve("")
    assert err.value.code == "INVALID_REQUEST"


def test_state_machine_allows_the_hopx_lifecycle() -> None:
    s = SandboxState.CREATING
    s = next_state(s, "ready")
    assert s is SandboxState.RUNNING
    assert next_state(s, "pause") is SandboxState.PAUSED
    assert next_state(SandboxState.PAUSED, "resume") is SandboxState.RUNNING
    assert next_state(SandboxState.RUNNING, "stop") is SandboxState.STOPPED
    assert next_state(SandboxState.STOPPED, "start") is SandboxState.CREATING
    assert next_state(SandboxState.PAUSED, "delete") is SandboxState.DELETED


@pytest.mark.parametrize(
    ("state", "action"),
    [
        (SandboxState.STOPPED, "pause"),
        (SandboxState.RUNNING, "resume"),
        (SandboxState.RUNNING, "start"),
        (SandboxState.DELETED, "stop"),
    ],
)
def test_state_machine_refuses_the_rest(state: SandboxState, action: str) -> None:
    with pytest.raises(SandboxStateConflict, match=f"cannot {action}"):
        next_state(state, action)


def test_builtin_templates_are_what_this_host_runs() -> None:
    templates = {t.id: t for t in builtin_templates()}
    assert {"python", "bash"} <= set(templates)
    assert templates["python"].language == "python" and templates["python"].builtin
    assert ("node" in templates) == (shutil.which("node") is not None)
    assert ("go" in templates) == (shutil.which("go") is not None)


async def test_pool_fills_hands_out_and_refills() -> None:
    made: list[int] = []
    discarded: list[int] = []

    async def spawn(internet: bool) -> int:
        await asyncio.sleep(0.001)
        made.append(len(made))
        return made[-1]

    async def discard(item: int) -> None:
        discarded.append(item)

    pool: WarmPool[int] = WarmPool({False: 3, True: 0}, spawn, discard, refill_delay=0.0)
    pool.kick()
    await pool.wait_full(5)
    assert pool.size(False) == 3
    assert pool.take(True) is None  # no internet pool configured
    first = pool.take(False)
    assert first == 0
    await asyncio.sleep(0.05)
    await pool.wait_full(5)
    assert pool.size(False) == 3 and len(made) == 4
    await pool.close()
    assert sorted(discarded) == [1, 2, 3]


async def test_pool_survives_failing_spawns() -> None:
    calls = 0

    async def spawn(internet: bool) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return calls

    async def discard(item: int) -> None:
        pass

    pool: WarmPool[int] = WarmPool({False: 1}, spawn, discard, retry_delay=0.01, refill_delay=0)
    pool.kick()
    await pool.wait_full(5)
    assert pool.last_error == "RuntimeError: boom"
    assert pool.take(False) == 2
    await pool.close()


def test_python_trees_under_tmp_stay_walkable_for_the_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A checkout under /tmp (its .venv, its src) is bound into the sandbox's fresh /tmp; the
    # parents bwrap creates for it must not be 0700, or the code's uid can't import from it.
    from agentplex.sandbox import bwrap

    monkeypatch.setattr(bwrap, "tmp_trees", lambda: ["/tmp/ci/main/.venv", "/tmp/ci/main/src"])
    args = bwrap.bwrap_command("bwrap", hidden=[], internet=False)
    text = " ".join(args)
    assert "--perms 0755 --dir /tmp/ci --perms 0755 --dir /tmp/ci/main --ro-bind" in text
    assert text.count("--dir /tmp/ci/main ") == 1
    assert text.index("--tmpfs /tmp") < text.index("--dir /tmp/ci")
    assert "--ro-bind /tmp/ci/main/src /tmp/ci/main/src" in text


def test_the_root_binds_only_the_system_and_runtime_trees(tmp_path: Path) -> None:
    import sys

    import agentplex
    from agentplex.sandbox import bwrap

    args = bwrap.bwrap_command("bwrap", hidden=[], internet=False, etc_dir=str(tmp_path))
    sources = [args[i + 1] for i, a in enumerate(args) if a in ("--ro-bind", "--bind")]
    checkout = Path(agentplex.__file__).resolve().parents[2]
    for host in ("/home", "/root", "/opt", "/var", "/srv", "/mnt", "/etc", str(checkout)):
        assert host not in sources, host
    assert "/usr" in sources and str(tmp_path) in sources  # the generated /etc
    assert str(Path(agentplex.__file__).resolve().parent) in sources  # the package, not src/
    assert any(Path(sys.prefix).resolve() == Path(s) for s in sources)


def test_the_generated_etc_is_minimal_and_names_the_sandbox_users(tmp_path: Path) -> None:
    from agentplex.sandbox.bwrap import write_etc

    closed = write_etc(tmp_path / "etc", internet=False)
    names = {p.name for p in closed.iterdir()}
    assert {"passwd", "group", "hosts", "hostname", "nsswitch.conf", "ld.so.cache"} <= names
    assert not names & {"shadow", "resolv.conf", "ssl", "pip.conf", "ssh", "sudoers"}
    assert "user:x:1000:1000:" in (closed / "passwd").read_text()
    assert (closed / "hostname").read_text() == "sandbox\n"
    assert all(p.stat().st_mode & 0o004 for p in closed.rglob("*") if not p.is_symlink())
    net = write_etc(tmp_path / "etc-net", internet=True)
    assert (net / "resolv.conf").is_file() and (net / "ssl" / "certs").is_dir()


async def test_a_closed_manager_leaves_no_cgroups(tmp_path: Path) -> None:
    from agentplex.sandbox import SandboxManager

    manager = SandboxManager(tmp_path, pool_size=0, preload_scientific=False)
    await manager.open()
    if manager.cgroups is None:
        await manager.close()
        pytest.fail("cgroups are not writable here; this test needs them, as the suite does")
    bases = list(manager.cgroups.bases.values())
    handle = await create(manager, "bash")
    await manager.stop(handle.id)
    await manager.start(handle.id, handle.template, env_vars={}, internet_access=False)
    assert manager.run_dir.is_dir()
    await manager.close()
    assert bases and not any(base.exists() for base in bases)
    assert not manager.run_dir.exists()  # a clean stop leaves no /tmp/agentplex-* behind


async def test_missing_cgroups_are_reported_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from agentplex.sandbox import SandboxManager, cgroups, manager

    monkeypatch.setattr(cgroups.CgroupRoot, "detect", classmethod(lambda cls, name="": None))
    sandboxes = manager.SandboxManager(tmp_path, pool_size=0, preload_scientific=False)
    assert isinstance(sandboxes, SandboxManager)
    await sandboxes.open()
    try:
        assert sandboxes.status()["cgroups"].startswith("unavailable")
        handle = await create(sandboxes, "bash")  # still runs, without limits
        assert handle.state.value == "running"
    finally:
        await sandboxes.close()
    assert any("SANDBOX LIMITS UNAVAILABLE" in r.getMessage() for r in caplog.records)
