"""An id table sent to another process (Ray workers) still finds its ids there."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

from cir.index.ids import IdTable

_FIND = """
import pickle, sys
table = pickle.loads(sys.stdin.buffer.read())
print([table.find(i) for i in ("b.jpg", "dir/é.png", "a.jpg", "missing")])
"""


def test_unpickled_table_finds_ids_in_a_process_with_other_string_hashes() -> None:
    table = IdTable(["a.jpg", "b.jpg", "dir/é.png"])
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", _FIND],
            input=pickle.dumps(table),
            capture_output=True,
            env=env,
            timeout=60,
            check=True,
        )
        assert done.stdout.decode().strip() == "[1, 2, 0, -1]"
