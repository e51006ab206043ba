import numpy as np
import pytest

import fastopt


@pytest.fixture(autouse=True)
def _fresh_config():
    """Each test starts from the default settings."""
    fastopt.config.reset()
    yield
    fastopt.config.reset()


def assert_close(actual, expected, rtol, name=""):
    """Equal to within ``rtol`` of the array's scale: sums that cancel (m = g -
    (g - m)·c, say) lose bits relative to the operands, not to the result."""
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=name)
