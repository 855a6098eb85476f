#!/usr/bin/env bash
# GPU check of tfjs-backend-webgpu (Dawn) against wasm: max relative error (<= 1e-4) and tokens/s on the products of
# moe's forward pass. Runs offline in under 5 minutes.
#   in a checkout:      bench/gpu/bundle.sh && bench/gpu.sh out/moe-gpu-check.tar
#   on the GPU machine: tar xf moe-gpu-check.tar && moe-gpu-check/gpu.sh          (extra args go to check.mjs, e.g. --quick)
set -uo pipefail
if [ "${1:-}" != "" ] && [ -f "$1" ] && [[ "$1" == *.tar ]]; then
  T=$(mktemp -d); tar -C "$T" -xf "$1"; shift; exec "$T/moe-gpu-check/gpu.sh" "$@"
fi
D=$(cd "$(dirname "$0")" && pwd)
[ -f "$D/check.mjs" ] || { echo "gpu.sh: run it from the extracted bundle (bench/gpu/bundle.sh builds it)" >&2; exit 1; }
W=$(mktemp -d)
echo "== machine"; uname -srm; (command -v nvidia-smi >/dev/null && nvidia-smi -L) || echo "no nvidia-smi"
# Node: the machine's when >= 20, else the bundled one
NODE=$(command -v node || true)
if [ -z "$NODE" ] || [ "$("$NODE" -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then xz -dc "$D/node.xz" > "$W/node" && chmod +x "$W/node" && NODE="$W/node"; fi
echo "node: $NODE $("$NODE" --version)"
# Vulkan loader: the machine's, else the bundled libvulkan1
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1'; then
  for deb in "$D"/deb/*.deb; do [ -f "$deb" ] && { dpkg-deb -x "$deb" "$W/vk" 2>/dev/null || (cd "$W" && ar x "$deb" && mkdir -p vk && tar -C vk -xf data.tar.*); }; done
  export LD_LIBRARY_PATH="$W/vk/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
  echo "vulkan loader: bundled"
fi
# NVIDIA's Vulkan ICD: containers often carry the driver's libGLX_nvidia without its ICD json
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
  LIB=$(ldconfig -p 2>/dev/null | awk '/libGLX_nvidia.so.0/ {print $NF; exit}')
  if [ -n "$LIB" ]; then
    printf '{"file_format_version":"1.0.0","ICD":{"library_path":"%s","api_version":"1.3.0"}}\n' "$LIB" > "$W/nvidia_icd.json"
    export VK_ICD_FILENAMES="$W/nvidia_icd.json"; echo "vulkan ICD: written for $LIB"
  else echo "vulkan ICD: no NVIDIA ICD json and no libGLX_nvidia.so.0 (Dawn will likely find no adapter)"; fi
fi
echo "== check"
cd "$D" && timeout 280 "$NODE" check.mjs "$@"
RC=$?
rm -rf "$W"
exit $RC
