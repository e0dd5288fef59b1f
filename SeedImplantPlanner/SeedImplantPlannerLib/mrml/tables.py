"""MRML adapters for tables and plots: the DVH table and chart, the metrics table, reading columns back."""

from __future__ import annotations

import numpy as np

from ..core.errors import InputError
from .nodes import PRESCRIPTION_ATTRIBUTE, ROLE_ATTRIBUTE, _slicer, _vtk


def _set_table_columns(table_node, columns):
    """Replace the columns of a table node: ``columns`` is a list of (name, values) pairs."""
    vtk = _vtk()
    table = table_node.GetTable()
    with _slicer().util.NodeModify(table_node):
        table_node.RemoveAllColumns()
        for name, values in columns:
            values = list(values)
            if values and isinstance(values[0], str):
                arr = vtk.vtkStringArray()
                for v in values:
                    arr.InsertNextValue(v)
            else:
                # 6 significant digits: what the table's .tsv file keeps, so a saved scene reloads equal
                arr = vtk.vtkDoubleArray()
                arr.SetNumberOfTuples(len(values))
                for r, v in enumerate(values):
                    arr.SetValue(r, float(f"{float(v):.6g}"))
            arr.SetName(name)
            table.AddColumn(arr)
        table.Modified()
    return table_node


def update_dvh_nodes(scene, dose_bins_Gy, curves, table_node=None, chart_node=None, colors=None,
                     prescription_Gy=None, prescriptions=None):
    """DVH table (dose column, cumulative volume % per structure) and plot chart; returns both.

    ``curves`` maps structure name -> cumulative volume % at ``dose_bins_Gy``. ``prescriptions``
    ({target name: Gy}, plans with several targets) marks each target's prescription on the chart:
    a dashed vertical series "Rx <target> <Gy> Gy" in the target's colour, from a small table node
    referenced by the chart (role ``dvhPrescriptions``), and the table's attribute
    ``SeedImplantPlanner.TargetPrescriptionsGy`` ("name=Gy;...").
    """
    dose_bins_Gy = np.asarray(dose_bins_Gy, float)
    for name, v in curves.items():
        if len(v) != len(dose_bins_Gy):
            raise InputError(f"DVH of {name!r} has {len(v)} values for {len(dose_bins_Gy)} dose bins")
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", "DVH")
        table_node.SetAttribute(ROLE_ATTRIBUTE, "DVH")
    cols = [("Dose (Gy)", dose_bins_Gy)] + [(f"{name} V (%)", np.asarray(v, float)) for name, v in curves.items()]
    _set_table_columns(table_node, cols)
    for c, _ in cols:
        table_node.SetColumnUnitLabel(c, "Gy" if c == "Dose (Gy)" else "%")
    if prescription_Gy is not None:
        table_node.SetAttribute(PRESCRIPTION_ATTRIBUTE, f"{float(prescription_Gy):g}")
    if chart_node is None:
        chart_node = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "DVH chart")
        chart_node.SetTitle("Dose volume histogram")
        chart_node.SetXAxisTitle("Dose (Gy)")
        chart_node.SetYAxisTitle("Volume (%)")
        chart_node.SetAttribute(ROLE_ATTRIBUTE, "DVHChart")
    existing = {}
    for i in range(chart_node.GetNumberOfPlotSeriesNodes()):
        s = chart_node.GetNthPlotSeriesNode(i)
        if s.GetAttribute(ROLE_ATTRIBUTE) != RX_SERIES_ROLE:
            existing[s.GetYColumnName()] = s
    wanted = [f"{name} V (%)" for name in curves]
    for idx, (name, col) in enumerate(zip(curves, wanted)):
        series = existing.pop(col, None)
        if series is None:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"DVH {name}")
            series.SetPlotType(series.PlotTypeLine)
            series.SetMarkerStyle(series.MarkerStyleNone)
            series.SetXColumnName("Dose (Gy)")
            series.SetYColumnName(col)
            series.SetLineWidth(2)
            chart_node.AddAndObservePlotSeriesNodeID(series.GetID())
        series.SetAndObserveTableNodeID(table_node.GetID())
        if colors and name in colors:
            series.SetColor(*colors[name])
    for stale in existing.values():
        chart_node.RemovePlotSeriesNodeID(stale.GetID())
        scene.RemoveNode(stale)
    _update_rx_marks(scene, table_node, chart_node, prescriptions or {}, colors or {})
    return table_node, chart_node


RX_SERIES_ROLE = "DVHPrescription"
TARGET_PRESCRIPTIONS_ATTRIBUTE = "SeedImplantPlanner.TargetPrescriptionsGy"


