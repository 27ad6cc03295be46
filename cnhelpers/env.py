"""The environment report of notebook 00 (versions, device, memory or threads), and the memory a run can still
allocate (:func:`available_memory`, named in the errors of a run that would not fit)."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version

#: The packages whose versions matter to the course, in the order the report shows them.
REPORTED_PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "accelerate", "datasets",
                     "huggingface_hub", "bitsandbytes", "cnhelpers")


def package_versions(names=REPORTED_PACKAGES) -> dict[str, str]:
    """Installed version of each package, or ``"not installed"``."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def device_summary() -> dict[str, str]:
    """What the course will train on: the GPU and its memory, or the CPU and its threads."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"device": f"cuda ({props.name})", "memory": f"{props.total_memory / 2**30:.1f} GiB",
                "gpus": str(torch.cuda.device_count())}
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return {"device": "mps (Apple GPU)", "memory": "shared with the CPU"}
    return {"device": "cpu", "threads": str(torch.get_num_threads()), "cores": str(os.cpu_count())}


def environment_report() -> dict[str, str]:
    """Python, platform, package versions and device, as one flat dict."""
    return {"python": platform.python_version(), "platform": platform.platform(),
            **package_versions(), **device_summary()}


def print_report(report: dict[str, str]) -> None:
    """Print a report dict as aligned ``key: value`` lines."""
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")


def _cgroup_memory_left() -> int | None:
    """Bytes left under this process's cgroup memory limit (containers), or None when there is no limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = open(limit_file).read().strip()
            usage = int(open(usage_file).read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" (v2) or a huge number (v1) means no limit
            return max(0, int(limit) - usage)
    return None


def available_memory(device="cpu") -> tuple[int, str]:
    """Bytes that a run can still allocate on ``device`` now, and what that limit is, in words (for errors).

    A CUDA device: its free memory (``torch.cuda.mem_get_info``). Otherwise RAM: what the OS reports available
    (psutil, or ``os.sysconf``), or what is left under the container's memory limit when that is less.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        name = torch.cuda.get_device_properties(index).name
        return free, f"the free memory of GPU {index} ({name}, {total / 2**30:.1f} GiB in all)"
    try:
        import psutil

        memory = psutil.virtual_memory()
        available, total = memory.available, memory.total
    except ImportError:
        page = os.sysconf("SC_PAGE_SIZE")
        available, total = os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
    left = _cgroup_memory_left()
    if left is not None and left < available:
        return left, "what is left under the container's memory limit"
    return available, f"the available RAM ({total / 2**30:.1f} GiB in all)"


def format_bytes(size: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: bytes in the largest binary unit that keeps the number at least 1."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
