#!/usr/bin/env bash
# What the tests need besides the Python packages: the Node client's onnxruntime-node (and onnxruntime-web for
# the browser page), Debian's Chromium for the page's test (driven by Playwright, no browser download), and
# an aarch64 sysroot run under qemu-user-static (Debian's) for the ARM agreement test. Idempotent; each part that
# cannot be set up here says why, and the tests that need it skip with that reason.
set -uo pipefail
cd "$(dirname "$0")/.."
ARM_ROOT=.cache/arm            # git-ignored; SYSROOT and unpacked aarch64 wheels
ORT_VERSION=$(.venv/bin/python -c "import onnxruntime; print(onnxruntime.__version__)" 2>/dev/null)

# Node: onnxruntime-node bundles its linux-x64/arm64 libraries; its install script would fetch CUDA providers,
# which an offline machine cannot, so it is skipped.
if command -v npm >/dev/null; then
  (cd js && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error) \
    || echo "test-deps: npm ci failed: the Node client tests will skip"
else
  echo "test-deps: no npm: the Node client tests will skip"
fi

# Browser: Debian's chromium for tests/test_web.py (about 46 s to install with apt-get update, 2026-12-01)
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "test-deps: chromium could not be installed: the browser page test will skip"
  else
    echo "test-deps: not root or no apt-get: no chromium, the browser page test will skip"
  fi
fi

# ARM: qemu-user-static from Debian, then an aarch64 CPython extracted from Debian's arm64 packages (never
# installed: that would replace the host's libraries) and the aarch64 numpy/onnxruntime wheels unpacked.
arm_packages="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libexpat1 zlib1g libgcc-s1
  libstdc++6 libssl3 libffi8 libbz2-1.0 liblzma5 libuuid1 libsqlite3-0 libncursesw6 libtinfo6 libreadline8
  libcrypt1"
if [ -x "$ARM_ROOT/sysroot/usr/bin/python3.11" ] && [ -f "$ARM_ROOT/site/.ort-$ORT_VERSION" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "test-deps: not root or no apt-get: the ARM test will skip"; exit 0
fi
if ! command -v qemu-aarch64-static >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null \
    || { echo "test-deps: qemu-user-static could not be installed: the ARM test will skip"; exit 0; }
fi
rm -rf "$ARM_ROOT" && mkdir -p "$ARM_ROOT/debs" "$ARM_ROOT/sysroot/proc" "$ARM_ROOT/site"
dpkg --add-architecture arm64 && apt-get update -qq \
  && (cd "$ARM_ROOT/debs" && apt-get download $(for p in $arm_packages; do echo "$p:arm64"; done) 2>/dev/null) \
  || { echo "test-deps: arm64 packages could not be downloaded: the ARM test will skip"; exit 0; }
for deb in "$ARM_ROOT"/debs/*.deb; do dpkg-deb -x "$deb" "$ARM_ROOT/sysroot"; done
# onnxruntime reads /proc/cpuinfo at import; qemu -L serves this one, which must describe the emulated CPU
cat > "$ARM_ROOT/sysroot/proc/cpuinfo" <<'CPU'
processor	: 0
BogoMIPS	: 48.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

CPU
.venv/bin/pip download -q --only-binary=:all: --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
    --python-version 3.11 --implementation cp -d "$ARM_ROOT/wheels" "onnxruntime==$ORT_VERSION" numpy \
  || { echo "test-deps: aarch64 wheels could not be downloaded: the ARM test will skip"; exit 0; }
for wheel in "$ARM_ROOT"/wheels/*.whl; do .venv/bin/python -m zipfile -e "$wheel" "$ARM_ROOT/site"; done
touch "$ARM_ROOT/site/.ort-$ORT_VERSION"
echo "test-deps: aarch64 sysroot ready in $ARM_ROOT"
