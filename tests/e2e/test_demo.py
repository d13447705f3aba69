"""`relay demo`: a newcomer's first run, as a real process."""

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess

import pytest

from tests.helpers import eventually, free_port

pytestmark = pytest.mark.e2e


def test_demo_forwards_samples_and_leaves_failures_to_replay(tmp_path):
    database = tmp_path / "demo.db"
    database.write_bytes(b"an earlier demo's database")  # each run starts afresh
    process = subprocess.Popen(
        [shutil.which("relay"), "demo", "--port", str(free_port()), "--database", "demo.db"],
        env={"PATH": os.environ["PATH"]}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=tmp_path,
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
        assert f"RELAY_DATABASE_URL=sqlite:///{database} relay deliveries list" in output  # absolute

        def states():
            with sqlite3.connect(database) as conn:
                return sorted(s for (s,) in conn.execute("SELECT state FROM deliveries"))

        eventually(lambda: states() == ["delivered"] * 3 + ["failed"] * 2, timeout=30,
                   message=f"demo deliveries did not settle: {states()}")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)


def test_demo_on_a_port_in_use_says_which_flag_to_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([shutil.which("relay"), "demo", "--port", str(port)], capture_output=True,
                                text=True, timeout=30, env={"PATH": os.environ["PATH"]})
    assert result.returncode == 1
    assert f"port {port} is in use" in result.stderr and "--port" in result.stderr
