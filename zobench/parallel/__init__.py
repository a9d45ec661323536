"""One run beyond one process: data-parallel ZO over torch.distributed (`data.py`) and the ZO2-style
block-by-block offload scheduler over a slower parameter tier (`offload.py`)."""
