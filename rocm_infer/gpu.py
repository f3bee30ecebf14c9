"""AMD GPUs and their VRAM, from the amdgpu driver's sysfs files (Linux, stdlib only).

The amdgpu driver exposes every GPU as a DRM card::

    /sys/class/drm/card0 -> ../../devices/pci0000:00/.../0000:03:00.0/drm/card0
    /sys/class/drm/card0/device/vendor                 0x1002 (AMD)
    /sys/class/drm/card0/device/device                 0x744c
    /sys/class/drm/card0/device/product_name           (not on every card)
    /sys/class/drm/card0/device/mem_info_vram_total    bytes
    /sys/class/drm/card0/device/mem_info_vram_used     bytes
    /sys/class/drm/card0/device/drm/renderD128         the card's render node

and the ROCm kernel driver (KFD) lists the GPUs ROCm will use, in the order
HIP numbers them (``HIP_VISIBLE_DEVICES``)::

    /sys/class/kfd/kfd/topology/nodes/<n>/properties   simd_count, drm_render_minor, gfx_target_version

Nothing here raises for a machine without an AMD GPU, without the amdgpu
driver, or without ``/sys`` at all: the functions return an empty list or
``None``. Every function takes the sysfs root as ``sysfs`` so tests can point
it at a tree of their own.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

__all__ = ["GpuInfo", "VramInfo", "VramMonitor", "choose_device", "gpus", "vram_info"]

logger = logging.getLogger(__name__)

AMD_VENDOR_ID = 0x1002
SYSFS = "/sys"

# A card that is not the one with the most VRAM is still taken for a discrete GPU
# when it has this much: an APU's VRAM carve-out is usually 0.5-2 GiB.
_DISCRETE_MIN_VRAM = 4 * 1024**3

_CARD = re.compile(r"^card(\d+)$")
_RENDER = re.compile(r"^renderD(\d+)$")


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One AMD GPU as the amdgpu driver reports it.

    ``index`` is the GPU's ROCm device number, what ``LoadConfig.devices`` and
    ``HIP_VISIBLE_DEVICES`` count (KFD's order; the order of the cards when
    KFD is absent). ``discrete`` marks a discrete card: the GPU with the most
    VRAM, and any other with at least 4 GiB; a smaller one is taken for an
    integrated GPU (an APU's VRAM carve-out). ``vram_free`` is total minus
    used, never below 0. ``gfx_target`` is the ISA ROCm builds for (e.g.
    ``"gfx1100"``), from KFD; ``None`` without it.
    """

    index: int
    card: str
    name: str
    device_id: int
    pci_address: str | None
    vram_total: int
    vram_used: int
    discrete: bool
    gfx_target: str | None
    sysfs_path: str

    @property
    def vram_free(self) -> int:
        return max(self.vram_total - self.vram_used, 0)


@dataclass(frozen=True, slots=True)
class VramInfo:
    """The VRAM of one GPU now: bytes in total, in use, and free (never below 0)."""

    index: int
    total: int
    used: int
    free: int


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(4096).strip()
    except OSError:
        return None


def _read_int(path: str, base: int = 10) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def _gfx_target(version: int) -> str:
    """KFD's gfx_target_version (110000, 90010) as an ISA name (gfx1100, gfx90a)."""
    major, minor, step = version // 10000, version // 100 % 100, version % 100
    return f"gfx{major}{minor:x}{step:x}"


def _kfd_gpus(sysfs: str) -> list[tuple[int, int | None]]:
    """``(drm render minor, gfx_target_version)`` of every KFD GPU node, in HIP's order."""
    nodes_dir = os.path.join(sysfs, "class", "kfd", "kfd", "topology", "nodes")
    try:
        names = os.listdir(nodes_dir)
    except OSError:
        return []
    found = []
    for name in sorted((n for n in names if n.isdigit()), key=int):
        text = _read(os.path.join(nodes_dir, name, "properties"))
        if text is None:
            continue
        props: dict[str, int] = {}
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if value.strip().lstrip("-").isdigit():
                props[key] = int(value)
        if props.get("simd_count", 0) > 0 and "drm_render_minor" in props:  # a CPU node has no SIMDs
            found.append((props["drm_render_minor"], props.get("gfx_target_version") or None))
    return found


