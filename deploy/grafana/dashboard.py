"""Generates the flatscope Grafana dashboard: ``python deploy/grafana/dashboard.py``.

Writes ``deploy/grafana/dashboards/flatscope.json`` (or the path given as the first
argument). The output is deterministic: regenerating without changes to this file gives the
same bytes, and a test fails when the committed JSON differs from a fresh generation.

Every query filters on the ``job`` and ``instance`` variables; the gRPC panels show the
application API (``flatscope.v1.ModelService``) only, so that health checks and reflection do
not drown the traffic that matters.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DataTransformerConfig,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUTPUT = Path(__file__).parent / "dashboards" / "flatscope.json"
UID = "flatscope"
SERVICE = "flatscope.v1.ModelService"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# The alert thresholds of deploy/prometheus/rules.yml, drawn as red lines.
ERROR_RATIO_ALERT = 0.05
LATENCY_SLO_SECONDS = 0.25

TARGET = 'job=~"$job", instance=~"$instance"'
RPC = f'{TARGET}, grpc_service="{SERVICE}", grpc_method=~"$grpc_method"'
# The payload histograms carry the method only (no grpc_service label).
RPC_BYTES = f'{TARGET}, grpc_method=~"$grpc_method"'
RATE = "[$__rate_interval]"


def quantile(q: float, metric: str, selector: str, by: str) -> str:
    """``histogram_quantile`` of a histogram's bucket rates, summed over instances."""
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{selector}}}{RATE})))"


def query(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    """A Prometheus range query on the ``datasource`` variable."""
    built = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE).range()
    return built.legend_format(legend) if legend else built


