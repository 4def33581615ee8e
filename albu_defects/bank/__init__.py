"""The defect bank: per-class defect crops cut from real image+mask data, for injection methods.

Dynamic Label Injection, Guided-Crop and the defect injection transform all draw real defects from
one :class:`DefectBank`. A bank holds, for every defect class, one :class:`DefectEntry` per source
image holding that class: the pixels of the defect's bounding box plus a ``margin`` (clipped to the
image), the boolean mask of the defect's own pixels in that crop, and its blobs (8-connected
components). Whole images are never kept in memory; defect-free images are *indexed* (paths, or the
arrays handed to :meth:`DefectBank.from_arrays`) so they can serve as injection targets.

Class ids
    ``bank.classes`` is a tuple of defect-class names; class id ``k`` (1-based) is
    ``bank.classes[k - 1]`` and 0 is background / defect-free, matching class-index masks.
    For the Magnetic Tile layout the order is :data:`~albu_defects.data.MAGNETIC_TILE_CLASSES`
    (Blowhole, Break, Crack, Fray, Uneven -> 1..5) when exactly those classes are present, else the
    sorted folder names. ``classes=`` restricts and orders the classes in every constructor.

Pixels
    Images keep the dtype and channels they are read with (uint8, uint16 or float32; (H, W) or
    (H, W, C)). Files are read with ``cv2.IMREAD_UNCHANGED`` (``.npy`` with ``allow_pickle=False``)
    and colour files are converted from OpenCV's BGR(A) to RGB(A), the order albumentations expects.
    Entry arrays are read-only: copy them before writing.

Folder layouts (:meth:`DefectBank.from_folder`)
    ``"magnetic_tile"``: ``ROOT/MT_<Class>/Imgs/<name>.jpg`` with its mask ``<name>.png``; the folder
    names the class, ``MT_Free`` holds the defect-free images. ``"generic"``: ``ROOT/images/<stem>.*``
    with ``ROOT/masks/<stem>.*``; masks are class-index masks (0 background, value ``k`` = class
    ``k``), named by ``class_names`` (a list: value ``k`` -> ``class_names[k-1]``, or a dict
    ``{value: name}``), else by ``ROOT/classes.txt`` (one name per line) or ``ROOT/classes.json``
    (a list or a ``{"value": name}`` object), else ``class_<k>``. Images whose mask is all zero are
    the defect-free images. ``"auto"`` picks whichever layout ``ROOT`` has. Binary masks (0/255,
    possibly anti-aliased) are thresholded with ``mask_threshold`` (a pixel ``> mask_threshold`` is
    defect) in the Magnetic Tile layout; use ``class_names={255: "name"}`` for binary masks in the
    generic layout.

Bad input
    Every problem with a source (missing mask or image, image/mask size mismatch, unreadable file,
    unsupported dtype, a defect-class image with an empty mask, unknown class values) skips that
    source, is recorded in ``bank.skipped`` (kept when saved) and is reported by one
    :class:`DefectBankWarning` per kind, with the count and the names; ``strict=True`` raises a
    ``ValueError`` instead. A class left without defects is warned about at build, and drawing from it
    raises a ``ValueError`` naming it. Unknown layouts and unknown class names raise.

On-disk format
    A bank folder (:meth:`DefectBank.save` / :meth:`DefectBank.load`): an ``index.json``, the crops
    and masks in one ``entries.npz`` (no pickles) and the stored defect-free images; see
    :mod:`albu_defects.bank.storage`, which also states what a save may replace (only a bank, only
    its own files, old or new bank after any interruption) and what a load refuses.

Pipelines and DataLoader workers
    A transform takes ``bank="path/to/bank"`` (a string, so the pipeline serializes to YAML) and calls
    :func:`resolve_bank`, which loads each bank folder at most once per process (cached by absolute
    path; reloaded when its index changes). :func:`bank_reference` gives the string a transform should
    serialize. A bank with a ``path`` (loaded, or saved) pickles as that path only, so DataLoader
    workers receive a few bytes and load the bank themselves, once (:mod:`albu_defects.bank.registry`).

Modules
    :mod:`.entry` (:class:`DefectEntry`), :mod:`.bank` (:class:`DefectBank`: the container and its
    draws), :mod:`.statistics` (counts and per-class statistics), :mod:`.build` (the builders),
    :mod:`.storage` (the on-disk format), :mod:`.registry` (banks by path, loaded once per process),
    :mod:`.io` (reading images). This package imports neither albumentations nor torch.
"""

from .bank import DefectBank
from .entry import DEFAULT_MARGIN, DefectBankWarning, DefectEntry, SkippedSource
from .io import IMAGE_SUFFIXES, read_image
from .registry import bank_reference, check_bank_arg, resolve_bank
from .statistics import format_stats

__all__ = [
    "DEFAULT_MARGIN",
    "IMAGE_SUFFIXES",
    "DefectBank",
    "DefectBankWarning",
    "DefectEntry",
    "SkippedSource",
    "bank_reference",
    "check_bank_arg",
    "format_stats",
    "read_image",
    "resolve_bank",
]