def _update_rx_marks(scene, table_node, chart_node, prescriptions, colors):
    """One dashed vertical series per target prescription on the DVH chart (none for a single target)."""
    rx_table = chart_node.GetNodeReference("dvhPrescriptions")
    old = {}
    for i in range(chart_node.GetNumberOfPlotSeriesNodes()):
        s = chart_node.GetNthPlotSeriesNode(i)
        if s.GetAttribute(ROLE_ATTRIBUTE) == RX_SERIES_ROLE:
            old[s.GetAttribute("SeedImplantPlanner.Target")] = s
    if not prescriptions:
        table_node.RemoveAttribute(TARGET_PRESCRIPTIONS_ATTRIBUTE)
    else:
        table_node.SetAttribute(TARGET_PRESCRIPTIONS_ATTRIBUTE,
                                ";".join(f"{n}={float(rx):g}" for n, rx in prescriptions.items()))
        if rx_table is None:
            rx_table = scene.AddNewNodeByClass("vtkMRMLTableNode", "DVH prescriptions")
            rx_table.SetAttribute(ROLE_ATTRIBUTE, "DVHPrescriptions")
            chart_node.SetNodeReferenceID("dvhPrescriptions", rx_table.GetID())
        cols = []
        for name, rx in prescriptions.items():
            cols += [(f"{name} Rx dose (Gy)", [float(rx), float(rx)]), (f"{name} Rx V (%)", [0.0, 100.0])]
        _set_table_columns(rx_table, cols)
        for name, rx in prescriptions.items():
            series = old.pop(name, None)
            if series is None:
                series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"Rx {name}")
                series.SetAttribute(ROLE_ATTRIBUTE, RX_SERIES_ROLE)
                series.SetAttribute("SeedImplantPlanner.Target", name)
                series.SetPlotType(series.PlotTypeLine)
                series.SetMarkerStyle(series.MarkerStyleNone)
                series.SetLineStyle(series.LineStyleDash)
                series.SetLineWidth(1)
                chart_node.AddAndObservePlotSeriesNodeID(series.GetID())
            series.SetName(f"Rx {name} {float(rx):g} Gy")
            series.SetXColumnName(f"{name} Rx dose (Gy)")
            series.SetYColumnName(f"{name} Rx V (%)")
            series.SetAndObserveTableNodeID(rx_table.GetID())
            if name in colors:
                series.SetColor(*colors[name])
    for stale in old.values():
        chart_node.RemovePlotSeriesNodeID(stale.GetID())
        scene.RemoveNode(stale)
    if not prescriptions and rx_table is not None:
        chart_node.SetNodeReferenceID("dvhPrescriptions", None)
        scene.RemoveNode(rx_table)


METRIC_COLUMNS = ("Structure", "Metric", "Value", "Unit", "Goal", "Pass")


def update_metrics_table(scene, rows, table_node=None):
    """Metrics table node: one row per metric with its goal and pass/fail; returns the node.

    ``rows`` are dicts with keys structure, metric, value, unit, goal (text, may be empty) and
    passed (True, False or None when no goal).
    """
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", "Plan metrics")
        table_node.SetAttribute(ROLE_ATTRIBUTE, "Metrics")
    cols = {c: [] for c in METRIC_COLUMNS}
    for r in rows:
        cols["Structure"].append(str(r.get("structure", "")))
        cols["Metric"].append(str(r["metric"]))
        v = r.get("value")
        cols["Value"].append("" if v is None or not np.isfinite(v) else f"{float(v):.4g}")
        cols["Unit"].append(str(r.get("unit", "")))
        cols["Goal"].append(str(r.get("goal", "") or ""))
        p = r.get("passed")
        cols["Pass"].append("" if p is None else ("pass" if p else "FAIL"))
    # string columns even when empty (a table node needs typed columns)
    vtk = _vtk()
    table = table_node.GetTable()
    with _slicer().util.NodeModify(table_node):
        table_node.RemoveAllColumns()
        for c in METRIC_COLUMNS:
            arr = vtk.vtkStringArray()
            arr.SetName(c)
            for v in cols[c]:
                arr.InsertNextValue(v)
            table.AddColumn(arr)
        table.Modified()
    n_fail = sum(1 for r in rows if r.get("passed") is False)
    table_node.SetAttribute("SeedImplantPlanner.FailedGoals", str(n_fail))
    return table_node


def table_columns(table_node) -> dict:
    """``{column name: numpy array or list of str}`` of a table node."""
    table = table_node.GetTable()
    out = {}
    for c in range(table.GetNumberOfColumns()):
        col = table.GetColumn(c)
        if col.IsA("vtkStringArray"):
            out[col.GetName()] = [col.GetValue(r) for r in range(col.GetNumberOfValues())]
        else:
            out[col.GetName()] = np.array([col.GetValue(r) for r in range(col.GetNumberOfTuples())])
    return out
