"""Issue 12, item 5: cbda imported from a source tree without its native modules (or after a
failed build) says so once, with the cause and the fix, instead of silently running the
reference; ``python -m cbda.info`` shows the same.

Each scenario runs in a child process that imports a copy of the package without any .so
(deliberately not the cbda under test, unlike the other child processes of the suite).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import cbda
from cbda import _native

REPO = Path(__file__).resolve().parent.parent

# An editable install of the cbda under test adds a meta-path finder that would resolve
# cbda._cpu from its own tree; a fresh clone has none, so the children drop it.
ISOLATE = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
           "if not getattr(f, '__module__', '').startswith('__editable__')]\n")

SCRIPT = ISOLATE + textwrap.dedent("""
    import json, os, sys, warnings
    import torch
    import cbda
    assert os.path.dirname(os.path.dirname(os.path.abspath(cbda.__file__))) == os.getcwd(), cbda.__file__
    logits = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cbda.select(logits, budget=0.2, strategy="da")
        cbda.select(logits, budget=0.2, strategy="cbda")
        cbda.score(logits)
    mine = [w for w in caught if issubclass(w.category, cbda.NativeModuleWarning)]
    try:
        cbda.select(logits, budget=0.2, strategy="da", backend="cpu")
        named = None
    except cbda.BackendUnavailableError as e:
        named = str(e)
    print(json.dumps({"messages": [str(w.message) for w in mine], "files": [w.filename for w in mine],
                      "named": named}))
""")


def _checkout(tmp_path: Path, build_info: dict | None = None) -> Path:
    """A source tree like a fresh clone: the package without native modules, setup.py, csrc/."""
    root = tmp_path / "checkout"
    shutil.copytree(Path(cbda.__file__).parent, root / "cbda",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "_build_info.json", "__pycache__"))
    shutil.copy(REPO / "setup.py", root / "setup.py")
    shutil.copytree(REPO / "csrc" / "cpu", root / "csrc" / "cpu")
    if build_info is not None:
        (root / "cbda" / "_build_info.json").write_text(json.dumps(build_info))
    return root


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONWARNINGS")}
    env["PYTHONPATH"] = str(root)
    return subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)


pytestmark = pytest.mark.skipif(not (REPO / "setup.py").is_file(), reason="needs the repository's setup.py")


def test_unbuilt_source_tree_warns_once_with_cause_and_fix(tmp_path):
    root = _checkout(tmp_path)
    proc = _run(root, "-c", SCRIPT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["messages"]) == 1, out  # three calls, one warning
    msg = out["messages"][0]
    assert "cbda._cpu is missing" in msg and "'reference'" in msg
    assert f"imported from the source tree {root}" in msg
    assert f"pip install -e {root}" in msg and "build_ext --inplace" in msg and "outside the source tree" in msg
    assert out["files"] == ["<string>"]  # points at the user's call, not into cbda
    assert "source tree" in out["named"]  # a backend named explicitly raises with the same cause

    info = _run(root, "-c", ISOLATE + "import runpy; runpy.run_module('cbda.info', run_name='__main__')")
    assert info.returncode == 0, info.stderr
    assert "cbda._cpu is expected but missing" in info.stdout and f"pip install -e {root}" in info.stdout
    assert "backend='auto' on cpu tensors picks: reference" in info.stdout


def test_failed_build_warns_once_naming_the_failure(tmp_path):
    record = {"modules": {"_cpu": {"built": False, "reason": "CompileError: no C++17 compiler"}}}
    root = _checkout(tmp_path, record)
    out = json.loads(_run(root, "-c", SCRIPT).stdout.strip().splitlines()[-1])
    assert len(out["messages"]) == 1
    assert "its build failed (CompileError: no C++17 compiler)" in out["messages"][0]
    assert "C++17 compiler" in out["messages"][0].split("Fix:")[1]


def test_module_switched_off_at_build_time_does_not_warn(tmp_path):
    root = _checkout(tmp_path, {"modules": {}})  # CBDA_BUILD_CPU=0: no record for _cpu
    out = json.loads(_run(root, "-c", SCRIPT).stdout.strip().splitlines()[-1])
    assert out["messages"] == []
    assert "switched off at build time" in out["named"]


@pytest.mark.skipif(_native.load("_cpu") is None, reason="cbda._cpu not built")
def test_built_package_does_not_warn():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cbda.select(torch.randn(2, 3, 8, 8), budget=0.2, strategy="da")
    assert not [w for w in caught if issubclass(w.category, cbda.NativeModuleWarning)]
    assert _native.missing_cause("_cpu") is None
