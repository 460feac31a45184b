"""The small-step thread rule: one thread for small steps, the caller's threads otherwise, always restored."""

import pytest
import torch
from threadpoolctl import threadpool_info

from hf_prune.ops.threads import SMALL_STEP_WORK, loop_threads, small_step_threads, thread_policy


def blas_threads():
    return max(pool["num_threads"] for pool in threadpool_info())


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_small_steps_get_one_thread_and_large_ones_are_left_alone():
    assert loop_threads(2000 * 64) == 1
    assert loop_threads(SMALL_STEP_WORK - 1) == 1
    assert loop_threads(SMALL_STEP_WORK) is None
    assert loop_threads(1_000_000 * 384) is None
    assert loop_threads(10, device="meta") is None  # not a CPU loop: host threads are not its cost
    with thread_policy(False):
        assert loop_threads(10) is None
    assert loop_threads(10) == 1


def test_the_setting_is_restored_after_the_loop_and_on_error(two_threads):
    with small_step_threads(1000) as threads:
        assert threads == 1 and torch.get_num_threads() == 1
        assert blas_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="boom"):
        with small_step_threads(1000):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2
    with small_step_threads(SMALL_STEP_WORK * 4) as threads:
        assert threads == 2 and torch.get_num_threads() == 2
    with thread_policy(False), small_step_threads(1000) as threads:
        assert threads == 2 and torch.get_num_threads() == 2


def test_large_products_keep_their_threads_while_small_vector_work_gets_one(two_threads):
    # A greedy step over 100,000 × 384 rows: the product is large, the O(N) bookkeeping is not.
    with small_step_threads(100_000 * 384, vector_work=100_000) as threads:
        assert threads == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with small_step_threads(SMALL_STEP_WORK * 8, vector_work=SMALL_STEP_WORK * 2) as threads:
        assert threads == 2


def test_bad_input():
    with pytest.raises(ValueError, match="step_work"):
        loop_threads(-1)
    with pytest.raises(ValueError, match="step_work"):
        loop_threads(1.5)
    with pytest.raises((TypeError, ValueError), match="enabled"):
        with thread_policy("yes"):
            pass


def test_held_threads_sets_every_pool_and_restores_them(two_threads):
    import faiss

    from hf_prune.ops.threads import held_threads

    faiss_before = faiss.omp_get_max_threads()
    with held_threads(1):
        assert torch.get_num_threads() == 1 and blas_threads() == 1
        assert faiss.omp_get_max_threads() == 1
    assert torch.get_num_threads() == 2 and faiss.omp_get_max_threads() == faiss_before
    with pytest.raises(RuntimeError, match="boom"):
        with held_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_parallel_steps_run_in_order_on_one_thread_each_and_restore_the_settings(two_threads):
    import threading
    import time

    from hf_prune.ops.threads import parallel_steps, step_pool

    seen = []
    blas_before = blas_threads()

    def step(i):
        seen.append((threading.get_ident(), torch.get_num_threads(), blas_threads()))
        time.sleep(0.002 * (i % 3))  # uneven steps still come back in order
        return i * i

    assert list(parallel_steps(step, range(40))) == [i * i for i in range(40)]
    assert len({ident for ident, *_ in seen}) == 2  # torch's two threads: two workers
    assert all(torch_threads == 1 and blas == 1 for _, torch_threads, blas in seen)
    assert torch.get_num_threads() == 2 and blas_threads() == blas_before  # restored
    # One worker, or the policy off: the steps run here with the caller's settings.
    seen.clear()
    with thread_policy(False):
        assert list(parallel_steps(step, range(5))) == [i * i for i in range(5)]
    assert {ident for ident, *_ in seen} == {threading.get_ident()} and all(t == 2 for _, t, _ in seen)
    seen.clear()
    assert list(parallel_steps(step, range(5), threads=1)) == [i * i for i in range(5)]
    assert {ident for ident, *_ in seen} == {threading.get_ident()}

    # A failing step ends the loop with its error, and the settings come back.
    def failing(i):
        if i == 7:
            raise ValueError("step 7")
        return i

    with pytest.raises(ValueError, match="step 7"):
        list(parallel_steps(failing, range(20)))
    assert torch.get_num_threads() == 2 and blas_threads() == blas_before
    # A pool kept for several loops.
    with step_pool(2) as run:
        assert [list(run(lambda i: i + 1, range(3))) for _ in range(3)] == [[1, 2, 3]] * 3


def test_step_threads_by_device_and_loop_size():
    from hf_prune.ops.threads import SMALL_LOOP_WORK, step_threads

    assert step_threads("cpu") is None and step_threads(torch.device("cpu")) is None
    assert step_threads("cpu", work=SMALL_LOOP_WORK) is None
    assert step_threads("cpu", work=SMALL_LOOP_WORK - 1) == 1  # too small to start workers
    assert step_threads("meta") == 1  # another device: the steps run in the caller
