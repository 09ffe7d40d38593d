"""aitnode's trial suite.

Hypothesis profiles: HYPOTHESIS_PROFILE=ci (the default under tox) runs
more examples than "dev"; both are deterministic per test.
"""

import os

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is a test extra
    pass
else:
    settings.register_profile("dev", max_examples=30, deadline=None)
    settings.register_profile(
        "ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
