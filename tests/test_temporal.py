"""temporal.profiles(): analytic trajectories with known emergence/stabilisation."""

import numpy as np
import xarray as xr

from denoisefeat.temporal import emergence_order, profiles


def _ds(**variables):
    return xr.Dataset({k: (("sample", "step"), v) for k, v in variables.items()},
                      coords={"sample": np.arange(next(iter(variables.values())).shape[0]),
                              "step": np.arange(next(iter(variables.values())).shape[1])})


def test_sigmoid_half_life_and_step_stabilisation():
    steps = np.arange(21.0)
    rng = np.random.default_rng(0)
    centres = rng.integers(6, 14, size=10)
    sig = np.stack([1 / (1 + np.exp(-(steps - c - 0.25) * 3)) for c in centres])
    sig = (sig - sig[:, :1]) / (sig[:, -1:] - sig[:, :1])
    # a falling step function (distance) that jumps to its final value at step k
    ks = rng.integers(3, 18, size=10)
    stepfn = np.stack([np.where(steps >= k, 0.0, 5.0) for k in ks])
    flat = np.full((10, 21), 2.0)
    out = profiles(_ds(sig=sig, stepfn=stepfn, flat=flat), tolerance=0.1, n_boot=200)
    # emergence: first step with p >= 0.5 (the sigmoid crosses 0.5 at c + 0.25)
    np.testing.assert_array_equal(out["emergence"].sel(profile="sig").values, centres + 1)
    np.testing.assert_array_equal(out["stabilisation"].sel(profile="stepfn").values, ks)
    np.testing.assert_array_equal(out["emergence"].sel(profile="stepfn").values, ks)
    # constant trajectories: no NaN, there from the first step
    assert np.isfinite(out["progress"].sel(profile="flat").values).all()
    assert (out["stabilisation"].sel(profile="flat").values == 0).all()
    # bootstrap CI of the median contains the true median
    s = out["stabilisation_summary"].sel(profile="stepfn")
    true = np.median(ks)
    assert s.sel(stat="median_low") <= true <= s.sel(stat="median_high")
    assert emergence_order(out)[0] == "flat"
