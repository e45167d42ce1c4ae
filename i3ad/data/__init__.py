"""Data: the MVTec-layout reader, the synthetic MVTec-like generator and validation/test splits."""

from i3ad.data.mvtec import (
    IMAGE_SUFFIXES,
    MVTecCategory,
    TestItem,
    TestSet,
    TrainImages,
    list_images,
    load_image,
    load_mask,
    load_test_set,
)
from i3ad.data.splits import split_test_items
from i3ad.data.synthetic import DEFECT_SETS, SYNTHETIC_CATEGORIES, CategorySpec, ensure_dataset, make_dataset

__all__ = [
    "DEFECT_SETS",
    "IMAGE_SUFFIXES",
    "SYNTHETIC_CATEGORIES",
    "CategorySpec",
    "MVTecCategory",
    "TestItem",
    "TestSet",
    "TrainImages",
    "ensure_dataset",
    "list_images",
    "load_image",
    "load_mask",
    "load_test_set",
    "make_dataset",
    "split_test_items",
]
