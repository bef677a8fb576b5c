"""Data for the federation, one module per job:

- `registry`: dataset declarations (`DATASETS`, `dataset_names`, `get_spec`); torch-free
- `sources`, `synthetic`: readers of npz / torchvision / hub sources, the generated stand-ins
- `load`: `load_data` -> `FederatedData` (subset, validation carve, per-process cache)
- `partition`: `partition_indices` (flwr-datasets), `client_partition`, `flipped_label_counts`
- `noise`: `flip_labels` (symmetric label noise); numpy only
- `loaders`: `to_float`, `eval_loader`, `eval_batches` (staged on the device once)
- `device_batches`: `client_batches` -> `ClientBatches` (a client's training batches, made on its device)

Importing this package imports only the registry (no torch): import the others by module.
"""

from fedmpq_flwr.data.registry import (
    DATASETS,
    DatasetSpec,
    DataSourceError,
    HubSource,
    TorchvisionSource,
    dataset_names,
    get_spec,
)

__all__ = ["DATASETS", "DataSourceError", "DatasetSpec", "HubSource", "TorchvisionSource", "dataset_names", "get_spec"]
