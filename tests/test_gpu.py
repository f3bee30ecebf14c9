"""Tests for rocm_infer.gpu, on fake sysfs trees shaped like the amdgpu driver's.

The tree mirrors a real machine's: ``class/drm/cardN`` is a symlink into
``devices/pci.../drm/cardN``, whose ``device`` link points back to the PCI
device directory holding the ``mem_info_*`` files; connectors
(``card0-DP-1``), render nodes and ``class/drm/version`` sit beside them; the
KFD topology lists a CPU node and the GPU nodes in ROCm's order.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import rocm_infer
from rocm_infer import GpuInfo, InsufficientVRAMError, LoadConfig, RocmBackend, gpus, vram_info
from rocm_infer.gpu import VramMonitor, choose_device

GiB = 1024**3


class FakeSysfs:
    """Builds a sysfs tree under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "class" / "drm").mkdir(parents=True)
        (root / "class" / "drm" / "version").write_text("drm 1.1.0 20060810\n")
        self.kfd_nodes = 0

    def add_card(
        self,
        card: int,
        pci: str,
        *,
        vendor: str = "0x1002",
        device: str = "0x744c",
        total: int | str | None = 24 * GiB,
        used: int | str = 1 * GiB,
        product: str | None = None,
        render: int | None = None,
    ) -> Path:
        render = 128 + card if render is None else render
        dev = self.root / "devices" / "pci0000:00" / "0000:00:01.1" / pci
        drm = dev / "drm"
        (drm / f"card{card}").mkdir(parents=True)
        (drm / f"renderD{render}").mkdir()
        (drm / f"card{card}" / f"card{card}-DP-1").mkdir()
        os.symlink("../../../" + pci, drm / f"card{card}" / "device")
        (dev / "vendor").write_text(vendor + "\n")
        (dev / "device").write_text(device + "\n")
        (dev / "uevent").write_text(f"DRIVER=amdgpu\nPCI_SLOT_NAME={pci}\n")
        if total is not None:
            (dev / "mem_info_vram_total").write_text(f"{total}\n")
            (dev / "mem_info_vram_used").write_text(f"{used}\n")
            (dev / "mem_info_vis_vram_total").write_text(f"{total}\n")
        if product is not None:
            (dev / "product_name").write_text(product + "\n")
        rel = Path("../../devices/pci0000:00/0000:00:01.1") / pci / "drm"
        os.symlink(rel / f"card{card}", self.root / "class" / "drm" / f"card{card}")
        os.symlink(rel / f"card{card}" / f"card{card}-DP-1", self.root / "class" / "drm" / f"card{card}-DP-1")
        os.symlink(rel / f"renderD{render}", self.root / "class" / "drm" / f"renderD{render}")
        return dev

    def add_kfd_node(self, *, simd_count: int, render: int = 0, gfx: int = 0) -> None:
        node = self.root / "class" / "kfd" / "kfd" / "topology" / "nodes" / str(self.kfd_nodes)
        node.mkdir(parents=True)
        self.kfd_nodes += 1
        lines = [f"cpu_cores_count {0 if simd_count else 16}", f"simd_count {simd_count}"]
        if simd_count:
            lines += [f"gfx_target_version {gfx}", f"drm_render_minor {render}", "location_id 768"]
        (node / "properties").write_text("\n".join(lines) + "\n")


@pytest.fixture
def sysfs(tmp_path: Path) -> FakeSysfs:
    return FakeSysfs(tmp_path / "sys")


