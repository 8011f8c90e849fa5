"""One local Ray cluster for every Ray test of the session.

The tests run wherever Ray is importable. Without it they are skipped with the reason shown by
``-ra``; with ``CIR_REQUIRE_RAY=1`` (CI, where ``cir[test]`` installs Ray) a missing Ray fails them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A local two-CPU Ray cluster, started once; yields its address for other processes."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        message = f"Ray is not installed ({exc}); pip install 'cir[ray]'"
        if os.environ.get("CIR_REQUIRE_RAY") == "1":
            pytest.fail(f"CIR_REQUIRE_RAY=1 but {message}", pytrace=False)
        pytest.skip(message)
    logging.getLogger("ray").setLevel(logging.WARNING)
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()
