from __future__ import annotations

import os

import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Hypothesis profiles for tests/test_properties.py: "ci" (derandomized, for CI) when CI is set,
# "dev" otherwise; both run 200 examples per property so local runs match CI.
try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is a dev extra
    pass
else:
    settings.register_profile(
        "ci",
        max_examples=200,
        derandomize=True,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile(
        "dev",
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
