"""Training JPEGs decoded on the GPU (nvJPEG, through ``torchvision.io.decode_jpeg``), with the
crops and flips the CPU path would have drawn.

The loader's workers only read each image's bytes and its header, and draw the item's
random-resized crop and flip from the header's size, seeded per (seed, epoch, item) exactly as
:class:`~timm_gvit.training.data.ImageClassificationDataset` seeds its transform: the same item
of the same epoch gets the same crop box and flip on either path. The training process decodes the
whole batch on the device, crops, resizes (antialiased, with the transform's interpolation: PIL's
filter weights, bicubic for the GViT models) and flips it, all in a handful of batched operations:

    from timm_gvit.training.device_decode import DeviceDecodeDataset

    train_dataset = ImageClassificationDataset(...)            # as now, with training_transform(..., uint8=True)
    check_images(train_dataset, ...)                           # --skip-bad-images, if any, on the wrapped dataset
    train_dataset = DeviceDecodeDataset(train_dataset)         # reads crop, flip and size off its transform
    train_loader = DataLoader(train_dataset, ..., collate_fn=train_dataset.collate)   # the rest as now
    ...
    run.train_dataset.set_epoch(epoch)                         # passed on to the wrapped dataset
    for images, labels, bad in loader:                         # images: an EncodedBatch (bytes, boxes, flips)
        images, labels, bad = run.train_dataset.decode(images, labels, bad, accelerator.device)
        images = normalize(images, run.mean, run.std)          # images: uint8 [B, C, H, W] on the device, as before

API:

- ``DeviceDecodeDataset(dataset: ImageClassificationDataset)``: a map-style dataset of
  ``(item, label, unreadable)``; every other attribute (``set_epoch``, ``skip``, ``records``,
  ``split``, ...) is the wrapped dataset's. It refuses (``ValueError``) a transform other than
  random-resized crop, optional horizontal flip and uint8 output (the training transform of
  :func:`~timm_gvit.training.data.training_transform` with ``uint8=True``).
- ``DeviceDecodeDataset.collate(items) -> (EncodedBatch, labels int64 [B], unreadable tuple[str])``:
  the loader's ``collate_fn`` (a static method: :func:`collate_encoded`).
- ``DeviceDecodeDataset.decode(batch, labels, unreadable, device) -> (uint8 [B, C, H, W] on device,
  labels, unreadable)``: one call per batch, outside autocast or inside it (it turns autocast off).
  ``labels`` may be on the device already (accelerate moves them); they change only where an image
  the device could not decode turns out unreadable and the next readable item takes its place.
- ``EncodedBatch.to(device, non_blocking=False)`` and ``.pin_memory()`` (what accelerate and the
  DataLoader call): only the images decoded on the CPU move; the bytes stay in host memory, where
  ``decode_jpeg`` takes them.
- :func:`decode_batch` (the device work, for use without the wrapper) and :func:`resize_weights`.

An item goes the CPU path instead (in the worker, through the wrapped dataset, so as a uint8
``[C, H, W]`` tensor exactly as without this module) when it is not a baseline or progressive JPEG
that nvJPEG reads as is: not a JPEG, no end-of-image marker at its end (a truncated file), CMYK/YCCK,
an EXIF orientation other than upright, or unreadable altogether (then the wrapped dataset's rule
holds: the next readable item takes its place, and ``unreadable`` says why). A JPEG that passes these
checks but that nvJPEG still fails on is decoded by the CPU path in the training process.

What differs from the CPU path: the full-size image is always decoded (the CPU path may decode a
large JPEG at 1/2, 1/4 or 1/8 size: :func:`~timm_gvit.training.data.decode_sizes`; the box is then
drawn on that size, the same draw scaled); nvJPEG's IDCT and chroma upsampling are not libjpeg's
(a level or two of 255 on some pixels); the resize is computed in float32 with PIL's filter weights
where PIL rounds to 8 bits between its horizontal and vertical passes (under a level); one-channel
models get nvJPEG's luma (the JPEG's Y) where PIL converts the decoded RGB.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

from .data import seeded_rng

_BICUBIC_A = -0.5  # PIL's bicubic (and torch's antialiased bicubic)
#: Crops larger than this on a side are resized one at a time rather than padded into the batch's buffer.
MAX_PADDED_SIDE = 1024
#: Float32 bytes a chunk of the batch may take while it is resized (its padded crops, the half-resized images, the weights).
CHUNK_BYTES = 256 * 2**20
#: EXIF tag of the orientation.
_ORIENTATION = 0x0112


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    x = x.abs()
    a = _BICUBIC_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _triangle(x: torch.Tensor) -> torch.Tensor:
    return (1 - x.abs()).clamp_min(0)


def _box(x: torch.Tensor) -> torch.Tensor:
    return ((x >= -0.5) & (x < 0.5)).to(x.dtype)


#: PIL's resampling filters by the transform's interpolation: (support, kernel).
FILTERS = {"bicubic": (2.0, _bicubic), "bilinear": (1.0, _triangle), "box": (0.5, _box)}


def resize_weights(lengths: torch.Tensor, size: int, width: int, interpolation: str = "bicubic",
                   flips: torch.Tensor | None = None) -> torch.Tensor:
    """PIL's resampling weights (``ImagingResample``'s ``precompute_coeffs``, antialiased when
    shrinking) from inputs of ``lengths[n]`` pixels to ``size`` pixels, as a ``[n, size, width]``
    float32 matrix per item (columns from ``lengths[k]`` to ``width`` are 0), on ``lengths``' device.
    ``flips[k]`` reverses item k's output (a horizontal flip, for the width's matrix)."""
    support, kernel = FILTERS[interpolation]
    lengths = lengths.to(torch.float32)
    scale = (lengths / size)[:, None, None]  # [n, 1, 1]
    filterscale = scale.clamp_min(1.0)
    support = support * filterscale
    out = torch.arange(size, device=lengths.device, dtype=torch.float32)[None, :, None]
    center = (out + 0.5) * scale  # [n, size, 1]
    xmin = (center - support + 0.5).trunc().clamp_min(0)
    xmax = torch.minimum((center + support + 0.5).trunc(), lengths[:, None, None])
    x = torch.arange(width, device=lengths.device, dtype=torch.float32)[None, None, :]
    weights = kernel((x - center + 0.5) / filterscale) * ((x >= xmin) & (x < xmax))
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
    if flips is not None and bool(flips.any()):
        weights = torch.where(_to(flips, weights.device)[:, None, None], weights.flip(1), weights)
    return weights


def _resize_chunk(crops: list[torch.Tensor], boxes: list[tuple[int, int, int, int]], flips: torch.Tensor, size: tuple[int, int],
                  interpolation: str) -> torch.Tensor:
    """Crops (``[C, h, w]`` uint8 views, h and w from ``boxes``) resized to ``size`` and flipped, as
    float32 ``[n, C, H, W]``: padded into one buffer, then two batched matrix products."""
    device, channels, n = crops[0].device, crops[0].shape[0], len(crops)
    heights = torch.tensor([b[2] for b in boxes])
    widths = torch.tensor([b[3] for b in boxes])
    hmax, wmax = int(heights.max()), int(widths.max())
    padded = torch.empty((n, channels, hmax, wmax), dtype=torch.uint8, device=device)  # what lies outside a crop gets weight 0
    for k, crop in enumerate(crops):
        padded[k, :, :crop.shape[1], :crop.shape[2]].copy_(crop)
    wx = resize_weights(_to(widths, device), size[1], wmax, interpolation, flips)  # [n, W, wmax]
    wy = resize_weights(_to(heights, device), size[0], hmax, interpolation)  # [n, H, hmax]
    half = torch.bmm(padded.view(n, channels * hmax, wmax).float(), wx.transpose(1, 2))  # [n, C*hmax, W]
    return torch.matmul(wy[:, None], half.view(n, channels, hmax, size[1]))  # [n, C, H, W]


def _to(tensor: torch.Tensor, device) -> torch.Tensor:
    """A small host tensor on ``device`` without waiting for the device's queue (a blocking copy
    to a GPU waits for everything queued before it: the training step)."""
    return tensor.to(device, non_blocking=True)


def _interpolation_name(mode) -> str:
    name = getattr(mode, "value", mode)
    name = str(name).lower()
    if name not in FILTERS:
        raise ValueError(f"device decoding resizes with {sorted(FILTERS)}, not {name!r}")
    return name


@dataclass
class EncodedBatch:
    """A batch as the workers leave it: the JPEGs' bytes (one buffer), each item's crop box and
    flip, and the items that went the CPU path, already transformed.

    ``data`` uint8 [total bytes] and ``offsets`` int64 [B + 1]: item k's bytes are
    ``data[offsets[k]:offsets[k + 1]]`` (empty for an item decoded on the CPU); ``boxes`` int64
    [B, 4] (top, left, height, width in the full image); ``flips`` bool [B]; ``decoded`` uint8
    [n, C, H, W] the CPU path's items, at positions ``decoded_at`` int64 [n]; ``indices`` int64 [B]
    the items' dataset indices (for the CPU path in the training process)."""

    data: torch.Tensor
    offsets: torch.Tensor
    boxes: torch.Tensor
    flips: torch.Tensor
    decoded: torch.Tensor
    decoded_at: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device, non_blocking: bool = False) -> "EncodedBatch":
        """The CPU path's images on ``device``; the bytes and boxes stay in host memory, where the decoder reads them."""
        return replace(self, decoded=self.decoded.to(device, non_blocking=non_blocking))

    def pin_memory(self, device=None) -> "EncodedBatch":
        return replace(self, data=self.data.pin_memory(), decoded=self.decoded.pin_memory())

    def jpegs(self) -> list[tuple[int, torch.Tensor]]:
        """(position, bytes) of the items left to the device."""
        offsets = self.offsets.tolist()
        return [(k, self.data[offsets[k]:offsets[k + 1]]) for k in range(len(self)) if offsets[k + 1] > offsets[k]]


