"""Dataset readers: the official raw files of each dataset -> uint8 HWC images and int64 labels, one module per source.

Stage 1 input. The paper's datasets (section 4.1: MNIST, CIFAR-10, SVHN) are read from the files their publishers
distribute, under `data_root` (default `data/`):

    data/mnist/    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz  t10k-images-idx3-ubyte.gz
                   t10k-labels-idx1-ubyte.gz   (each also accepted uncompressed, without `.gz`)          mnist.py
    data/cifar10/  cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}  or  cifar-10-python.tar.gz
                                                                                                      cifar10.py
    data/svhn/     train_32x32.mat  test_32x32.mat                                                       svhn.py
    data/fashion-mnist/  the MNIST file names, same IDX format (also read from /usr/share/datasets/fashion-mnist/,
                   where Debian's package `dataset-fashion-mnist` installs them)                fashion_mnist.py

plus `digits` (scikit-learn's bundled 8x8 digits, no file needed: digits.py), `folder:PATH` (PATH/train/<class>/*.png
...: folder.py), `hf:NAME_OR_DIR[:CONFIG]` (a Hugging Face `datasets` dataset: its Image and ClassLabel columns:
hf.py) and `PREFIX:...` of an installed package (entry point group twinturbo.datasets, registry.py). Every reader checks what it reads and turns a missing, truncated or foreign file into one `TwinTurboError`
line naming the file. `download_dataset` fetches the official files and verifies their MD5 (downloads.py).
split.py holds what a reader returns (`DatasetSplit`) and what a source is (`DatasetSource`), images.py the image
decoding and checks every reader of images shares, idx.py the IDX format of both MNISTs, registry.py how a spec finds
its source.
"""
from .downloads import DOWNLOADS, Download
from .folder import FOLDER_PREFIX
from .hf import HF_PREFIX, HFDatasetOptions
from .images import IMAGE_SUFFIXES, image_size
from .registry import (DATASET_NAMES, ENTRY_POINT_GROUP, download_dataset, lookup, read_dataset_split, sources,
                       store_name)
from .split import SPLITS, DatasetSource, DatasetSplit, ImageFiles, SplitRequest

__all__ = ["DATASET_NAMES", "DOWNLOADS", "ENTRY_POINT_GROUP", "FOLDER_PREFIX", "HF_PREFIX", "IMAGE_SUFFIXES", "SPLITS",
           "DatasetSource", "DatasetSplit", "Download", "HFDatasetOptions", "ImageFiles", "SplitRequest",
           "download_dataset", "image_size", "lookup", "read_dataset_split", "sources", "store_name"]