def _render_minor(device_dir: str) -> int | None:
    try:
        names = os.listdir(os.path.join(device_dir, "drm"))
    except OSError:
        return None
    for name in names:
        match = _RENDER.match(name)
        if match:
            return int(match.group(1))
    return None


def gpus(sysfs: str = SYSFS) -> list[GpuInfo]:
    """Every AMD GPU (PCI vendor 0x1002) the amdgpu driver reports VRAM for, by ``index``.

    Returns ``[]`` on a machine without one (or without sysfs); never raises.
    Reads a handful of small sysfs files per card: cheap, but blocking file
    I/O, so call it from a worker thread where that matters.
    """
    drm = os.path.join(sysfs, "class", "drm")
    try:
        entries = os.listdir(drm)
    except OSError:
        return []
    cards = []
    for entry in entries:
        match = _CARD.match(entry)  # card0-DP-1 and the like are connectors
        if match is None:
            continue
        device = os.path.join(drm, entry, "device")
        if _read_int(os.path.join(device, "vendor"), 16) != AMD_VENDOR_ID:
            continue
        total = _read_int(os.path.join(device, "mem_info_vram_total"))
        if total is None:  # not amdgpu (e.g. radeon), or a driver without VRAM info
            continue
        used = _read_int(os.path.join(device, "mem_info_vram_used")) or 0
        cards.append((int(match.group(1)), entry, device, total, used))
    if not cards:
        return []
    cards.sort()
    kfd = _kfd_gpus(sysfs)
    kfd_index = {minor: i for i, (minor, _) in enumerate(kfd)}
    largest = max(card[3] for card in cards)
    found = []
    for position, (_, entry, device, total, used) in enumerate(cards):
        minor = _render_minor(device)
        index = kfd_index.get(minor, position) if kfd and minor is not None else position
        gfx_version = kfd[kfd_index[minor]][1] if minor in kfd_index else None
        device_id = _read_int(os.path.join(device, "device"), 16) or 0
        real = os.path.realpath(device)
        found.append(
            GpuInfo(
                index=index,
                card=entry,
                name=_read(os.path.join(device, "product_name")) or f"AMD GPU {device_id:#06x}",
                device_id=device_id,
                pci_address=os.path.basename(real) if real != device else None,
                vram_total=total,
                vram_used=used,
                discrete=total == largest or total >= _DISCRETE_MIN_VRAM,
                gfx_target=_gfx_target(gfx_version) if gfx_version else None,
                sysfs_path=device,
            )
        )
    found.sort(key=lambda g: g.index)
    return found


def choose_device(devices: tuple[int, ...], found: list[GpuInfo]) -> GpuInfo | None:
    """The GPU a model goes to: ``devices[0]`` when given, else the discrete GPU
    with the most VRAM (the lowest index among equals); ``None`` if there is none."""
    if devices:
        return next((g for g in found if g.index == devices[0]), None)
    discrete = [g for g in found if g.discrete]
    if not discrete:
        return None
    return max(discrete, key=lambda g: (g.vram_total, -g.index))


def vram_info(device: int | None = None, *, sysfs: str = SYSFS) -> VramInfo | None:
    """The VRAM of ROCm device ``device`` (default: the discrete GPU), or ``None``
    when there is no such AMD GPU. Never raises."""
    gpu = choose_device(() if device is None else (device,), gpus(sysfs))
    if gpu is None:
        return None
    return VramInfo(gpu.index, gpu.vram_total, gpu.vram_used, gpu.vram_free)


class VramMonitor:
    """Reads one GPU's VRAM in use, and keeps the most seen so far.

    ``sample()`` reads ``mem_info_vram_used`` once (one small sysfs file) and
    returns ``(used, peak)``; ``(None, peak)`` if the file cannot be read.
    """

    __slots__ = ("_path", "peak")

    def __init__(self, gpu: GpuInfo) -> None:
        self._path = os.path.join(gpu.sysfs_path, "mem_info_vram_used")
        self.peak: int | None = None

    def __repr__(self) -> str:
        return f"<VramMonitor {self._path!r} peak={self.peak}>"

    def sample(self) -> tuple[int | None, int | None]:
        used = _read_int(self._path)
        if used is not None and (self.peak is None or used > self.peak):
            self.peak = used
        return used, self.peak
