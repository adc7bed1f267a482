"""`make demo` (tools/demo.py) end to end, run from a checkout under /tmp.

The README promises the demo works on a fresh machine. A checkout under /tmp once broke it:
the local node rewrote every environment value under a mount path, the sandbox mounts an
emptyDir at /tmp, so the virtualenv's PATH entry was pointed into the pod's volume and the
generator died with `No module named 'smartspec'` (specs/TEST-001-control-plane.md, "Local
node"). The checkout here is a symlink under /tmp, so the demo's interpreter, and with it
the PATH the local node hands the sandbox programs, lies under /tmp. SMARTSPEC_NODE=fake: this
is the fallback demo's test (on a real node the sandboxes run in images, with no host PATH).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_succeeds_from_a_checkout_under_tmp() -> None:
    checkout = Path(tempfile.mkdtemp(prefix="smartspec-checkout-", dir="/tmp")) / "smartspec"
    checkout.symlink_to(REPO)
    python = checkout / ".venv" / "bin" / "python"
    completed = subprocess.run(
        [str(python), str(checkout / "tools" / "demo.py"), "--timeout", "240"],
        cwd=checkout,
        env={**os.environ, "SMARTSPEC_NODE": "fake"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = completed.stdout + completed.stderr
    checkout.unlink()
    checkout.parent.rmdir()
    assert completed.returncode == 0, output[-6000:]
    assert "phase:        Succeeded" in output
    assert "Succeeded:    True (TestsPassed)" in output
