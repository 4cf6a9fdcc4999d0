"""What the JavaScript SDK tests share: node and the SDK's package found (or a failure saying
what is missing, never a silent skip), and one `js/` script run with its JSON result.

Each script writes its result file after every step, so a script that times out still says
where it stood.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

JS_DIR = Path(__file__).parent / "js"

Result = dict[str, Any]


def node(package: str) -> str:
    """The node binary, once ``package`` (an npm name such as ``@hopx-ai/sdk``) is installed
    in js/; a test failure saying how to install what is missing otherwise."""
    binary = shutil.which("node")
    if binary is None:
        pytest.fail(
            f"Node.js is not installed, so {package} cannot be tested: install node (>= 18) "
            "and npm, then run scripts/install --test"
        )
    if not (JS_DIR / "node_modules" / package / "package.json").exists():
        pytest.fail(
            f"{package} is not installed in {JS_DIR}: run scripts/install --test "
            "(it runs `npm ci` there)"
        )
    return binary


def run_script(
    package: str,
    script: str,
    *args: str,
    env: Mapping[str, str],
    out: Path,
    timeout: float,
) -> Result:
    """Run ``js/<script>`` (which drives ``package``) with ``env`` added to a bare PATH/HOME
    environment; the JSON it wrote to ``out``. AssertionError with its output when it fails."""
    full_env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        **env,
    }
    try:
        done = subprocess.run(
            [node(package), str(JS_DIR / script), *args],
            env=full_env,
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        partial = json.loads(out.read_text())["steps"] if out.exists() else {}
        last = list(partial)[-1:] or ["(none)"]
        raise AssertionError(
            f"{script} did not finish in {timeout:g}s; last step {last[0]}: "
            f"{json.dumps(partial.get(last[0]))}\nstderr:\n{exc.stderr!r}"
        ) from None
    assert done.returncode == 0 and out.exists(), (
        f"{script} exited {done.returncode}\nstdout:\n{done.stdout[-4000:]}\n"
        f"stderr:\n{done.stderr[-4000:]}"
    )
    result: Result = json.loads(out.read_text())
    return result
