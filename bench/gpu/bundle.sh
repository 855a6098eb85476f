#!/usr/bin/env bash
# Build the GPU check bundle: one tar (<= 64 MiB) that runs offline on an x86-64 Linux GPU machine.
#   bench/gpu/bundle.sh [OUT.tar]      (default out/moe-gpu-check.tar; needs npm ci with the optional webgpu packages)
# Contents: check.mjs (esbuild bundle of bench/gpu/check.ts with tfjs-core, -backend-wasm, -backend-webgpu), the
# wasm backend's .wasm, the webgpu package's loader and linux-x64 dawn.node, the Vulkan loader (libvulkan1 .deb,
# fetched with apt-get download), node itself (xz; used when the machine has no Node >= 20), and bench/gpu.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT_TAR=${1:-out/moe-gpu-check.tar}
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
D="$STAGE/moe-gpu-check"
mkdir -p "$D/node_modules/webgpu/dist/linux-x64" "$D/deb"

[ -f node_modules/webgpu/dist/linux-x64/dawn.node ] || { echo "bundle: node_modules/webgpu is missing (npm ci installs the optional dependencies)" >&2; exit 1; }
# a module that imports 'webgpu' finds it in node_modules next to it; Dawn stays outside the bundle (a .node addon)
node_modules/.bin/esbuild bench/gpu/check.ts --bundle --platform=node --format=esm --target=node20 \
  --external:webgpu --outfile="$D/check.mjs" --log-level=warning \
  --banner:js="import { createRequire as __cr } from 'module'; const require = __cr(import.meta.url);"
cp node_modules/@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm*.wasm "$D/"
cp node_modules/webgpu/index.js node_modules/webgpu/package.json node_modules/webgpu/LICENSE.md "$D/node_modules/webgpu/"
cp node_modules/webgpu/dist/linux-x64/dawn.node "$D/node_modules/webgpu/dist/linux-x64/"
xz -T0 -6 -c "$(readlink -f "$(command -v node)")" > "$D/node.xz"
(cd "$D/deb" && apt-get download libvulkan1 >/dev/null 2>&1) || echo "bundle: apt-get download libvulkan1 failed; the target must have its own Vulkan loader" >&2
cp bench/gpu.sh "$D/gpu.sh"
mkdir -p "$(dirname "$OUT_TAR")"
tar -C "$STAGE" -cf "$OUT_TAR" moe-gpu-check
BYTES=$(stat -c %s "$OUT_TAR")
echo "bundle: $OUT_TAR $((BYTES / 1048576)) MiB ($BYTES bytes)"
ls -la "$D" "$D/deb" | sed 's/^/  /'
[ "$BYTES" -le $((64 * 1048576)) ] || { echo "bundle: over 64 MiB" >&2; exit 1; }
