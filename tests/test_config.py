"""fastopt.config: settings are checked where they are set (issue 10, item 8)."""

import numpy as np
import pytest

import fastopt
from fastopt import config

SETTINGS = {s.name: s for s in config._SETTINGS}

# (value, exception) pairs refused by every setting, whatever its range.
BAD_KINDS = [
    ("65536", TypeError), ("", TypeError), (None, TypeError), (1.5, TypeError),
    (64.0, TypeError), (np.float32(64), TypeError), (True, TypeError), (False, TypeError),
    (np.True_, TypeError), ([64], TypeError), (np.array([64]), TypeError),
    (1 + 0j, TypeError), (-1, ValueError), (np.int64(-5), ValueError),
]


def out_of_range(setting):
    values = [setting.low - 1]
    if setting.high is not None:
        values += [setting.high + 1, np.int64(setting.high) + 1]
    return values


@pytest.mark.parametrize("name", SETTINGS)
@pytest.mark.parametrize("value, error", BAD_KINDS,
                         ids=[f"{type(v).__name__}-{v!r}" for v, _ in BAD_KINDS])
def test_bad_value_refused_and_old_value_kept(name, value, error):
    setattr(config, name, 7)
    with pytest.raises(error, match=f"fastopt.config.{name} must be"):
        setattr(config, name, value)
    assert getattr(config, name) == 7


@pytest.mark.parametrize("name", SETTINGS)
def test_out_of_range_refused(name):
    setting = SETTINGS[name]
    for value in out_of_range(setting):
        with pytest.raises(ValueError, match=f"fastopt.config.{name} must be"):
            setattr(config, name, value)
        assert getattr(config, name) == setting.default


@pytest.mark.parametrize("name", SETTINGS)
@pytest.mark.parametrize("kind", [int, np.int8, np.uint16, np.int64, np.uint64])
def test_integers_of_any_kind_accepted_as_int(name, kind):
    setting = SETTINGS[name]
    for value in (setting.low, min(setting.high or 100, 100)):
        setattr(config, name, kind(value))
        assert getattr(config, name) == value
        assert type(getattr(config, name)) is int


@pytest.mark.parametrize("name", SETTINGS)
def test_bounds_inclusive(name):
    setting = SETTINGS[name]
    setattr(config, name, setting.low)
    assert getattr(config, name) == setting.low
    if setting.high is not None:
        setattr(config, name, setting.high)
        assert getattr(config, name) == setting.high


@pytest.mark.parametrize("typo", ["PARALLEL_TRESHOLD", "parallel_threshold", "CUDA_MAX_BLOCK"])
def test_unknown_setting_refused(typo):
    with pytest.raises(AttributeError, match="PARALLEL_THRESHOLD, CUDA_THREADS_PER_BLOCK"):
        setattr(config, typo, 0)
    assert not hasattr(config, typo)


@pytest.mark.parametrize("name", SETTINGS)
def test_setting_cannot_be_deleted(name):
    with pytest.raises(AttributeError, match="reset"):
        delattr(config, name)
    assert getattr(config, name) == SETTINGS[name].default


def test_monkeypatch_restores(monkeypatch):
    monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 0)
    assert config.PARALLEL_THRESHOLD == 0
    monkeypatch.undo()
    assert config.PARALLEL_THRESHOLD == SETTINGS["PARALLEL_THRESHOLD"].default


def test_reset_restores_defaults():
    for name, setting in SETTINGS.items():
        setattr(config, name, setting.low + 1)
    config.reset()
    assert {n: getattr(config, n) for n in SETTINGS} == {n: s.default for n, s in SETTINGS.items()}


@pytest.mark.parametrize("name", SETTINGS)
def test_environment_read_by_reset(name, monkeypatch):
    setting = SETTINGS[name]
    monkeypatch.setenv(setting.env, f" {setting.low + 1} ")
    config.reset()
    assert getattr(config, name) == setting.low + 1


@pytest.mark.parametrize("name", SETTINGS)
def test_bad_environment_refused_and_nothing_changes(name, monkeypatch):
    setting = SETTINGS[name]
    for raw in ["abc", "1.5", "True", *map(str, out_of_range(setting))]:
        for other in SETTINGS:
            setattr(config, other, 1)
        monkeypatch.setenv(setting.env, raw)
        with pytest.raises(ValueError, match=f"environment variable {setting.env} must be"):
            config.reset()
        assert all(getattr(config, other) == 1 for other in SETTINGS), raw
    monkeypatch.delenv(setting.env)


def test_docstring_lists_every_setting():
    doc = " ".join(config.__doc__.split())
    for s in config._SETTINGS:
        assert f"``{s.name}``" in doc
        assert s.env in doc
        assert f"Range: {s.bounds()}; default {s.default}." in doc


def test_refused_setting_leaves_step_whole():
    """The issue's example: a bad threshold used to fail mid-step, one parameter
    stepped and the other not. Now the assignment fails and steps stay whole."""
    a, b = np.ones(4), np.ones(5)
    opt = fastopt.Adam([a, b], lr=0.1)
    with pytest.raises(TypeError, match="PARALLEL_THRESHOLD"):
        config.PARALLEL_THRESHOLD = "65536"
    opt.step([np.ones(4), np.ones(5)])
    np.testing.assert_allclose(a, 0.9)
    np.testing.assert_allclose(b, 0.9)
    config.PARALLEL_THRESHOLD = 0
    opt.step([np.ones(4), np.ones(5)])
    np.testing.assert_allclose(a, b[:4])
