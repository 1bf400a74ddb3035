"""DDP on two CPU processes (gloo): gradients stay synchronised and match one process on the same batches."""

from __future__ import annotations

import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tivm.train.config import load_config
from tivm.train.data_spec import split_data
from tivm.train.synthetic import generate
from tivm.train.trainer import TrainArgs, fit

WORLD = 2
DATA = dict(n=160, seed=5, t=4, audio_dim=8, video_dim=12, latent_dim=4)


def _config(name: str, hidden: list[int]) -> dict:
    cfg = load_config(name)
    # hidden = [] leaves out BatchNorm, whose statistics are per process by design; then DDP must equal one process
    cfg["model"].update(hidden=hidden, embed_dim=16, dropout=0.0)
    cfg["train"].update(epochs=2, batch_size=32, lr=1e-2, warmup_epochs=0, patience=10)
    return cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, cases: list, run_dir: str, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        for name, hidden, _ in cases:  # one pair of processes for every case: spawning is the slow part
            final = {}
            cfg = _config(name, hidden)
            fit(cfg, split_data(generate(**DATA)), os.path.join(run_dir, name),
                TrainArgs.from_config(cfg, progress=False),
                on_epoch_end=lambda epoch, model: final.update(
                    {k: v.detach().clone().numpy() for k, v in model.state_dict().items()}))
            queue.put((name, rank, final))
    finally:
        dist.destroy_process_group()


def _run_ddp(cases: list, run_dir) -> dict[tuple[str, int], dict]:
    """{(config name, rank): final weights} from two processes."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, cases, str(run_dir), queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    results = {}
    for _ in range(WORLD * len(cases)):
        name, rank, final = queue.get(timeout=240)
        results[name, rank] = final
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def _single(name: str, hidden: list[int], run_dir) -> dict:
    final = {}
    cfg = _config(name, hidden)
    fit(cfg, split_data(generate(**DATA)), run_dir, TrainArgs.from_config(cfg, progress=False),
        on_epoch_end=lambda epoch, model: final.update(
            {k: v.detach().clone().numpy() for k, v in model.state_dict().items()}))
    return final


CASES = [("IVM-M", [], True), ("VM-MS", [16], False)]


def test_two_gloo_processes_stay_synchronised(tmp_path):
    """Without BatchNorm, two processes on half-batches must give one process's weights on whole batches
    (the loss sees the all-gathered batch); with BatchNorm (per-process statistics) they stay in sync."""
    torch.set_num_threads(1)
    results = _run_ddp(CASES, tmp_path / "ddp")
    for name, hidden, equal_to_single in CASES:
        ranks = results[name, 0], results[name, 1]
        single = _single(name, hidden, tmp_path / "one" / name)
        assert set(ranks[0]) == set(ranks[1]) == set(single)
        for key in single:
            if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
                continue  # per-process BatchNorm statistics are not synchronised by DDP, on purpose
            np.testing.assert_allclose(ranks[0][key], ranks[1][key], rtol=1e-6, atol=1e-7, err_msg=key)
            if equal_to_single:
                np.testing.assert_allclose(ranks[0][key], single[key], rtol=1e-4, atol=1e-5, err_msg=key)
        if not equal_to_single:  # same data, same start: training goes the same way, only not bit for bit
            w = [k for k in single if k.endswith("weight")][0]
            assert np.corrcoef(ranks[0][w].ravel(), single[w].ravel())[0, 1] > 0.9
