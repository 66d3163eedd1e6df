"""A plain PyTorch data-parallel step whose collectives are dutycycle's: PyTorch tensors go to the
comm layer through DLPack, in place. One JSON line per rank."""

import json

import torch

import dutycycle.distributed as dist

if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank, n = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    for p in model.parameters():
        dist.broadcast(p.data, src=0)
    x = torch.full((8, 4), float(rank + 1))
    model(x).sum().backward()
    for p in model.parameters():
        dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)
    got = [torch.zeros(2) for _ in range(n)]
    dist.all_gather(got, torch.tensor([float(rank), 1.0]))
    print(json.dumps(dict(rank=rank, grad=model.weight.grad.tolist(), bias=model.bias.grad.tolist(),
                          gathered=[g.tolist() for g in got])), flush=True)
    dist.destroy_process_group()
