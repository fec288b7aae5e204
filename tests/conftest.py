from __future__ import annotations

import os
import tempfile

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Strict rules for the whole suite (and the CLI / example processes it starts): a rule that
# raises fails its test instead of quietly blocking its dims.
os.environ["SURGEON_STRICT_RULES"] = "1"
# round_to="auto" caches what it measures: in a folder of this run, never the user's home
os.environ.setdefault("SURGEON_CACHE_DIR", tempfile.mkdtemp(prefix="surgeon-cache-"))


@pytest.fixture(autouse=True, scope="session")
def _strict_rules():
    from surgeon.rules import strict

    with strict():
        yield


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


# The digits baseline: seeded digits_cnn trained this many epochs (~99% test accuracy, ~3 s).
DIGITS_EPOCHS = 4


@pytest.fixture(scope="session")
def digits_trained():
    """``(model, data)``: the trained digits baseline (seed 0) and its train / test split.

    Trained once per session and shared: ``copy.deepcopy`` the model before changing it.
    """
    pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn")
    from surgeon.digits import fit, load_digits_split
    from surgeon.models.digits import digits_cnn

    data = load_digits_split()
    torch.manual_seed(0)
    model = fit(digits_cnn(), data, epochs=DIGITS_EPOCHS, seed=0)
    return model, data
