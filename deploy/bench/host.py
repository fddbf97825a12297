"""The machine the bench runs on: which core does what, the run's priority, and running a tool.

Shared by every other module of the bench (peers, workloads, report, bench, profile)."""

import os
import re
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# Cores: the terminator under test gets core 0 to itself; everything that generates or serves the
# load around it shares core 1, so the terminator's CPU time is what the figures normalise by.
PROXY_CORE = "0"
LOAD_CORE = "1"


# Set from --nice: every process of the bench runs at this priority, so that other work on a shared
# machine (compilers) steals less of the pinned cores during a measurement. With the kernel's
# autogroups on, niceness only ranks processes within one session, so the run's autogroup gets it.
NICE = []


def set_priority(nice):
    NICE[:] = ["nice", "-n", str(nice)]
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
    except OSError as e:
        return f"could not set the autogroup's niceness ({e}); other load competes evenly"
    return None


def run(argv, timeout, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def version_of(argv, pattern=None):
    try:
        r = run(argv, 10)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    text = (r.stdout + r.stderr).strip()
    if pattern:
        m = re.search(pattern, text)
        return m.group(1) if m else text.splitlines()[0] if text else "?"
    return text.splitlines()[0] if text else "?"