def graph(
    title: str, description: str, unit: str, *queries: prometheus.Dataquery
) -> timeseries.Panel:
    """A time series panel, a third of the dashboard wide."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .height(8)
        .span(8)
        .fill_opacity(10)
        .legend(
            common_builder.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )
    for q in queries:
        panel = panel.with_target(q)
    return panel


def red_above(value: float) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=None, color="green"), Threshold(value=value, color="red")])
    )


def with_threshold_line(panel: timeseries.Panel, value: float) -> timeseries.Panel:
    """``panel`` with a red line at ``value``."""
    return panel.thresholds(red_above(value)).thresholds_style(
        common_builder.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.LINE)
    )


def variables() -> list:
    datasource = (
        dash.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .description("The Prometheus that scrapes flatscope.")
    )

    def label_values(name: str, label: str, source: str, description: str):
        return (
            dash.QueryVariable(name)
            .label(label)
            .description(description)
            .datasource(DATASOURCE)
            .query(source)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
        )

    job = label_values(
        "job", "Job", "label_values(flatscope_model_info, job)", "Scrape job of the servers."
    )
    instance = (
        label_values(
            "instance",
            "Instance",
            'label_values(up{job=~"$job"}, instance)',
            "Scrape targets; from up, so that a target that is down is listed too.",
        )
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    # No custom all value: "All" expands to the methods of ModelService, which keeps the
    # payload panels (labelled by method only) off health checks and reflection.
    method = (
        label_values(
            "grpc_method",
            "Method",
            f'label_values(grpc_server_started_total{{{TARGET}, grpc_service="{SERVICE}"}}, '
            "grpc_method)",
            f"RPC methods of {SERVICE}.",
        )
        .multi(True)
        .include_all(True)
    )
    return [datasource, job, instance, method]


def traffic_panels() -> list:
    handled = "grpc_server_handled_total"
    failed = f'sum by (grpc_method) (rate({handled}{{{RPC}, grpc_code!="OK"}}{RATE}))'
    total = f"sum by (grpc_method) (rate({handled}{{{RPC}}}{RATE}))"
    all_failed = f'sum(rate({handled}{{{RPC}, grpc_code!="OK"}}{RATE}))'
    all_total = f"sum(rate({handled}{{{RPC}}}{RATE}))"
    return [
        graph(
            "Requests per second by status code",
            f"Completed {SERVICE} calls per second, summed over the selected instances.",
            "reqps",
            query(f"sum by (grpc_code) (rate({handled}{{{RPC}}}{RATE}))", "{{grpc_code}}"),
        ),
        graph(
            "Requests per second by method",
            f"Completed {SERVICE} calls per second, summed over the selected instances.",
            "reqps",
            query(total, "{{grpc_method}}"),
        ),
        with_threshold_line(
            graph(
                "Error ratio",
                "Share of calls that ended with a status other than OK (client errors such "
                "as INVALID_ARGUMENT included). The red line is the alert threshold. Methods "
                "without errors show 0 rather than no data.",
                "percentunit",
                # "or ... * 0": without a single error the numerator has no series at all.
                query(f"({failed} or {total} * 0) / {total}", "{{grpc_method}}"),
                query(f"({all_failed} or {all_total} * 0) / {all_total}", "all methods", "B"),
            ),
            ERROR_RATIO_ALERT,
        ),
    ]


def latency_panels() -> list:
    rpc = "grpc_server_handling_seconds"
    return [
        with_threshold_line(
            graph(
                "RPC latency p50 / p90 / p99",
                "Time from the start of a call to its status, per method, from histogram "
                "buckets summed over instances. The red line is the p99 SLO.",
                "s",
                *(
                    query(quantile(q, rpc, RPC, "grpc_method"), f"p{p} {{{{grpc_method}}}}", ref)
                    for q, p, ref in ((0.5, 50, "A"), (0.9, 90, "B"), (0.99, 99, "C"))
                ),
            ),
            LATENCY_SLO_SECONDS,
        ),
        graph(
            "Queue time p50 / p99",
            "Time a request waits before its forward pass starts.",
            "s",
            query(quantile(0.5, "flatscope_queue_seconds", TARGET, "model"), "p50 {{model}}"),
            query(quantile(0.99, "flatscope_queue_seconds", TARGET, "model"), "p99 {{model}}", "B"),
        ),
        graph(
            "Inference time p50 / p99",
            "Time of one forward pass over a batch.",
            "s",
            query(quantile(0.5, "flatscope_inference_seconds", TARGET, "model"), "p50 {{model}}"),
            query(
                quantile(0.99, "flatscope_inference_seconds", TARGET, "model"), "p99 {{model}}", "B"
            ),
        ),
    ]


def load_panels() -> list:
    batch = "flatscope_batch_size"
    return [
        graph(
            "Batch size: mean and p99",
            "Examples per forward pass.",
            "short",
            query(
                f"sum by (model) (rate({batch}_sum{{{TARGET}}}{RATE}))"
                f" / sum by (model) (rate({batch}_count{{{TARGET}}}{RATE}))",
                "mean {{model}}",
            ),
            query(quantile(0.99, batch, TARGET, "model"), "p99 {{model}}", "B"),
        ),
        graph(
            "Requests in flight",
            "Model requests accepted and not yet answered, per instance.",
            "short",
            query(
                f"sum by (instance, model) (flatscope_requests_in_flight{{{TARGET}}})",
                "{{instance}} {{model}}",
            ),
        ),
        graph(
            "Message size p99",
            "Size of request and response messages on the wire, per method.",
            "bytes",
            query(
                quantile(0.99, "flatscope_request_bytes", RPC_BYTES, "grpc_method"),
                "request {{grpc_method}}",
            ),
            query(
                quantile(0.99, "flatscope_response_bytes", RPC_BYTES, "grpc_method"),
                "response {{grpc_method}}",
                "B",
            ),
        ),
    ]


def process_panels() -> list:
    up = (
        stat.Panel()
        .title("Targets up")
        .description("Whether Prometheus could scrape each instance's /metrics.")
        .datasource(DATASOURCE)
        .height(8)
        .span(6)
        .with_target(query(f"up{{{TARGET}}}", "{{instance}}").instant())
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]))
        .mappings(
            [
                ValueMap(
                    options={
                        "0": ValueMappingResult(text="DOWN", color="red", index=0),
                        "1": ValueMappingResult(text="UP", color="green", index=1),
                    }
                )
            ]
        )
        .thresholds(
            dash.ThresholdsConfig()
            .mode(ThresholdsMode.ABSOLUTE)
            .steps([Threshold(value=None, color="red"), Threshold(value=1, color="green")])
        )
    )
    model = (
        table.Panel()
        .title("Served model")
        .description("flatscope_model_info: the model, version, backend and device per instance.")
        .datasource(DATASOURCE)
        .height(8)
        .span(18)
        .show_header(True)
        .with_target(
            query(f"flatscope_model_info{{{TARGET}}}").instant().format(PromQueryFormat.TABLE)
        )
        .with_transformation(
            DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True, "Value": True, "__name__": True},
                    "indexByName": {
                        "instance": 0,
                        "job": 1,
                        "model": 2,
                        "version": 3,
                        "backend": 4,
                        "device": 5,
                    },
                },
            )
        )
    )
    return [
        graph(
            "CPU",
            "CPU time used per second of wall time, in cores.",
            "short",
            query(f"rate(process_cpu_seconds_total{{{TARGET}}}{RATE})", "{{instance}}"),
        ),
        graph(
            "Resident memory",
            "Resident set size of each server process.",
            "bytes",
            query(f"process_resident_memory_bytes{{{TARGET}}}", "{{instance}}"),
        ),
        graph(
            "GPU memory",
            "GPU memory in use by the model's framework; only servers on a GPU export it.",
            "bytes",
            query(f"flatscope_gpu_memory_used_bytes{{{TARGET}}}", "{{instance}}"),
        ).no_value("no GPU"),
        up,
        model,
    ]


def build() -> dash.Dashboard:
    """The dashboard, ready to ``.build()`` and encode."""
    board = (
        dash.Dashboard("flatscope")
        .uid(UID)
        .description("A Keras CNN served over gRPC: traffic, latency, batching, resources.")
        .tags(["flatscope", "grpc", "inference"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .variables(variables())
    )
    rows = (
        ("Traffic", traffic_panels()),
        ("Latency", latency_panels()),
        ("Batches and load", load_panels()),
        ("Process and model", process_panels()),
    )
    panel_id = 0
    for title, panels in rows:
        panel_id += 1
        board = board.with_row(dash.Row(title).id(panel_id))
        for panel in panels:
            panel_id += 1
            board = board.with_panel(panel.id(panel_id))
    return board


def render() -> str:
    """The dashboard as JSON text: sorted keys, two-space indent, a final newline."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else OUTPUT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