def test_discrete_and_integrated_in_rocm_order(sysfs: FakeSysfs) -> None:
    # card0 is the dGPU, but KFD (so HIP) numbers the iGPU first.
    sysfs.add_card(0, "0000:03:00.0", total=24 * GiB, used=3 * GiB, product="Radeon RX 7900 XTX")
    sysfs.add_card(1, "0000:0e:00.0", device="0x164e", total=512 * 1024**2, used=100 * 1024**2)
    sysfs.add_kfd_node(simd_count=0)
    sysfs.add_kfd_node(simd_count=4, render=129, gfx=100306)
    sysfs.add_kfd_node(simd_count=192, render=128, gfx=110000)

    found = gpus(str(sysfs.root))
    assert [(g.index, g.card, g.discrete) for g in found] == [(0, "card1", False), (1, "card0", True)]
    igpu, dgpu = found
    assert dgpu.name == "Radeon RX 7900 XTX" and igpu.name == "AMD GPU 0x164e"
    assert (dgpu.vram_total, dgpu.vram_used, dgpu.vram_free) == (24 * GiB, 3 * GiB, 21 * GiB)
    assert (dgpu.gfx_target, igpu.gfx_target) == ("gfx1100", "gfx1036")
    assert dgpu.pci_address == "0000:03:00.0" and dgpu.device_id == 0x744C
    assert choose_device((), found) is dgpu
    assert choose_device((0,), found) is igpu and choose_device((5,), found) is None
    assert vram_info(sysfs=str(sysfs.root)) == rocm_infer.VramInfo(1, 24 * GiB, 3 * GiB, 21 * GiB)
    assert vram_info(0, sysfs=str(sysfs.root)) == rocm_infer.VramInfo(0, 512 * 1024**2, 100 * 1024**2, 412 * 1024**2)


def test_without_kfd_cards_are_numbered_in_order(sysfs: FakeSysfs) -> None:
    sysfs.add_card(1, "0000:0c:00.0", total=16 * GiB)
    sysfs.add_card(0, "0000:03:00.0", total=8 * GiB)
    found = gpus(str(sysfs.root))
    assert [(g.index, g.card, g.discrete, g.gfx_target) for g in found] == [
        (0, "card0", True, None),  # 8 GiB is a discrete card too, though not the largest
        (1, "card1", True, None),
    ]
    assert choose_device((), found) is found[1]


def test_other_vendors_and_drivers_without_vram_are_ignored(sysfs: FakeSysfs) -> None:
    sysfs.add_card(0, "0000:01:00.0", vendor="0x10de", device="0x2684")  # NVIDIA
    sysfs.add_card(1, "0000:02:00.0", total=None)  # radeon driver: no mem_info files
    sysfs.add_card(2, "0000:03:00.0", total=16 * GiB)
    assert [g.card for g in gpus(str(sysfs.root))] == ["card2"]


def test_used_above_total_gives_zero_free(sysfs: FakeSysfs) -> None:
    sysfs.add_card(0, "0000:03:00.0", total=8 * GiB, used=9 * GiB)
    (gpu,) = gpus(str(sysfs.root))
    assert gpu.vram_free == 0
    assert vram_info(sysfs=str(sysfs.root)) == rocm_infer.VramInfo(0, 8 * GiB, 9 * GiB, 0)


def test_unreadable_or_garbage_values_never_raise(sysfs: FakeSysfs) -> None:
    sysfs.add_card(0, "0000:03:00.0", total="garbage")
    sysfs.add_card(1, "0000:04:00.0", used="", total=4 * GiB)
    (gpu,) = gpus(str(sysfs.root))
    assert gpu.card == "card1" and gpu.vram_used == 0


