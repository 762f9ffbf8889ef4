# Source me: keeps every tool's files inside the project's git-ignored .cache/ dir and sets
# the thread / accelerator settings that the CPU stack needs (see README "Environment").
_RR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export RAY_RLHF_ROOT="$_RR_ROOT"
export RAY_RLHF_CACHE="${RAY_RLHF_CACHE:-$_RR_ROOT/.cache}"
mkdir -p "$RAY_RLHF_CACHE/tmp" "$RAY_RLHF_CACHE/ray" "$RAY_RLHF_CACHE/hf"
export TMPDIR="$RAY_RLHF_CACHE/tmp"
export RAY_RLHF_RAY_TMP="$RAY_RLHF_CACHE/ray"
export VLLM_CACHE_ROOT="$RAY_RLHF_CACHE/vllm"
export TORCH_EXTENSIONS_DIR="$RAY_RLHF_CACHE/torch_extensions"
export TRITON_CACHE_DIR="$RAY_RLHF_CACHE/triton"
export HF_HOME="$RAY_RLHF_CACHE/hf"
export HF_DATASETS_CACHE="$RAY_RLHF_CACHE/hf/datasets"
export MPLCONFIGDIR="$RAY_RLHF_CACHE/matplotlib"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM=false
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export VLLM_ENABLE_V1_MULTIPROCESSING="${VLLM_ENABLE_V1_MULTIPROCESSING:-0}"
export RAY_USAGE_STATS_ENABLED=0
export PYTHONDONTWRITEBYTECODE=1
