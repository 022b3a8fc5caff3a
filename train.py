"""GRPO training entry point — what ``python``, ``deepspeed`` and ``torchrun`` launch.

    python train.py --config configs/demo.yaml [key.sub=value ...]
    deepspeed --num_gpus 8 train.py --config CFG --deepspeed ds_configs/zero3.json
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:PORT train.py --config CFG

The loop lives in srmir/trainer/recipe.py (setup → train → cleanup).
"""
from srmir.trainer import main

if __name__ == "__main__":
    raise SystemExit(main())
