"""rpb-lab: experiments."""
