"""`agentplex deploy`'s packaging: what goes into a build, deterministically."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from agentplex.cli_client import package, project_files


def test_a_project_is_packaged_without_clutter_and_with_one_hash(tmp_path: Path) -> None:
    project = tmp_path / "p"
    (project / "app").mkdir(parents=True)
    (project / "app" / "__init__.py").write_text("")
    (project / "app" / "main.py").write_text("def f():\n    return 1\n")
    (project / "agentplex.json").write_text("{}")
    (project / ".env").write_text("SECRET=1")
    (project / "app" / "__pycache__").mkdir()
    (project / "app" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"x")
    (project / "venv").mkdir()
    (project / "venv" / "pyvenv.cfg").write_text("")
    (project / "venv" / "lib.py").write_text("")
    assert project_files(project) == ["agentplex.json", "app/__init__.py", "app/main.py"]
    first, again = package(project), package(project)
    assert first.sha256 == again.sha256 and first.data == again.data


def test_links_out_of_the_project_are_not_uploaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "hostname"
    outside.write_text("the host's secret")
    project = tmp_path / "p"
    project.mkdir()
    (project / "main.py").write_text("x = 1\n")
    (project / "secret.txt").symlink_to(outside)
    (project / "alias.py").symlink_to(project / "main.py")  # inside: its contents go
    assert project_files(project) == ["alias.py", "main.py"]
    assert "skipping" in capsys.readouterr().err
    with zipfile.ZipFile(io.BytesIO(package(project).data)) as archive:
        assert archive.read("alias.py") == b"x = 1\n"
        assert "the host's secret" not in str([archive.read(n) for n in archive.namelist()])
