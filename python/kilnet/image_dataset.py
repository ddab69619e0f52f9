"""kilnet.utils.image_dataset_from_directory: a folder of images, one subfolder per class, as a
PyDataset of (images, labels) batches read with Pillow, with keras.utils'
image_dataset_from_directory's arguments and semantics: classes in sorted subfolder order (or
the order of class_names), files shuffled once with np.random.RandomState(seed) before the
split, the last validation_split of them for validation, training batches reshuffled every
epoch. Images come as float32 in [0, 255], shape (batch, height, width, channels).

Pillow resizes with antialiasing when it shrinks, TensorFlow does not: pixel values of resized
images differ slightly from Keras's (tf backend); the files, labels, order and shapes match.
"""
from __future__ import annotations

import math
import os

import numpy as np

from kilnet.py_dataset import PyDataset

__all__ = ["image_dataset_from_directory", "ALLOWLIST_FORMATS"]

ALLOWLIST_FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
_CHANNELS = {"rgb": ("RGB", 3), "rgba": ("RGBA", 4), "grayscale": ("L", 1)}
_RESAMPLE = {"bilinear": "BILINEAR", "nearest": "NEAREST", "bicubic": "BICUBIC", "area": "BOX",
             "lanczos3": "LANCZOS", "lanczos5": "LANCZOS"}


def image_dataset_from_directory(directory, labels="inferred", label_mode="int", class_names=None,
                                 color_mode="rgb", batch_size=32, image_size=(256, 256), shuffle=True, seed=None,
                                 validation_split=None, subset=None, interpolation="bilinear", follow_links=False,
                                 crop_to_aspect_ratio=False, pad_to_aspect_ratio=False, data_format=None,
                                 verbose=True):
    """A PyDataset of image batches from `directory` (see the module docstring); with
    subset="both", a (training, validation) pair. `.class_names` and `.file_paths` are set."""
    if labels not in ("inferred", None):
        if not isinstance(labels, (list, tuple)):
            raise ValueError("`labels` argument should be a list/tuple of integer labels, of the same size as the "
                             "number of image files in the target directory, 'inferred' or None. "
                             f"Received: labels={labels!r}")
        if class_names:
            raise ValueError(f'You can only pass `class_names` if `labels="inferred"`. Received: labels={labels}, '
                             f"and class_names={class_names}")
    if label_mode not in ("int", "categorical", "binary", None):
        raise ValueError('`label_mode` argument must be one of "int", "categorical", "binary", or None. '
                         f"Received: label_mode={label_mode!r}")
    if labels is None or label_mode is None:
        labels, label_mode = None, None
    if color_mode not in _CHANNELS:
        raise ValueError(f'`color_mode` must be one of {{"rgb", "rgba", "grayscale"}}. Received: color_mode={color_mode!r}')
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if not isinstance(image_size, (list, tuple)) or len(image_size) != 2 or \
            not all(isinstance(s, (int, np.integer)) and s > 0 for s in image_size):
        raise ValueError(f"Invalid `image_size` value. Expected a tuple of 2 positive integers. Received: "
                         f"image_size={image_size!r}")
    interpolation = str(interpolation).lower()
    if interpolation not in _RESAMPLE:
        raise ValueError(f"Argument `interpolation` should be one of {tuple(_RESAMPLE)} (Pillow has no "
                         f"'gaussian' or 'mitchellcubic'). Received: interpolation={interpolation!r}")
    if crop_to_aspect_ratio and pad_to_aspect_ratio:
        raise ValueError("Only one of `crop_to_aspect_ratio` and `pad_to_aspect_ratio` can be True")
    if data_format not in (None, "channels_last", "channels_first"):
        raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}")
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    _check_validation_split(validation_split, subset, shuffle, seed)
    if not os.path.isdir(directory):
        raise ValueError(f"image_dataset_from_directory: {directory!r} is not a directory")
    if seed is None:
        seed = np.random.randint(1e6)
    paths, labels, class_names = _index_directory(directory, labels, class_names, shuffle, seed, follow_links,
                                                  verbose)
    if label_mode == "binary" and len(class_names) != 2:
        raise ValueError(f'When passing `label_mode="binary"`, there must be exactly 2 class_names. Received: '
                         f"class_names={class_names}")
    options = dict(image_size=tuple(int(s) for s in image_size), color_mode=color_mode, batch_size=batch_size,
                   label_mode=label_mode, num_classes=len(class_names) if class_names else 0,
                   interpolation=interpolation, crop=crop_to_aspect_ratio, pad=pad_to_aspect_ratio,
                   channels_first=data_format == "channels_first", class_names=class_names)
    if subset == "both":
        tp, tl = _split(paths, labels, validation_split, "training", verbose)
        vp, vl = _split(paths, labels, validation_split, "validation", verbose)
        for p, what in ((tp, "training"), (vp, "validation")):
            if not p:
                raise ValueError(f"No {what} images found in directory {directory}. Allowed formats: "
                                 f"{ALLOWLIST_FORMATS}")
        return (_ImageDataset(tp, tl, shuffle=shuffle, seed=seed, **options),
                _ImageDataset(vp, vl, shuffle=False, seed=seed, **options))
    paths, labels = _split(paths, labels, validation_split, subset, verbose)
    if not paths:
        raise ValueError(f"No images found in directory {directory}. Allowed formats: {ALLOWLIST_FORMATS}")
    return _ImageDataset(paths, labels, shuffle=shuffle, seed=seed, **options)


