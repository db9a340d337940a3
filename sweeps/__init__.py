"""rpb-lab: sweeps."""
