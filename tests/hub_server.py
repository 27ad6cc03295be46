"""The loopback Hub server of the tests. It lives in the course package (``cnhelpers/course/hub_server.py``), since
notebook 09 starts it too, as its local stand-in for huggingface.co; this name keeps ``from hub_server import ...``
and ``python tests/hub_server.py --root DIR ...`` working."""

import sys

from cnhelpers.course.hub_server import *  # noqa: F401,F403
from cnhelpers.course.hub_server import main

if __name__ == "__main__":
    sys.exit(main())