def _check_validation_split(validation_split, subset, shuffle, seed):
    if validation_split and not 0 < validation_split < 1:
        raise ValueError(f"`validation_split` must be between 0 and 1, received: {validation_split}")
    if (validation_split or subset) and not (validation_split and subset):
        raise ValueError("If `subset` is set, `validation_split` must be set, and inversely.")
    if subset not in ("training", "validation", "both", None):
        raise ValueError(f'`subset` must be either "training", "validation" or "both", received: {subset}')
    if validation_split and shuffle and seed is None:
        raise ValueError("If using `validation_split` and shuffling the data, you must provide a `seed` argument, "
                         "to make sure that there is no overlap between the training and validation subset.")


def _index_directory(directory, labels, class_names, shuffle, seed, follow_links, verbose):
    """(file paths, labels or None, class names), as keras's dataset_utils.index_directory."""
    if labels == "inferred":
        subdirs = [d for d in sorted(os.listdir(directory))
                   if os.path.isdir(os.path.join(directory, d)) and not d.startswith(".")]
        if class_names is not None:
            if not set(class_names).issubset(subdirs):
                raise ValueError("The `class_names` passed did not match the names of the subdirectories of the "
                                 f"target directory. Expected: {subdirs} (or a subset of it), but received: "
                                 f"class_names={class_names}")
            subdirs = list(class_names)
    else:
        if class_names is not None:
            raise ValueError("When argument `labels` is given or None, argument `class_names` cannot be specified")
        subdirs = [""]
    filenames, found = [], []
    for index, subdir in enumerate(subdirs):
        root_dir = os.path.join(directory, subdir)
        walk = sorted(os.walk(root_dir, followlinks=follow_links), key=lambda w: w[0])
        for root, _, files in walk:
            for fname in sorted(files):
                if fname.lower().endswith(ALLOWLIST_FORMATS):
                    filenames.append(os.path.join(subdir, os.path.relpath(os.path.join(root, fname), root_dir)))
                    found.append(index)
    if labels == "inferred":
        class_names = list(subdirs)
        labels = np.asarray(found, np.int32)
    elif labels is None:
        class_names = None
    else:
        if len(labels) != len(filenames):
            raise ValueError(f"Expected the lengths of `labels` to match the number of files in the target "
                             f"directory. len(labels) is {len(labels)} while we found {len(filenames)} files in "
                             f"directory {directory}.")
        class_names = [str(label) for label in sorted(set(labels))]
        labels = np.asarray(labels)
    if verbose:
        print(f"Found {len(filenames)} files." if labels is None else
              f"Found {len(filenames)} files belonging to {len(class_names)} classes.")
    paths = [os.path.join(directory, f) for f in filenames]
    if shuffle:   # globally, once, as Keras: the same seed shuffles paths and labels alike
        np.random.RandomState(seed).shuffle(paths)
        if labels is not None:
            np.random.RandomState(seed).shuffle(labels)
    return paths, labels, class_names


