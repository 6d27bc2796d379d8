"""The paper's reference code, timed in the same invocation as ours, and the machine it ran on.

`../shared/reference-bench/` (beside the repository) holds the official PyTorch code and a
`bench.py` that times it; its `setup.sh` makes (once) a virtual environment with the CPU
build of torch, outside the repository. Torch is not a dependency of tfsemiseg: where that
folder or its environment cannot be had, `Reference.reason` says why and the benchmarks
print our column alone.

Every speed claim of the project is a ratio from one run on one machine: `machine_line()`
names the CPU and its vector extensions, and `ratio()` is reference time / our time
(above 1: we are faster).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_BENCH = Path(os.environ.get("TFSEMISEG_REFERENCE_BENCH", REPO_ROOT.parent / "shared" / "reference-bench"))


def machine_line() -> str:
    """'CPU: <model> (avx2 yes, avx512f no, avx512_bf16 no, amx_bf16 no), N cores'."""
    from tfsemiseg.training.precision import cpu_summary

    return f"CPU: {cpu_summary()}, {os.cpu_count()} cores"


class Reference:
    """Runs reference-bench cases; `python` is None (and `reason` says why) when it cannot."""

    def __init__(self, enabled: bool = True, timeout: float = 1800.0):
        self.python: Optional[str] = None
        self.reason = ""
        self.timeout = timeout
        if not enabled:
            self.reason = "disabled (--no-reference)"
            return
        setup = REFERENCE_BENCH / "setup.sh"
        if not setup.is_file():
            self.reason = f"{REFERENCE_BENCH} not found"
            return
        try:
            proc = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            self.reason = "its setup.sh timed out"
            return
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines or not Path(lines[-1]).is_file():
            tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            self.reason = f"its environment could not be made ({tail[:200]})"
            return
        self.python = lines[-1]

    @property
    def available(self) -> bool:
        return self.python is not None

    def time(self, case: str, repeats: int = 5, warmup: int = 1) -> dict:
        """One reference case: {"ms", "peak_gb", "ok": True} or {"ok": False, "error"}."""
        if not self.available:
            return {"case": case, "ok": False, "error": self.reason}
        cmd = [self.python, str(REFERENCE_BENCH / "bench.py"), case, "--repeats", str(repeats), "--warmup", str(warmup)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            return {"case": case, "ok": False, "error": f"timeout after {self.timeout:.0f} s"}
        for line in reversed(proc.stdout.strip().splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        return {"case": case, "ok": False, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]}

    def header(self) -> str:
        return "reference: ../shared/reference-bench (torch CPU build)" if self.available else \
            f"reference: not run, {self.reason}; our column alone"


def ratio(ours_ms: Optional[float], reference: Optional[dict]) -> str:
    """Reference time / our time as 'N.Nx' ('-' where either is missing)."""
    if not ours_ms or not reference or not reference.get("ok"):
        return "-"
    return f"{reference['ms'] / ours_ms:.1f}x"


def reference_cell(reference: Optional[dict]) -> str:
    """'NNN ms, N.NN GB', 'fails (...)' or '-'."""
    if reference is None:
        return "-"
    if not reference.get("ok"):
        return f"fails ({reference.get('error', '?')[:60]})"
    return f"{reference['ms']:.1f} ms, {reference['peak_gb']:.2f} GB"
