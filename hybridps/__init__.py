"""hybridps: plan, simulate and run data-parallel training on heterogeneous GPU
clusters with a parameter server."""

__version__ = "0.1.0"
