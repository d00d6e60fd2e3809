"""Clustering for pruning: many small problems (one per layer) at once, on the data's device."""

from .kmeans import BACKENDS, KMeans, init_all, init_centroids, kmeans
from .ward import flat_clusters, linkage, linkages, row_norms, ward

__all__ = ["kmeans", "KMeans", "init_centroids", "init_all", "BACKENDS", "ward", "linkage", "linkages", "flat_clusters",
           "row_norms"]
