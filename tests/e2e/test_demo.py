"""`relay demo`: a newcomer's first run, as a real process."""

import os
import re
import shutil
import signal
import sqlite3
import subprocess

import pytest

from tests.helpers import eventually, free_port

pytestmark = pytest.mark.e2e


def test_demo_forwards_samples_and_leaves_failures_to_replay(tmp_path):
    database = tmp_path / "demo.db"
    process = subprocess.Popen(
        [shutil.which("relay"), "demo", "--port", str(free_port()), "--database", str(database)],
        env={"PATH": os.environ["PATH"]}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    try:
        for line in process.stdout:
            lines.append(line)
            if "Ctrl-C stops" in line:
                break
        output = "".join(lines)
        assert re.search(r"Status page:\s+http://127\.0\.0\.1:\d+/status", output), output
        assert re.search(r"Admin token:\s+\S{20,}", output)
        assert "401 invalid_signature" in output and "200 duplicate" in output and "200 ignored" in output

        def states():
            with sqlite3.connect(database) as conn:
                return sorted(s for (s,) in conn.execute("SELECT state FROM deliveries"))

        eventually(lambda: states() == ["delivered"] * 3 + ["failed"] * 2, timeout=30,
                   message=f"demo deliveries did not settle: {states()}")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
