"""What the course downloads for SD 1.5, before and after fetching only the parts it loads.

    python benchmarks/hub_fetch.py

Serves the test Hub (``tests/hub_repos.py``: SD 1.5's real file tree with the course's tiny weights and small
stand-ins) on 127.0.0.1 and counts the files and bytes the real huggingface_hub client GETs, each case in a
fresh process with an empty cache: a snapshot of the whole repository (what ``resolve_pretrained`` did before),
``cnhelpers.hub.resolve_base`` (the parts training loads), and the same with ``variant="fp16"``. On the real
Hub the files are far larger (single-file checkpoints of several GB): the file counts carry over, the bytes do not.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hub_repos import serving  # noqa: E402

REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
CASES = {
    "snapshot of the whole repository (before)": f"from huggingface_hub import snapshot_download\nsnapshot_download({REPO!r})",
    "resolve_base: the parts the course loads": f"from cnhelpers.hub import resolve_base\nresolve_base({REPO!r})",
    "resolve_base, --variant fp16": f"from cnhelpers.hub import resolve_base\nresolve_base({REPO!r}, variant='fp16')",
}


def main() -> int:
    with serving(ROOT / "build" / "hub-fetch") as hub:
        for label, code in CASES.items():
            with tempfile.TemporaryDirectory() as home:
                hub.clear_log()
                hub.run_client(code, home)
                gets = [e for e in hub.log if e["method"] == "GET" and e.get("status") in (200, 206)
                        and e.get("kind") in ("resolve", "lfs")]
                print(f"{label:<45} {len(gets):>3} files {sum(e['bytes'] for e in gets):>12,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