def _buffer(numel: int) -> torch.Tensor:
    """A uint8 tensor of ``numel`` bytes; in a loader worker, in shared memory from the start (as
    ``default_collate`` makes its batches), so that handing it to the training process copies nothing."""
    if torch.utils.data.get_worker_info() is not None:
        empty = torch.empty(0, dtype=torch.uint8)
        return empty.new(empty._typed_storage()._new_shared(numel, device=empty.device)).resize_(numel)
    return torch.empty(numel, dtype=torch.uint8)


def collate_encoded(items: list) -> tuple[EncodedBatch, torch.Tensor, tuple[str, ...]]:
    """``DeviceDecodeDataset`` items -> ``(EncodedBatch, labels, unreadable)``, in the worker."""
    encoded, labels, unreadable = zip(*items)
    chunks, offsets, boxes, flips, decoded, decoded_at, indices = [], [0], [], [], [], [], []
    for k, item in enumerate(encoded):
        if isinstance(item, torch.Tensor):  # the CPU path's image
            decoded.append(item)
            decoded_at.append(k)
            boxes.append((0, 0, 0, 0))
            flips.append(False)
            indices.append(-1)
            offsets.append(offsets[-1])
        else:
            data, box, flip, index = item
            chunks.append((offsets[-1], data))
            offsets.append(offsets[-1] + len(data))
            boxes.append(box)
            flips.append(flip)
            indices.append(index)
    data = _buffer(offsets[-1])
    view = data.numpy()
    for start, chunk in chunks:
        view[start:start + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
    stacked = torch.utils.data.default_collate(decoded) if decoded else torch.empty(0, dtype=torch.uint8)
    batch = EncodedBatch(data, torch.tensor(offsets, dtype=torch.int64), torch.tensor(boxes, dtype=torch.int64).reshape(-1, 4),
                         torch.tensor(flips, dtype=torch.bool), stacked, torch.tensor(decoded_at, dtype=torch.int64),
                         torch.tensor(indices, dtype=torch.int64))
    return batch, torch.tensor(labels, dtype=torch.int64), tuple(unreadable)


def _decode_list(data: list[torch.Tensor], mode, device) -> list[torch.Tensor | None]:
    from torchvision.io import decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points at TorchCodec; decode_jpeg works
        try:
            return list(decode_jpeg(data, mode=mode, device=device))
        except RuntimeError:
            decoded = []
            for item in data:
                try:
                    decoded.append(decode_jpeg(item, mode=mode, device=device))
                except RuntimeError:
                    decoded.append(None)
            return decoded


#: A side stream per GPU for nvJPEG's output allocations (see :func:`decode_jpegs`).
_STREAMS: dict[torch.device, "torch.cuda.Stream"] = {}


def decode_jpegs(data: list[torch.Tensor], device, channels: int = 3) -> list[torch.Tensor | None]:
    """JPEG bytes (uint8 CPU tensors) -> uint8 ``[C, H, W]`` images on ``device`` (nvJPEG for a
    CUDA device, libjpeg on the CPU), None for each one that fails: the whole list in one call, and
    only when that fails one at a time, to find the failures.

    On a GPU, torchvision allocates the images on the current stream but nvJPEG writes them on a
    stream of its own without waiting for the current one: memory the training step freed, with its
    kernels still queued, could be written over. So the call runs with a side stream current (its
    own pool of memory), and the images are then marked as used by the training stream."""
    from torchvision.io import ImageReadMode

    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    device = torch.device(device)
    if device.type != "cuda":
        return _decode_list(data, mode, device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    main = torch.cuda.current_stream(device)
    side = _STREAMS.setdefault(device, torch.cuda.Stream(device))
    with torch.cuda.stream(side):
        images = _decode_list(data, mode, device)
    main.wait_stream(side)
    for image in images:
        if image is not None:
            image.record_stream(main)
    return images


def decode_batch(batch: EncodedBatch, device, size: tuple[int, int], interpolation: str = "bicubic", channels: int = 3,
                 fallback=None) -> tuple[torch.Tensor, dict[int, tuple[int, str]]]:
    """The device's work on a batch: decode its JPEGs, crop each to its box, resize to ``size``
    (antialiased, PIL's weights for ``interpolation``), flip, round to uint8, and put the CPU
    path's items in their places. ``fallback(index) -> (uint8 [C, H, W], label, unreadable)``
    decodes an item nvJPEG failed on (the CPU path); without it such a failure is a RuntimeError.

    Returns ``uint8 [B, C, H, W]`` on ``device`` and ``{position: (label, unreadable)}`` of the
    items the fallback decoded."""
    device = torch.device(device)
    out = torch.empty((len(batch), channels, *size), dtype=torch.uint8, device=device)
    if len(batch.decoded_at):
        out[_to(batch.decoded_at, device)] = batch.decoded.to(device, non_blocking=True)
    jpegs = batch.jpegs()
    images = decode_jpegs([data for _, data in jpegs], device, channels) if jpegs else []
    boxes, flips, replaced = batch.boxes.tolist(), batch.flips, {}
    ready = []  # (position, crop)
    for (k, _), image in zip(jpegs, images):
        top, left, height, width = boxes[k]
        if image is not None and image.shape[1] >= top + height and image.shape[2] >= left + width:
            ready.append((k, image[:, top:top + height, left:left + width]))
            continue
        if fallback is None:
            raise RuntimeError(f"item {int(batch.indices[k])}: the device could not decode its JPEG")
        tensor, label, why = fallback(int(batch.indices[k]))
        out[k] = tensor.to(device)
        replaced[k] = (label, why)
    small = [(k, c) for k, c in ready if max(c.shape[1:]) <= MAX_PADDED_SIDE]
    groups = [[item] for item in ready if max(item[1].shape[1:]) > MAX_PADDED_SIDE]
    if small:  # chunks whose float32 buffers stay within CHUNK_BYTES
        hmax, wmax = max(c.shape[1] for _, c in small), max(c.shape[2] for _, c in small)
        per_item = 4 * (channels * hmax * wmax + channels * hmax * size[1] + size[0] * hmax + size[1] * wmax + channels * size[0] * size[1])
        step = max(1, CHUNK_BYTES // per_item)
        groups += [small[i:i + step] for i in range(0, len(small), step)]
    with torch.autocast(device.type, enabled=False):
        for group in groups:
            positions = [k for k, _ in group]
            resized = _resize_chunk([c for _, c in group], [boxes[k] for k in positions], flips[positions], size, interpolation)
            out[_to(torch.tensor(positions), device)] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out, replaced


class DeviceDecodeDataset(torch.utils.data.Dataset):
    """A training :class:`~timm_gvit.training.data.ImageClassificationDataset` whose JPEGs are
    decoded on the device: items are ``((bytes, box, flip, index) or a CPU-decoded uint8 [C, H, W]
    tensor, label, unreadable)``; batch them with :meth:`collate`, decode them with :meth:`decode`.
    See the module's docstring."""

    collate = staticmethod(collate_encoded)

    def __init__(self, dataset):
        self.dataset = dataset
        self.crop, self.flip_p, self.size, self.interpolation = self.read_transform(dataset.transform)
        self.channels = dataset.in_chans

    @staticmethod
    def read_transform(transform):
        """(random-resized-crop transform, flip probability, (H, W), interpolation name) of a training
        transform: timm's ``Compose`` of a random-resized crop, an optional horizontal flip and a
        uint8 to-tensor, or one object with ``uint8 = True``, a ``crop`` (whose ``get_params`` it
        draws its box with, then ``torch.rand(1) < hflip`` its flip) and ``hflip``."""
        from timm.data.transforms import MaybePILToTensor, RandomResizedCropAndInterpolation, ToNumpy
        from torchvision import transforms as T

        crops = (RandomResizedCropAndInterpolation, T.RandomResizedCrop)
        if getattr(transform, "uint8", False) and isinstance(getattr(transform, "crop", None), crops):
            # one transform that draws as its ``crop`` does, then flips with probability ``hflip``, out as uint8 [C, H, W]
            crop = transform.crop
            return crop, float(getattr(transform, "hflip", 0.0)), tuple(crop.size), _interpolation_name(crop.interpolation)
        steps = list(getattr(transform, "transforms", [transform]))
        crop = steps.pop(0) if steps and isinstance(steps[0], crops) else None
        flip = steps.pop(0) if steps and isinstance(steps[0], T.RandomHorizontalFlip) else None
        uint8 = len(steps) == 1 and isinstance(steps[0], (MaybePILToTensor, ToNumpy, T.PILToTensor))
        if crop is None or not uint8:
            raise ValueError(f"device decoding reproduces a random-resized crop, a horizontal flip and uint8 output "
                             f"(training_transform(..., uint8=True)); this transform is {transform}")
        return crop, (flip.p if flip is not None else 0.0), tuple(crop.size), _interpolation_name(crop.interpolation)

    def __getattr__(self, name):
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        return len(self.dataset)

    def _draw(self, image, index: int) -> tuple[tuple[int, int, int, int], bool]:
        """The crop box and flip the CPU path's transform draws for item ``index`` of an image of this size."""
        def draw():
            box = type(self.crop).get_params(image, self.crop.scale, self.crop.ratio)
            return tuple(int(v) for v in box), bool(self.flip_p > 0 and torch.rand(1) < self.flip_p)

        seed = self.dataset.seed
        if seed is None:
            return draw()
        with seeded_rng(int(np.random.SeedSequence([seed, self.dataset.epoch, index]).generate_state(1)[0])):
            return draw()

    def encoded(self, index: int):
        """``(bytes, box, flip, index, label)`` of item ``index`` where the device can decode it, else None
        (a ``ValueError`` for a label outside the classes, as the wrapped dataset raises)."""
        dataset = self.dataset
        source, name, label = dataset.records.load(index)
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < dataset.num_classes:
            raise ValueError(f"{dataset.where(name)}: label {label!r} is not an integer in 0..{dataset.num_classes - 1}")
        if isinstance(source, (str, os.PathLike)):
            try:
                with open(source, "rb") as file:
                    data = file.read()
            except OSError:
                return None
        elif isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
        else:
            return None
        # a JPEG from its start-of-image to its end-of-image marker (a truncated file has none at its end)
        if len(data) < 4 or data[:2] != b"\xff\xd8" or data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image = Image.open(io.BytesIO(data))  # the header only
                if image.format != "JPEG" or image.mode not in ("RGB", "L") or image.getexif().get(_ORIENTATION, 1) != 1:
                    return None
        except Exception:  # noqa: BLE001  (whatever the header holds, the CPU path decides)
            return None
        box, flip = self._draw(image, index)
        return data, box, flip, index, int(label)

    def __getitem__(self, index: int):
        found = self.encoded(index)
        if found is None:  # the CPU path: the wrapped dataset decodes, transforms, replaces an unreadable item
            return self.dataset[index]
        data, box, flip, index, label = found
        return (data, box, flip, index), label, ""

    def cpu_item(self, index: int):
        """Item ``index`` through the CPU path, as the wrapped dataset gives it."""
        return self.dataset[index]

    def decode(self, batch: EncodedBatch, labels: torch.Tensor, unreadable, device) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """``(uint8 [B, C, H, W] on device, labels, unreadable)`` of a collated batch."""
        images, replaced = decode_batch(batch, device, self.size, self.interpolation, self.channels, fallback=self.cpu_item)
        if replaced:
            labels = labels.clone()
            unreadable = list(unreadable)
            for k, (label, why) in replaced.items():
                labels[k] = label
                unreadable[k] = "\n".join(filter(None, [unreadable[k], why]))
            unreadable = tuple(unreadable)
        return images, labels, unreadable


__all__ = ["DeviceDecodeDataset", "EncodedBatch", "collate_encoded", "decode_batch", "decode_jpegs", "resize_weights"]
