"""Shared numeric kernels: column conversion, kNN, k-means, geometric median, sampling, devices."""
