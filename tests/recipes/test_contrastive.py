import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from recipes.trainer.contrastive import MAX_LOGIT_SCALE, clip_loss, gather_with_grad, pair_statistics

DIM_IMAGE, DIM_TEXT, DIM = 12, 10, 6


class TwoTower(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.image = torch.nn.Linear(DIM_IMAGE, DIM)
        self.text = torch.nn.Linear(DIM_TEXT, DIM)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, images, texts):
        return self.image(images), self.text(texts)


def make_batch(n):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, DIM_IMAGE, generator=generator), torch.randn(n, DIM_TEXT, generator=generator)


def reference_loss(images, texts, scale):
    # CLIP's symmetric loss written out on the whole batch, the quantity every layout must reproduce.
    images, texts = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
    logits = scale.clamp(max=MAX_LOGIT_SCALE).exp() * images @ texts.T
    labels = torch.arange(len(images))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def single_process(n):
    torch.manual_seed(0)
    model = TwoTower()
    images, texts = make_batch(n)
    out = clip_loss(*model(images, texts), model.logit_scale)
    out.loss.backward()
    return float(out.loss.detach()), {name: p.grad.clone() for name, p in model.named_parameters()}


def _rank_results(rank, world, sizes):
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(TwoTower())
    images, texts = make_batch(sum(sizes))
    start = sum(sizes[:rank])
    local = slice(start, start + sizes[rank])
    out = clip_loss(*model(images[local], texts[local]), model.module.logit_scale)
    out.loss.backward()  # DDP averages the gradients over the processes
    losses = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(losses, out.loss.detach().reshape(1))
    return (rank, float(torch.cat(losses).mean()), {n: p.grad.numpy().copy() for n, p in model.module.named_parameters()},
            out.labels.tolist(), out.global_batch_size)


def _worker(rank, world, port, sizes, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # The DDP model lives in `_rank_results` only: its reducer is freed while the process group is
        # still up (a reducer outliving `destroy_process_group` can abort the process at exit).
        queue.put(_rank_results(rank, world, sizes))
        # Both ranks done before either tears gloo down: one rank leaving early aborted the other at exit.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def two_processes(sizes):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    procs = [context.Process(target=_worker, args=(rank, 2, port, sizes, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


@pytest.mark.parametrize("sizes", [(4, 4), (5, 3)], ids=["equal_shards", "uneven_last_batch"])
def test_two_processes_match_one_process_on_the_global_batch(sizes):
    loss, grads = single_process(sum(sizes))
    results = two_processes(list(sizes))
    for rank, global_loss, process_grads, labels, total in results:
        assert total == sum(sizes)
        assert labels == list(range(sum(sizes[:rank]), sum(sizes[: rank + 1])))
        assert global_loss == pytest.approx(loss, rel=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(torch.from_numpy(process_grads[name]), grad, atol=1e-6, rtol=1e-5, msg=name)


def test_single_process_loss_is_clips_symmetric_loss_and_the_scale_is_clamped():
    images, texts = make_batch(7)
    images, texts = images[:, :DIM_TEXT], texts
    for scale in (math.log(1 / 0.07), 6.0):  # 6 > ln(100): clamped, and then no gradient reaches it
        s = torch.tensor(scale, requires_grad=True)
        out = clip_loss(images, texts, s)
        assert float(out.loss.detach()) == pytest.approx(float(reference_loss(images, texts, torch.tensor(scale))), rel=1e-6)
        out.loss.backward()
        assert (float(s.grad) == 0.0) == (scale > MAX_LOGIT_SCALE)
    assert gather_with_grad(images)[1] == 0


def test_pair_statistics_by_hand():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 1.0]])
    out = clip_loss(images, texts, torch.tensor(0.0))  # scale 1: logits are the cosine similarities
    stats = pair_statistics(out)
    # Image 0 prefers caption 0 (rank 0); image 1's caption 1 has cosine 0.0995, below caption 2's 0.707 → rank 1;
    # image 2's caption 2 has cosine 0, below captions 0 and 1 → rank 2.
    assert stats["rank"].tolist() == [0.0, 1.0, 2.0]
    i2t = F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
    expected = F.cross_entropy(i2t, torch.arange(3), reduction="none") + F.cross_entropy(i2t.T, torch.arange(3), reduction="none")
    torch.testing.assert_close(stats["loss"], expected)
    assert float(out.loss) == pytest.approx(float(expected.mean() / 2), abs=1e-6)


def test_mismatched_feature_shapes_are_an_error():
    with pytest.raises(ValueError, match="image and text features"):
        clip_loss(torch.randn(4, 3), torch.randn(4, 5), torch.tensor(1.0))
