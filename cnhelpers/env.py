"""The environment report of notebook 00: versions, device, memory or threads."""

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
