"""What a benchmark's figures were measured on."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path

import mil


def machine() -> dict[str, object]:
    """What the figures were measured on: CPU, cores, load, versions, date."""
    import torch  # deferred: listing the benchmarks needs no torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "load_avg_1min": os.getloadavg()[0],
            "torch": torch.__version__, "cellmil": mil.__version__, "python": platform.python_version(),
            "date": datetime.now(UTC).isoformat(timespec="seconds")}
