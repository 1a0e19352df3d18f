"""Write a Cluster as cluster.toml (hybridps.cluster/1); `load_cluster(path)` of the
output gives back an equal Cluster."""

from __future__ import annotations

from hybridps.spec import Cluster
from traces.spec_toml import spec_to_toml


def cluster_to_toml(cluster: Cluster, comment: str = "") -> str:
    """The cluster as TOML text; `comment` lines go on top as '# ...'."""
    return spec_to_toml(cluster, comment)
