"""Caption datasets by name, and the prepared data every stage works from:
`build_dataset(data_cfg, cache_dir)` turns a `DataConfig` into a `CaptionDataset` (the
registry `DATASETS`: shapes, shapes-specific, karpathy, coco, folder, imagefolder, hf, openclip,
webdataset); `prepare_data(cfg)` adds the frozen text tower's embedding of every caption (cached).
It may import the configuration layer and `vldistill.runtime`; it shares a layer with
`vldistill.models` (the caption cache runs a text tower), and everything above may import it
(tests/test_architecture.py's `LAYERS`).
"""
from . import coco, folder, hf, imagefolder, karpathy, openclip, shapes, shards  # noqa: F401  (each registers its dataset)
from .prepared import PreparedData, prepare_data
from .registry import DATASETS, build_dataset
from .splits import CaptionDataset, CaptionSplit, TensorImages, normalize_caption

__all__ = ["CaptionDataset", "CaptionSplit", "DATASETS", "PreparedData", "TensorImages",
           "build_dataset", "normalize_caption", "prepare_data"]
