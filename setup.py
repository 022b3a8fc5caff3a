"""srmir: GRPO safety alignment with shadow reward models, under DeepSpeed."""
from setuptools import find_packages, setup

setup(
    name="srmir",
    version="0.1.0",
    description="GRPO safety alignment with per-category shadow reward models, under DeepSpeed ZeRO",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["srmir", "srmir.*"]) + ["srmir_kernels"],
    package_dir={"srmir_kernels": "kernels"},
    package_data={"srmir": ["assets/*", "assets/**/*"]},
    include_package_data=True,
    py_modules=[],
    # torch is a range so an existing CUDA build is kept. triton is deliberately absent: CUDA
    # builds of torch bring the triton they were built with, and pinning one here would replace it.
    install_requires=[
        "torch>=2.4,<3",
        "transformers>=4.46",
        "deepspeed>=0.15",
        "safetensors>=0.4",
        "numpy>=1.24",
        "pyyaml>=6",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={
        # dev: the optional extras too, so the tests of LoRA and of every tracker run in CI
        "dev": ["pytest>=7", "triton>=3.0", "gguf>=0.10", "accelerate>=0.30", "peft>=0.13,<1",
                "tensorboard>=2.14,<3", "wandb>=0.17,<1", "mlflow-skinny>=2.10,<4"],
        "gpu": ["flash-attn>=2.5"],
        "demo": ["gguf>=0.10", "accelerate>=0.30"],
        "lora": ["peft>=0.13,<1"],  # model.lora, rewards.lora
        "tensorboard": ["tensorboard>=2.14,<3"],  # train.report_to: the trackers, one extra each
        "wandb": ["wandb>=0.17,<1"],
        "mlflow": ["mlflow-skinny>=2.10,<4"],  # the tracking client; a full mlflow install provides it too
        "bench": ["trl>=0.20", "psutil", "peft>=0.13,<1"],
    },
    entry_points={"console_scripts": ["srmir=srmir.cli:main"]},
)
