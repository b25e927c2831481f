"""Model monitoring after deployment: baselines, drift tests over windows of served traffic, live quality.

- :mod:`~transferkit.monitor.baseline`: reference statistics written with every export (``monitor_baseline/``);
- :mod:`~transferkit.monitor.drift`: the two-sample tests of one window against the baseline;
- :mod:`~transferkit.monitor.state`: windows, late labels, per-group rates; :mod:`~transferkit.monitor.service`
  the HTTP service (``transferkit monitor serve``) with Prometheus metrics and HTML reports per window.
"""

from transferkit.monitor.baseline import BASELINE_DIR, Baseline, compute_baseline, load_baseline, write_baseline
from transferkit.monitor.config import DriftConfig

__all__ = ["BASELINE_DIR", "Baseline", "DriftConfig", "compute_baseline", "load_baseline", "write_baseline"]