@pytest.mark.parametrize("layout", ["missing", "empty", "no-drm"])
def test_no_gpu_gives_empty_results(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "sys"
    if layout == "empty":
        (root / "class" / "drm").mkdir(parents=True)
    elif layout == "no-drm":
        (root / "class").mkdir(parents=True)
    assert gpus(str(root)) == []
    assert vram_info(sysfs=str(root)) is None
    assert choose_device((), []) is None


def test_this_machine_never_raises() -> None:
    found = gpus()
    assert all(isinstance(g, GpuInfo) for g in found)
    assert (vram_info() is None) == (not any(g.discrete for g in found))


def test_vram_monitor_keeps_the_peak(sysfs: FakeSysfs) -> None:
    dev = sysfs.add_card(0, "0000:03:00.0", used=2 * GiB)
    monitor = VramMonitor(gpus(str(sysfs.root))[0])
    assert monitor.sample() == (2 * GiB, 2 * GiB)
    (dev / "mem_info_vram_used").write_text(f"{5 * GiB}\n")
    assert monitor.sample() == (5 * GiB, 5 * GiB)
    (dev / "mem_info_vram_used").write_text(f"{3 * GiB}\n")
    assert monitor.sample() == (3 * GiB, 5 * GiB)
    (dev / "mem_info_vram_used").unlink()
    assert monitor.sample() == (None, 5 * GiB)


def test_rocm_environment_picks_the_discrete_gpu(sysfs: FakeSysfs) -> None:
    sysfs.add_card(0, "0000:0e:00.0", total=512 * 1024**2)
    sysfs.add_card(1, "0000:03:00.0", total=24 * GiB)
    backend = RocmBackend(sysfs=str(sysfs.root))
    device = backend.device(LoadConfig())
    assert device is not None and device.card == "card1"
    assert backend.environment(LoadConfig(), device)["HIP_VISIBLE_DEVICES"] == "1"
    assert backend.environment(LoadConfig(devices=(0,)), device)["HIP_VISIBLE_DEVICES"] == "0"


@pytest.mark.integration
@pytest.mark.usefixtures("no_leaked_servers")
async def test_check_fit_refuses_before_anything_starts(sysfs: FakeSysfs, tiny_model_path: Path) -> None:
    size = tiny_model_path.stat().st_size
    sysfs.add_card(0, "0000:03:00.0", total=size, used=size // 2)
    backend = RocmBackend(sysfs=str(sysfs.root))
    with pytest.raises(InsufficientVRAMError, match="larger than the free VRAM of GPU 0") as exc:
        await rocm_infer.load_model(tiny_model_path, backend=backend, check_fit=True)
    assert (exc.value.required, exc.value.available, exc.value.device) == (size, size - size // 2, 0)
    assert exc.value.path == str(tiny_model_path)
    assert isinstance(exc.value, rocm_infer.RocmInferError)


@pytest.mark.integration
@pytest.mark.usefixtures("no_leaked_servers")
async def test_too_big_without_check_fit_warns_and_reports_vram(
    sysfs: FakeSysfs, tiny_model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The llama-server here runs on the CPU; the fake GPU only supplies the VRAM figures.
    size = tiny_model_path.stat().st_size
    dev = sysfs.add_card(0, "0000:03:00.0", total=size, used=size)
    backend = RocmBackend(sysfs=str(sysfs.root))
    with caplog.at_level(logging.WARNING, logger="rocm_infer.backend"):
        async with rocm_infer.load_model(tiny_model_path, backend=backend) as model:
            assert "larger than the free VRAM of GPU 0" in caplog.text
            stream = model.generate("the", max_tokens=3)
            await stream.collect()
            assert stream.metrics is not None
            assert (stream.metrics.active_vram_bytes, stream.metrics.peak_vram_bytes) == (size, size)
            (dev / "mem_info_vram_used").write_text(f"{size // 4}\n")
            stream = model.generate("the", max_tokens=3)
            await stream.collect()
            assert stream.metrics is not None
            assert (stream.metrics.active_vram_bytes, stream.metrics.peak_vram_bytes) == (size // 4, size)
            assert "vram=" in repr(stream.metrics)


@pytest.mark.integration
@pytest.mark.usefixtures("no_leaked_servers")
async def test_partial_offload_is_not_checked(sysfs: FakeSysfs, tiny_model_path: Path) -> None:
    sysfs.add_card(0, "0000:03:00.0", total=1024, used=1024)
    backend = RocmBackend(sysfs=str(sysfs.root))
    async with rocm_infer.load_model(tiny_model_path, backend=backend, check_fit=True, gpu_layers=1) as model:
        assert model.info.file_size == tiny_model_path.stat().st_size


@pytest.mark.integration
async def test_no_vram_figures_without_an_amd_gpu(model: rocm_infer.TextModel) -> None:
    stream = model.generate("the", max_tokens=2)
    await stream.collect()
    assert stream.metrics is not None
    if not rocm_infer.gpus():
        assert (stream.metrics.active_vram_bytes, stream.metrics.peak_vram_bytes) == (None, None)
        assert "vram" not in repr(stream.metrics)