def _split(paths, labels, validation_split, subset, verbose):
    if not validation_split:
        return paths, labels
    n_val = int(validation_split * len(paths))
    if subset == "training":
        if verbose:
            print(f"Using {len(paths) - n_val} files for training.")
        return paths[:len(paths) - n_val], None if labels is None else labels[:len(paths) - n_val]
    if verbose:
        print(f"Using {n_val} files for validation.")
    return paths[len(paths) - n_val:], None if labels is None else labels[len(labels) - n_val:]


class _ImageDataset(PyDataset):
    """Batches of decoded images (and labels): a PyDataset, so fit reads it in its data thread
    (set `.workers` for several threads)."""

    def __init__(self, paths, labels, *, image_size, color_mode, batch_size, label_mode, num_classes,
                 interpolation, crop, pad, channels_first, class_names, shuffle, seed):
        super().__init__()
        self.file_paths, self.class_names = list(paths), class_names
        self._labels = labels
        self._size, self._mode, self._batch = image_size, color_mode, batch_size
        self._label_mode, self._num_classes = label_mode, num_classes
        self._interpolation, self._crop, self._pad = interpolation, crop, pad
        self._channels_first = channels_first
        self._order = np.arange(len(self.file_paths))
        self._shuffle = shuffle
        self._rng = np.random.RandomState(seed)
        if shuffle:
            self._rng.shuffle(self._order)

    def __len__(self):
        n = len(self.file_paths)
        return n if self._batch is None else math.ceil(n / self._batch)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} is out of range for {len(self)} batches")
        if self._batch is None:
            rows = self._order[index:index + 1]
        else:
            rows = self._order[index * self._batch:(index + 1) * self._batch]
        images = np.stack([self._load(self.file_paths[i]) for i in rows])
        if self._channels_first:
            images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        if self._batch is None:
            images = images[0]
        if self._label_mode is None:
            return images
        labels = self._labels_of(rows)
        return images, labels[0] if self._batch is None else labels

    def _labels_of(self, rows):
        y = np.asarray(self._labels)[rows]
        if self._label_mode == "int":
            return y.astype(np.int32)
        if self._label_mode == "binary":
            return y.astype(np.float32).reshape(-1, 1)
        out = np.zeros((len(rows), self._num_classes), np.float32)
        out[np.arange(len(rows)), y.astype(np.int64)] = 1.0
        return out

    def _load(self, path):
        from PIL import Image   # Pillow: needed only when images are read
        mode, channels = _CHANNELS[self._mode]
        with Image.open(path) as im:
            im.seek(0)     # an animated GIF: its first frame, as Keras
            im = im.convert(mode)
        h, w = self._size
        resample = getattr(Image.Resampling, _RESAMPLE[self._interpolation])
        if self._crop:      # the centred largest box of the target's aspect ratio
            cw, ch = min(im.width, round(im.height * w / h)), min(im.height, round(im.width * h / w))
            left, top = (im.width - cw) // 2, (im.height - ch) // 2
            im = im.crop((left, top, left + cw, top + ch))
        elif self._pad:     # centred on a black canvas of the target's aspect ratio
            pw, ph = max(im.width, round(im.height * w / h)), max(im.height, round(im.width * h / w))
            canvas = Image.new(mode, (pw, ph))
            canvas.paste(im, ((pw - im.width) // 2, (ph - im.height) // 2))
            im = canvas
        if im.size != (w, h):
            im = im.resize((w, h), resample)
        return np.asarray(im, np.float32).reshape(h, w, channels)

    def on_epoch_end(self):
        if self._shuffle:   # Keras reshuffles the training set every epoch
            self._rng.shuffle(self._order)
