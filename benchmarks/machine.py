"""What a benchmark ran on, for its printed figures (the scripts import it from their own folder)."""

from __future__ import annotations

import platform
import re
import subprocess


def cpu_name() -> str:
    """The CPU's model name as `lscpu` gives it (`AMD EPYC`, `Intel(R) Xeon(R) ...`)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    found = re.search(r"Model name:\s*(.+)", text)
    return found[1].strip() if found else platform.processor() or "unknown CPU"
