"""Run the agent under qemu-aarch64-static in an arm64 Debian rootfs (no ARM board needed).

The rootfs is built by ``devices/emulation/setup_rootfs.sh``. Emulated timings say whether
the model runs on aarch64 onnxruntime and roughly how it scales, not how fast a Pi is: the
records carry ``emulated: true`` and ranking never mixes them with real measurements. Peak
RSS includes qemu's own memory (code translation cache).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mixprune.errors import DeviceError

from ..fields import Field
from .base import AGENT, register_runner
from .local import LocalRunner

SETUP_SCRIPT = Path(__file__).parents[1] / "emulation" / "setup_rootfs.sh"  # shipped in the wheel too


def default_rootfs() -> str:
    return os.environ.get("MIXPRUNE_ARM64_ROOTFS") or str(Path.home() / ".cache" / "mixprune" / "arm64-rootfs")


@register_runner
class EmulatedRunner(LocalRunner):
    kind = "emulated"
    emulated = True
    fields = {
        "kind": Field("str"),
        "rootfs": Field("str", "", help=f"arm64 rootfs built by {SETUP_SCRIPT}; empty: $MIXPRUNE_ARM64_ROOTFS "
                                        "or ~/.cache/mixprune/arm64-rootfs"),
        "qemu": Field("str", "qemu-aarch64-static", help="the qemu user-mode emulator"),
        "python": Field("str", "/usr/bin/python3", help="interpreter inside the rootfs"),
        "run_timeout_s": Field("number", 3600, minimum=1, help="give up on one model after this long"),
    }

    def describe(self) -> str:
        return f"emulated ({self.options['qemu']}, {self.rootfs()})"

    def rootfs(self) -> Path:
        return Path(os.path.expanduser(self.options["rootfs"] or default_rootfs()))

    def command(self, models: list[Path], config_json: str) -> list[str]:
        qemu = shutil.which(self.options["qemu"])
        if qemu is None:
            raise DeviceError(f"{self.options['qemu']} not found; install it with `apt-get install qemu-user-static`")
        rootfs = self.rootfs()
        python = rootfs / self.options["python"].lstrip("/")
        if not python.is_file():
            raise DeviceError(f"no arm64 rootfs with {self.options['python']} at {rootfs}; "
                              f"build it with `bash {SETUP_SCRIPT} {rootfs}`")
        # -L: the guest's absolute paths resolve inside the rootfs first, then on the host,
        # so the agent and the model are read from where they are.
        return [qemu, "-L", str(rootfs), str(python), str(AGENT), *map(str, models), "--json-config", config_json]
