#!/usr/bin/env bash
# Build the arm64 Debian root filesystem that mixprune's `emulated` runner uses.
#
#   devices/emulation/setup_rootfs.sh [ROOTFS]
#
# ROOTFS defaults to $MIXPRUNE_ARM64_ROOTFS, else ~/.cache/mixprune/arm64-rootfs (the
# runner's default too). The result holds Debian's python3 for arm64 plus aarch64 wheels of
# numpy and onnxruntime, nothing else: exactly what a Raspberry Pi needs to run the agent.
# The runner then starts `qemu-aarch64-static -L ROOTFS ROOTFS/usr/bin/python3 agent.py ...`.
#
# How (no arm64 code runs during the build, so no binfmt_misc and no chroot are needed):
#   1. `debootstrap --foreign --variant=minbase --include=python3,...` downloads the arm64
#      .debs of a minimal Debian and unpacks the essential ones;
#   2. the remaining downloaded .debs (python3 and its libraries) are unpacked with dpkg-deb
#      (maintainer scripts are not needed to run python);
#   3. `pip install --target ... --platform manylinux_2_28_aarch64 --only-binary=:all:`
#      puts the aarch64 numpy and onnxruntime wheels into the rootfs's dist-packages;
#   4. a smoke test imports both under qemu-aarch64-static.
#
# Needs: root (debootstrap), debootstrap, dpkg-deb, qemu-user-static, a host python with pip,
# network access to the Debian mirror and PyPI. Cost here: ~45 MB of .debs + ~35 MB of wheels
# downloaded, 35-45 s, ~310 MB on disk. Re-running with the same settings and the same version
# of this script is a no-op (a stamp file records both), so CI can cache ROOTFS; the build goes
# to ROOTFS.partial and is renamed into place only when the smoke test passes, so an
# interrupted build never leaves a broken rootfs.
#
# Settings (environment): SUITE (bookworm), MIRROR (http://deb.debian.org/debian),
# ONNXRUNTIME_VERSION (1.32.0), NUMPY_VERSION (2.4.6), HOST_PYTHON (python3).
set -euo pipefail

ROOTFS=${1:-${MIXPRUNE_ARM64_ROOTFS:-$HOME/.cache/mixprune/arm64-rootfs}}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ONNXRUNTIME_VERSION=${ONNXRUNTIME_VERSION:-1.32.0}
NUMPY_VERSION=${NUMPY_VERSION:-2.4.6}
HOST_PYTHON=${HOST_PYTHON:-python3}
QEMU=${QEMU:-qemu-aarch64-static}

script_hash=$(sha256sum "$0" | cut -c1-12)
stamp="suite=$SUITE mirror=$MIRROR onnxruntime=$ONNXRUNTIME_VERSION numpy=$NUMPY_VERSION script=$script_hash"
if [[ -f "$ROOTFS/.mixprune-rootfs" && "$(cat "$ROOTFS/.mixprune-rootfs")" == "$stamp" ]]; then
    echo "arm64 rootfs already built at $ROOTFS ($stamp)"
    exit 0
fi
for tool in debootstrap dpkg-deb "$QEMU" "$HOST_PYTHON"; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install debootstrap qemu-user-static)" >&2; exit 2; }
done

work="$ROOTFS.partial"
rm -rf "$work"
mkdir -p "$(dirname "$ROOTFS")"

echo "[1/4] debootstrap (arm64, $SUITE, first stage only)"
for attempt in 1 2; do  # a second try rides out a flaky mirror
    rm -rf "$work"
    debootstrap --arch=arm64 --foreign --variant=minbase \
        --include=python3,libstdc++6,libgcc-s1 "$SUITE" "$work" "$MIRROR" >"$work.log" 2>&1 && break
    [[ $attempt == 2 ]] && { tail -20 "$work.log" >&2; echo "error: debootstrap failed (log: $work.log)" >&2; exit 2; }
    echo "debootstrap failed, retrying" >&2
done

echo "[2/4] unpacking python3 and its libraries"
for deb in "$work"/var/cache/apt/archives/*.deb; do
    dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$work"
done
rm -rf "$work"/var/cache/apt/archives/*.deb "$work"/usr/share/doc "$work"/usr/share/man "$work"/usr/share/locale

# qemu-user shows the guest the host's /proc/cpuinfo (x86 here) unless the rootfs has its
# own; onnxruntime's cpuinfo library then finds no ARM cores and crashes on import. With -L,
# qemu looks up guest paths in the rootfs first, so an ARM /proc/cpuinfo there fixes it
# (all other /proc and /sys files still come from the host).
rm -rf "$work/proc"
mkdir -p "$work/proc"
for i in 0 1 2 3; do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i"
done >"$work/proc/cpuinfo"   # 0xd08: Cortex-A72, the Raspberry Pi 4 core

py=$(cd "$work/usr/bin" && ls python3.[0-9]* | grep -E '^python3\.[0-9]+$' | head -1)
pyver=${py#python}
echo "[3/4] aarch64 wheels for $py: numpy==$NUMPY_VERSION onnxruntime==$ONNXRUNTIME_VERSION"
"$HOST_PYTHON" -m pip install -q --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
    --python-version "$pyver" --implementation cp --target "$work/usr/lib/python3/dist-packages" \
    "numpy==$NUMPY_VERSION" "onnxruntime==$ONNXRUNTIME_VERSION"

echo "[4/4] smoke test under $QEMU"
"$QEMU" -L "$work" "$work/usr/bin/python3" -c \
    "import platform, numpy, onnxruntime; print(platform.machine(), 'python', platform.python_version(), 'numpy', numpy.__version__, 'onnxruntime', onnxruntime.__version__)"

echo "$stamp" >"$work/.mixprune-rootfs"
rm -rf "$ROOTFS" "$work.log"
mv "$work" "$ROOTFS"
echo "arm64 rootfs ready at $ROOTFS ($(du -sh "$ROOTFS" | cut -f1))"
