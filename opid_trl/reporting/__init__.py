"""What a run reports: per-batch metrics, the metrics log and plots, token heatmaps of the skill
advantage, and the skill-signal records. Reporting reads every earlier stage; none reads it."""

from opid_trl.reporting.metrics_log import PLOTS, MetricsJSONLCallback, plot_metrics, read_metrics

__all__ = ["PLOTS", "MetricsJSONLCallback", "plot_metrics", "read_metrics"]
