"""rpb-lab: rpb."""
