"""rpb-lab: dashboards."""
