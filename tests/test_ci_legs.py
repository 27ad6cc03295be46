""".ci/leg, which times each CI leg: it records the leg's wall and CPU seconds and passes its exit status on."""

import subprocess
import sys
from pathlib import Path

LEG = Path(__file__).resolve().parents[1] / ".ci" / "leg"


def test_a_leg_records_its_cpu_seconds_and_passes_a_failing_status_on(tmp_path):
    times = tmp_path / "times.txt"
    burn = "import time, sys\nend = time.process_time() + 1.5\nwhile time.process_time() < end: pass\nsys.exit(3)"
    # the CPU is burnt in a grandchild, as a pytest worker or a Jupyter kernel would burn it
    result = subprocess.run(["bash", str(LEG), "demo", "bash", "-c", f'"{sys.executable}" -c "$0"', burn],
                            env={"CI_TIMES": str(times), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 3
    name, wall, status, cpu = times.read_text().split()
    assert (name, status) == ("demo", "3")
    assert int(cpu) >= 1 and int(wall) >= 1
