"""Selector tests run faiss and torch on one thread.

They work on tens to hundreds of rows, where starting (and, on a busy CPU, spinning) OpenMP and torch
threads costs more than the work: a 60-row faiss search took 11 ms with two threads and under 1 ms
with one. Exact searches and these kernels pick the same rows with any thread count.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    from hf_prune.ops.faiss_import import faiss_available, import_faiss

    faiss = import_faiss() if faiss_available() else None
    before = faiss.omp_get_max_threads() if faiss else None, torch.get_num_threads()
    if faiss:
        faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    yield
    if faiss:
        faiss.omp_set_num_threads(before[0])
    torch.set_num_threads(before[1])
