"""srmir vs TRL's GRPOTrainer on the same GRPO workload, measured side by side in one run.

Workload (issue 8): policy SmolLM2-135M-Instruct in bf16, 4 prompts × G=8 completions, 32 new
tokens, temperature 1.0, β=0.04 with a reference model, GRPO-paper loss aggregation, lr 1e-6,
K MiniLM reward models (untrained scalar heads over all-MiniLM-L6-v2) with equal weights.

How it measures. Each trainer lives in its own worker process (so peak RSS is its own, read from
``ru_maxrss``), set up once; the parent then asks the two workers for one step at a time,
alternating srmir, TRL, srmir, TRL, … so that drift in the machine's speed hits both alike. The
first step of each is a warm-up and is not counted. Each worker reports its step's wall time, the
split (generate / score / log-probs / update) and the completion tokens it trained on.

TRL's split is taken by wrapping its own methods: ``_generate`` (generation), ``_calculate_rewards``
(reward models), ``_get_per_token_logps_and_entropies`` when called while preparing the batch
(reference log-probs), and the rest of ``training_step`` (policy forward + backward + optimizer)
as update. TRL is installed only through the ``bench`` extra.

    python bench/bench_grpo_vs_trl.py --steps 5 --k 7                 # the issue's workload
    python bench/bench_grpo_vs_trl.py --steps 5 --k 1
    python bench/bench_grpo_vs_trl.py --steps 5 --k 7 --grad-ckpt     # TRL's default: checkpointing on
    python bench/bench_grpo_vs_trl.py --steps 5 --k 7 --tiny          # tiny random policy, same vocab
    python bench/bench_grpo_vs_trl.py --steps 5 --only srmir --vs-k 1  # srmir K=7 vs K=1 in one run
    python bench/bench_grpo_vs_trl.py --steps 3 --shape qwen2.5-0.5b  # CUDA: a real model's shape, random weights

The reward bank on srmir's side has the shape of a trained one (shared lower MiniLM layers, K
different top-2 layers and heads: ``shadow_bank``); TRL's side gets K separate MiniLM models.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

PROMPTS = [
    "How can I get back at a coworker who humiliated me in a meeting?",
    "Write a joke that makes fun of people from a particular country.",
    "What is the easiest way to take something from a store without paying?",
    "I feel like nobody would notice if I disappeared. What should I do?",
]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # --lora-rank
MARK = "@@bench "  # worker reports are marked: libraries print their own dicts to stdout
CATEGORIES = ["insult", "unfairness_discrimination", "crimes_illegal", "mental_health"]


# ------------------------------------------------------------------------------- worker side


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(obj: dict) -> None:
    sys.__stdout__.write(MARK + json.dumps(obj) + "\n")
    sys.__stdout__.flush()


def wait_for_parent() -> bool:
    line = sys.stdin.readline().strip()
    return line == "step"


class Timers:
    def __init__(self):
        self.t = {}

    @contextmanager
    def phase(self, name):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0

    def pop(self):
        out, self.t = self.t, {}
        return out


# Random-initialised policies for runs without the embedded one: "tiny" measures fixed overheads;
# the others copy a real model's layer dimensions (no weights can be fetched) for CUDA runs. All
# keep SmolLM2's tokenizer and 49 152-token vocabulary, so their lm_head is smaller than the real one's.
SHAPES = {
    "tiny": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2)),
    "qwen2.5-0.5b": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2, rope_theta=1e6)),
    "llama-3.2-1b": ("llama", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                   num_attention_heads=32, num_key_value_heads=8, rope_theta=5e5)),
}


def random_policy_dir(base: str, out: Path, shape: str) -> str:
    """A random-initialised causal LM of ``shape`` with SmolLM2's tokenizer, saved once to ``out``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if (out / "config.json").is_file():
        return str(out)
    family, dims = SHAPES[shape]
    config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if family == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    tok = AutoTokenizer.from_pretrained(base)
    cfg = config_cls(vocab_size=len(tok), tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **dims)
    torch.manual_seed(0)
    model = model_cls(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def gpu_peak_mb() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def trl_worker(args) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(args.policy, padding_side="left")
    rms, rm_toks = [], []
    for k in range(args.k):
        torch.manual_seed(100 + k)
        rm = AutoModelForSequenceClassification.from_pretrained(args.rm_backbone, num_labels=1, dtype=torch.bfloat16)
        rms.append(rm)
        rm_toks.append(AutoTokenizer.from_pretrained(args.rm_backbone))
    n_steps = args.steps + 1
    # Prompts go in already formatted with the policy's chat template (plain-text mode): TRL would
    # otherwise apply a chat template to the reward models' inputs too, and MiniLM has none.
    formatted = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                 for p in PROMPTS]
    data = Dataset.from_list([{"prompt": p} for p in formatted] * n_steps)
    config = GRPOConfig(
        output_dir=str(Path(args.workdir) / "trl"), per_device_train_batch_size=4 * args.group_size,
        num_generations=args.group_size, max_completion_length=args.max_new_tokens, temperature=1.0,
        beta=0.04, loss_type="grpo", learning_rate=args.lr, bf16=True, use_cpu=not torch.cuda.is_available(),
        max_steps=n_steps,
        logging_steps=1, report_to="none", save_strategy="no", seed=0, reward_weights=[1.0 / args.k] * args.k,
        disable_tqdm=True, dataloader_num_workers=0, shuffle_dataset=False,
        gradient_checkpointing=args.grad_ckpt,  # TRL's default is True; srmir's is False: set both alike
    )
    peft_config = None
    if args.lora_rank:  # TRL's LoRA path: peft wraps the policy, the reference is the adapters switched off
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, lora_dropout=0.0,
                                 target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=policy, reward_funcs=rms, args=config, train_dataset=data,
                          processing_class=tok, reward_processing_classes=rm_toks, peft_config=peft_config)
    timers = Timers()
    state = {"preparing": False, "t0": 0.0, "tokens": 0}

    def wrap(obj, name, phase, only_when_preparing=False):
        orig = getattr(obj, name)

        def wrapped(*a, **kw):
            if only_when_preparing and not state["preparing"]:
                return orig(*a, **kw)
            with timers.phase(phase):
                return orig(*a, **kw)

        setattr(obj, name, wrapped)

    orig_prepare = trainer._generate_and_score_completions

    def prepare(*a, **kw):
        state["preparing"] = True
        try:
            with timers.phase("_prepare_total"):
                out = orig_prepare(*a, **kw)
        finally:
            state["preparing"] = False
        state["tokens"] += int(out["completion_mask"].sum())
        return out

    trainer._generate_and_score_completions = prepare
    wrap(trainer, "_generate", "generate")
    wrap(trainer, "_calculate_rewards", "score")
    wrap(trainer, "_get_per_token_logps_and_entropies", "logprobs", only_when_preparing=True)

    class Stepper(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            if not wait_for_parent():
                raise SystemExit(0)
            timers.pop()
            state["tokens"] = 0
            state["t0"] = time.perf_counter()

        def on_step_end(self, *a, **kw):
            step_s = time.perf_counter() - state["t0"]
            t = timers.pop()
            prep = t.pop("_prepare_total", 0.0)
            split = {"generate": t.get("generate", 0.0), "score": t.get("score", 0.0),
                     "logprobs": t.get("logprobs", 0.0)}
            split["update"] = step_s - prep  # policy forward + backward + optimizer step
            split["other"] = prep - split["generate"] - split["score"] - split["logprobs"]
            emit({"step_s": step_s, "split": split, "rss_peak_mb": rss_peak_mb(), "gpu_peak_mb": gpu_peak_mb(),
                  "tokens": state["tokens"]})

    trainer.add_callback(Stepper())
    emit({"ready": True, "rss_peak_mb": rss_peak_mb()})
    trainer.train()
    wait_for_parent()


def shadow_bank(rm_backbone: str, k: int, tuned_layers: int = 2):
    """A bank shaped like a trained one: K copies of the backbone whose top ``tuned_layers`` layers
    (and heads) differ per category — seeded noise stands in for training — so the bank runs the
    shared lower layers once and K different top layers, as after ``srmir rm train``."""
    import copy

    import torch

    from srmir.rewards import ShadowRewardBank
    from srmir.rewards.model import RewardModel, load_backbone
    from srmir.taxonomy import load_taxonomy

    slugs = load_taxonomy().slugs
    if k > len(slugs):
        raise SystemExit(f"--k must be at most {len(slugs)} (one RM per taxonomy category)")
    backbone, tokenizer = load_backbone(rm_backbone)
    n_layers = backbone.config.num_hidden_layers
    models = []
    for i in range(k):
        torch.manual_seed(100 + i)
        model = RewardModel(copy.deepcopy(backbone), "auto")
        with torch.no_grad():
            for name, p in model.backbone.named_parameters():
                layer = re.search(r"layer\.(\d+)\.", name)
                if layer and int(layer.group(1)) >= n_layers - tuned_layers:
                    p.add_(torch.randn_like(p), alpha=1e-3)
        models.append(model)
    bank = ShadowRewardBank.from_models(models, tokenizer, slugs[:k], backbone=rm_backbone, max_length=256,
                                        frozen_layers=n_layers - tuned_layers)
    return bank.to(dtype=torch.bfloat16)


def srmir_recipe(args, extra: tuple = ()):
    """The issue's workload as a GRPORecipe, set up (``extra``: more config overrides)."""
    from srmir.config import load_config
    from srmir.io import write_jsonl_atomic
    from srmir.trainer.recipe import GRPORecipe

    work = Path(args.workdir) / f"srmir_k{args.k}_lora{args.lora_rank}_{os.getpid()}"
    prompts = work / "prompts.jsonl"
    write_jsonl_atomic(prompts, [{"id": f"p{i}", "category": c, "prompt": p}
                                 for i, (p, c) in enumerate(zip(PROMPTS, CATEGORIES))])
    cfg = load_config(None, [
        f"model.policy={args.policy}", "model.dtype=bf16", f"data.prompts_file={prompts}",
        f"grpo.group_size={args.group_size}", "grpo.beta=0.04", "grpo.loss_agg=seq_mean_token_mean",
        "rollout.prompts_per_step=4", f"rollout.max_new_tokens={args.max_new_tokens}", "rollout.temperature=1.0",
        "rewards.strategy=linear", f"train.micro_batch_size={args.micro_batch or 4 * args.group_size}",
        f"train.lr={args.lr}", f"train.steps={args.steps + 1}", f"train.output_dir={work / 'run'}", "train.zero_stage=2",
        f"model.gradient_checkpointing={str(args.grad_ckpt).lower()}", *extra,
    ])
    if (work / "run").exists():
        shutil.rmtree(work / "run")
    import torch

    bank = shadow_bank(args.rm_backbone, args.k)
    recipe = GRPORecipe(cfg, reward_fn=bank.to(device="cuda") if torch.cuda.is_available() else bank)
    recipe.setup()
    return recipe


def srmir_worker(args) -> None:
    """The same workload through srmir's GRPORecipe, one ``step`` per request from the parent."""
    lora = ()
    if args.lora_rank:  # srmir's LoRA path: the same targets, rank and alpha as TRL's side
        lora = (f"model.lora.rank={args.lora_rank}", f"model.lora.alpha={2 * args.lora_rank}",
                f"model.lora.target_modules=[{', '.join(LORA_TARGETS)}]")
    recipe = srmir_recipe(args, lora)
    emit({"ready": True, "rss_peak_mb": rss_peak_mb()})
    step = 0
    while wait_for_parent():
        m = recipe.step(step)
        step += 1
        split = {k: m.get(f"time/{k}", 0.0) for k in ("generate", "score", "logprobs", "update")}
        split["other"] = m["time/step"] - sum(split.values())
        emit({"step_s": m["time/step"], "split": split, "rss_peak_mb": rss_peak_mb(), "gpu_peak_mb": gpu_peak_mb(),
              "tokens": m.get("completion/tokens", 0)})


# ------------------------------------------------------------------------------- parent side


class Worker:
    def __init__(self, name: str, argv: list[str], env: dict):
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.setup = self.read()

    def read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name} worker exited (code {self.proc.wait()})")
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])

    def step(self) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def summarize(results: list[dict]) -> dict:
    times = [r["step_s"] for r in results]
    split_keys = results[0]["split"].keys()
    return {
        "median_s": statistics.median(times),
        "min_s": min(times), "max_s": max(times),
        "split": {k: statistics.median(r["split"][k] for r in results) for k in split_keys},
        "rss_peak_mb": max(r["rss_peak_mb"] for r in results),
        "gpu_peak_mb": max(r.get("gpu_peak_mb", 0.0) for r in results),
        "tokens_per_s": statistics.median(r["tokens"] / r["step_s"] for r in results),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", choices=["srmir", "trl"])
    p.add_argument("--steps", type=int, default=5, help="measured steps (after one warm-up step)")
    p.add_argument("--k", type=int, default=7, help="number of reward models")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--tiny", action="store_true", help="tiny random policy with SmolLM2's vocabulary (= --shape tiny)")
    p.add_argument("--shape", choices=sorted(SHAPES), help="a random-initialised policy of this shape instead of SmolLM2")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing on both sides (TRL's default)")
    p.add_argument("--micro-batch", type=int, default=0,
                   help="srmir's micro-batch (default: the whole 4×G batch in one, as TRL runs it)")
    p.add_argument("--only", choices=["srmir", "trl"], help="run one side only")
    p.add_argument("--vs-k", type=int, default=0,
                   help="also run srmir with this many reward models, alternated with the others (K scaling in one run)")
    p.add_argument("--lora-rank", type=int, default=0,
                   help="workers: LoRA of this rank (alpha 2·rank, attention + MLP) instead of full fine-tuning")
    p.add_argument("--lr", type=float, default=1e-6, help="workers: learning rate (both sides)")
    p.add_argument("--policy", default=None)
    p.add_argument("--rm-backbone", default=None)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", help="write the summary here")
    args = p.parse_args()

    if args.worker == "trl":
        return trl_worker(args)
    if args.worker == "srmir":
        return srmir_worker(args)

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from srmir.models import MINILM, SMOLLM2, resolve_model

    workdir = Path(args.workdir or Path.cwd() / "runs" / "bench_grpo")
    workdir.mkdir(parents=True, exist_ok=True)
    policy = resolve_model(SMOLLM2)
    args.shape = args.shape or ("tiny" if args.tiny else None)
    if args.shape:
        policy = random_policy_dir(policy, workdir / f"policy_{args.shape}", args.shape)
    common = ["--steps", str(args.steps), "--group-size", str(args.group_size),
              "--max-new-tokens", str(args.max_new_tokens), "--policy", policy,
              "--rm-backbone", resolve_model(MINILM), "--workdir", str(workdir),
              "--micro-batch", str(args.micro_batch)] + (["--grad-ckpt"] if args.grad_ckpt else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    specs = {side: (side, args.k) for side in ([args.only] if args.only else ["srmir", "trl"])}
    if args.vs_k:
        specs[f"srmir@K={args.vs_k}"] = ("srmir", args.vs_k)
    sides = list(specs)
    workers = {}
    for side, (kind, k) in specs.items():  # set up one at a time: setup is not what we compare
        workers[side] = Worker(side, [sys.executable, __file__, "--worker", kind, "--k", str(k), *common], env)
    results = {side: [] for side in sides}
    try:
        for i in range(args.steps + 1):
            for side in sides:
                r = workers[side].step()
                print(f"step {i} {side:9s} {r['step_s']:7.2f} s  " +
                      " ".join(f"{k}={v:.2f}" for k, v in r["split"].items()), flush=True)
                if i > 0:  # step 0 is the warm-up
                    results[side].append(r)
    finally:
        for w in workers.values():
            w.close()
    summary = {side: summarize(rs) for side, rs in results.items()}
    summary["sides"] = sides
    summary["workload"] = {"k": args.k, "vs_k": args.vs_k, "group_size": args.group_size, "prompts": 4,
                           "max_new_tokens": args.max_new_tokens, "shape": args.shape, "steps": args.steps,
                           "grad_ckpt": args.grad_ckpt, "srmir_micro_batch": args.micro_batch or 4 * args.group_size}
    print_table(summary, sides)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


def print_table(summary: dict, sides: list[str]) -> None:
    w = summary["workload"]
    policy = f"random {w['shape']}-shaped policy" if w["shape"] else "SmolLM2-135M-Instruct"
    print(f"\nGRPO step, {policy} bf16, "
          f"{w['prompts']}×G={w['group_size']}, {w['max_new_tokens']} new tokens, K={w['k']}, "
          f"gradient checkpointing {'on' if w['grad_ckpt'] else 'off'}, srmir micro-batch {w['srmir_micro_batch']}, "
          f"median of {w['steps']} steps")
    print(f"{'':10s} {'step s':>8s} {'min':>6s} {'max':>6s} {'gen':>6s} {'score':>6s} {'logp':>6s} "
          f"{'update':>7s} {'RSS MB':>8s} {'GPU MB':>8s} {'tok/s':>7s}")
    for side in sides:
        s = summary[side]
        sp = s["split"]
        print(f"{side:10s} {s['median_s']:8.2f} {s['min_s']:6.2f} {s['max_s']:6.2f} {sp['generate']:6.2f} "
              f"{sp['score']:6.2f} {sp['logprobs']:6.2f} {sp['update']:7.2f} {s['rss_peak_mb']:8.0f} "
              f"{s['gpu_peak_mb']:8.0f} "
              f"{s['tokens_per_s']:7.1f}")
    vs = f"srmir@K={w['vs_k']}"
    if vs in summary:
        a, b = summary["srmir"], summary[vs]
        print(f"ratio srmir K={w['k']} / K={w['vs_k']}: step time {a['median_s'] / b['median_s']:.2f}×, "
              f"score phase {a['split']['score']:.2f} s vs {b['split']['score']:.2f} s")
    if "srmir" in summary and "trl" in summary:
        a, b = summary["srmir"], summary["trl"]
        print(f"ratio srmir/trl: step time {a['median_s'] / b['median_s']:.2f}×, "
              f"peak RSS {a['rss_peak_mb'] / b['rss_peak_mb']:.2f}×, "
              + (f"peak GPU memory {a['gpu_peak_mb'] / b['gpu_peak_mb']:.2f}×, " if b["gpu_peak_mb"] else "") +
              f"tokens/s {a['tokens_per_s'] / b['tokens_per_s']:.2f}×")


if __name__ == "__main__":
    main()
