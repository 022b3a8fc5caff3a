"""Bad input and broken artifacts fail cleanly (issue 16): every case runs the real command line in its
own process and must exit 2 with exactly one ``srmir: error: <where>: <what>`` line on stderr, no
traceback, and no half-written output. Plus: ``--resume auto`` skips a damaged newest checkpoint and
ends bit-identical to an undamaged run from the previous one; a full disk and a read-only folder
during training are one line each; secrets never reach a file.

Speed: a command is a process of its own, but forked from a warm server that imported torch,
transformers, DeepSpeed and srmir once (``python tests/test_bad_inputs.py --serve``), so ~50 commands
cost seconds, not minutes. The child runs exactly what the ``srmir`` script and ``train.py`` run,
with its own stdout/stderr file descriptors; an uncaught exception prints its traceback and exits
1, as the interpreter would. A few cases also run as a fresh ``exec`` to show nothing differs.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
_PROGRESS = re.compile(r"^\s*grpo:\s+\d+%\|")
PYTHON = sys.executable


# ==================================================================================== the runner


def _serve() -> None:
    """Read one JSON request a line, fork a child that runs the command, answer its exit status."""
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # what the imports print must not corrupt the replies
    import deepspeed  # noqa: F401 - the expensive imports, paid once
    import transformers  # noqa: F401
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    from transformers.models.bert import modeling_bert  # noqa: F401
    from transformers.models.llama import modeling_llama  # noqa: F401

    import srmir.cli
    import srmir.eval.runner  # noqa: F401
    import srmir.rewards.bank  # noqa: F401
    import srmir.trainer
    import srmir.trainer.recipe  # noqa: F401

    try:  # DeepSpeed JIT-compiles a shared-memory op for CPU process groups: once here, not per command
        from deepspeed.comm.torch import build_shm_op

        build_shm_op()
    except Exception:  # noqa: BLE001 - the children build it themselves then
        pass
    print(json.dumps({"ready": True}), file=reply, flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(req, srmir.cli.main, srmir.trainer.main)
        deadline, status = time.monotonic() + req["timeout"], None
        while status is None:
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(code)
            elif time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = "timeout"
            else:
                time.sleep(0.02)
        print(json.dumps({"rc": status}), file=reply, flush=True)


def _child(req: dict, srmir_main, train_main) -> None:
    rc = 1
    try:
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        sys.argv = [req["entry"], *req["argv"]]
        try:
            rc = (train_main if req["entry"] == "train.py" else srmir_main)(req["argv"])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
            traceback.print_exc()
            rc = 1
        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc if isinstance(rc, int) else 1)


@dataclass
class Result:
    rc: object
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        """stderr's lines without the training progress bar (tqdm draws it there, as it should)."""
        return [line for line in self.err.splitlines() if line.strip() and not _PROGRESS.match(line)]


class CLI:
    """``run(argv)``: the ``srmir`` command (``entry="train.py"``: the trainer's script) in a forked
    child of the warm server; ``fresh=True`` execs a new interpreter instead."""

    def __init__(self, workdir: Path, env: dict):
        self.workdir, self.env, self.n = workdir, env, 0
        self.log = open(workdir / "server.log", "w")
        self.proc = subprocess.Popen([PYTHON, __file__, "--serve"], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        assert json.loads(self._readline(300)) == {"ready": True}

    def _readline(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError("the CLI server did not answer")
        return self.proc.stdout.readline()

    def run(self, argv: list[str], entry: str = "srmir", env: Optional[dict] = None, timeout: int = 180,
            fresh: bool = False) -> Result:
        self.n += 1
        out, err = self.workdir / f"{self.n}.out", self.workdir / f"{self.n}.err"
        argv = [str(a) for a in argv]
        if fresh:
            cmd = [PYTHON, str(ROOT / "train.py")] if entry == "train.py" else [PYTHON, "-m", "srmir"]
            proc = subprocess.run(cmd + argv, cwd=ROOT, env={**self.env, **(env or {})}, capture_output=True,
                                  text=True, timeout=timeout)
            return Result(proc.returncode, proc.stdout, proc.stderr)
        req = {"argv": argv, "entry": entry, "env": env or {}, "cwd": str(ROOT), "timeout": timeout,
               "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        rc = json.loads(self._readline(timeout + 30))["rc"]
        return Result(rc, out.read_text(errors="replace"), err.read_text(errors="replace"))

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
    sys.exit(0)


# ======================================================================================= fixtures

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from test_trainer_common import (CATEGORIES, WORDS, make_bank, make_policy, make_tokenizer, subprocess_env,  # noqa: E402
                                 tiny_overrides, write_prompts, write_taxonomy)


def make_other_policy(folder: Path) -> Path:
    """A tiny Llama of another size (hidden 48, 3 layers): 'another model' for policies and checkpoints."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(folder)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(3)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def make_other_bank(folder: Path) -> Path:
    """A bank of another backbone size (hidden 24): 'another model's weights' for banks."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from srmir.rewards.bank import ShadowRewardBank

    backbone = folder / "bert24"
    backbone.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(backbone)
    torch.manual_seed(2)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=128)).save_pretrained(backbone)
    ShadowRewardBank.from_backbone(str(backbone), CATEGORIES, max_length=64).save_pretrained(folder / "bank")
    return folder / "bank"


@dataclass
class World:
    root: Path
    cli: CLI
    files: dict
    config: Path
    bank: Path
    other_bank: Path
    other_policy: Path
    run: Path  # a finished 2-step run: checkpoints step-1 and step-2, metrics, policy/
    other_run: Path  # a 1-step run of other_policy: its checkpoint is "of another model"
    results: dict = field(default_factory=dict)

    def train_argv(self, out: Path, **extra) -> list[str]:
        values = {"rewards.dir": self.bank, **{k.replace("__", "."): v for k, v in extra.items()}}
        return ["--config", self.config, *tiny_overrides(self.files, out, **values)]

    def case_dir(self, name: str) -> Path:
        d = self.root / "cases" / name
        d.mkdir(parents=True, exist_ok=True)
        return d


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    files = {"policy": make_policy(root / "policy"), "taxonomy": write_taxonomy(root / "taxonomy.yaml"),
             "prompts": write_prompts(root / "prompts.jsonl")}
    config = root / "empty.yaml"
    config.write_text("{}\n")
    (root / "server").mkdir()
    # TORCH_EXTENSIONS_DIR: DeepSpeed's JIT-built op goes beside this virtualenv; the shared default
    # (~/.cache/torch_extensions) is rebuilt, and briefly missing, whenever another checkout builds it
    env = {**subprocess_env(), "SRMIR_CACHE": os.environ.get("SRMIR_CACHE", str(root / "cache")),
           "MPLBACKEND": "Agg", "TRANSFORMERS_OFFLINE": "1", "TRITON_INTERPRET": "1",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions")),
           "CUDA_VISIBLE_DEVICES": ""}  # error handling is what is tested, on CPU: a CUDA context does not survive fork
    cli = CLI(root / "server", env)
    w = World(root, cli, files, config, make_bank(root), make_other_bank(root / "other"),
              make_other_policy(root / "other_policy"), root / "run", root / "other_run")
    # the base run: overrides on both sides of --resume (issue 16: srmir used to stop at the second one),
    # and a temporary export folder left by a killed process, which the export removes
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = w.run / f".policy.tmp-{dead.pid}"
    (leftover / "x").mkdir(parents=True)
    argv = w.train_argv(w.run, train__steps=2, train__save_every=1, train__keep_checkpoints=0)
    r = cli.run(["train", *argv[:6], "--resume", "auto", *argv[6:]])
    assert r.rc == 0, r.err[-3000:]
    assert not leftover.exists() and (w.run / "policy" / "config.json").is_file()
    r = cli.run(w.train_argv(w.other_run, model__policy=w.other_policy, train__steps=1), entry="train.py")
    assert r.rc == 0, r.err[-3000:]
    yield w
    cli.close()
    report = os.environ.get("SRMIR_BAD_INPUTS_REPORT")  # a table of what each case printed, for reviews
    if report:
        with open(report, "w") as f:
            for name, r in sorted(w.results.items()):
                tb = "Traceback" in r.out + r.err
                f.write(f"{name}\t{r.rc}\t{'TRACEBACK' if tb else ''}\t{(r.err_lines or [''])[-1]}\n")


# ================================================================================ damage helpers


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) * 3 // 4] ^= 0xFF
    path.write_bytes(bytes(data))


def legacy(bank: Path) -> Path:
    """A bank as saved before manifests existed: the structural checks alone must catch the damage."""
    (bank / "manifest.json").unlink()
    return bank


def edit_json(path: Path, fn: Callable[[dict], None]) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


# ======================================================================================= the cases


@dataclass
class Case:
    """``setup(world, dir)`` damages a copy of an artifact and returns (argv, entry); the one stderr
    line must contain ``where`` and ``what``; ``stream`` names where the file:line of a multi-problem
    report goes (``data validate`` lists problems on stdout, the summary line on stderr)."""

    setup: Callable
    where: str  # format string: {d} the case folder, {w} the world root
    what: str
    rc: int = 2
    absent: tuple = ("out/policy", "out/checkpoints/step-00000001", "out.json", "eval/results.json")
    stream: str = "err"
    fresh: bool = False


def _train(fn):
    """A train case: ``fn(world, dir)`` returns extra overrides (or a full argv list)."""
    def setup(w: World, d: Path):
        extra = fn(w, d)
        argv = extra if isinstance(extra, list) else w.train_argv(d / "out", **extra)
        return ["train", *argv], "srmir"
    return setup


def _train_py(fn):
    def setup(w: World, d: Path):
        return w.train_argv(d / "out", **fn(w, d)), "train.py"
    return setup


def _rm_eval(fn):
    def setup(w: World, d: Path):
        bank, data = fn(w, d)
        return ["rm", "eval", "--rm", bank, "--data", data or _cod_file(d), "--json", d / "out.json"], "srmir"
    return setup


def _eval(fn):
    def setup(w: World, d: Path):
        policy, bank = fn(w, d)
        return ["eval", "--policy", policy, "--out", d / "eval", "--rm", bank, "--config", w.config,
                f"data.taxonomy={w.files['taxonomy']}", f"eval.harmful_file={w.files['prompts']}", "eval.limit=2",
                "eval.max_new_tokens=4", "model.dtype=fp32", "--no-plots"], "srmir"
    return setup


def _cod_file(d: Path) -> Path:
    recs = [{"id": f"{c}-{i}", "category": c, "prompt": f"tell me about the {c} {i}",
             "chosen": "please be kind and calm", "rejected": "you are an idiot"} for c in CATEGORIES for i in range(2)]
    path = d / "cod.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _data_file(d: Path, raw: bytes, name: str = "data.jsonl") -> Path:
    good = {"id": "ok", "category": "insult", "prompt": "tell me", "chosen": "be kind", "rejected": "idiot"}
    path = d / name
    path.write_bytes(json.dumps(good).encode() + b"\n" + raw + b"\n")  # the bad record is on line 2
    return path


def _policy(fn):
    """Damage a copy of the tiny policy with ``fn(folder)``; returns the folder."""
    def make(w: World, d: Path) -> Path:
        p = copy(w.files["policy"], d / "policy")
        fn(p)
        return p
    return make


def _bank(fn, is_legacy=False, other=False):
    def make(w: World, d: Path) -> Path:
        b = copy(w.other_bank if other else w.bank, d / "bank")
        if is_legacy:
            legacy(b)
        fn(w, b)
        return b
    return make


def _ckpt(fn):
    """A copy of the base run's checkpoint step-2, damaged by ``fn(folder, world)``."""
    def make(w: World, d: Path) -> Path:
        c = copy(w.run / "checkpoints" / "step-00000002", d / "step-00000002")
        fn(c, w)
        return c
    return make


def _non_utf8_config(d: Path) -> Path:
    path = d / "bad.yaml"
    path.write_bytes(b"train:\n  steps: 2\n  output_dir: caf\xe9\n")
    return path


def _weights_of_other(w, b):
    shutil.copy(w.other_bank / "weights.safetensors", b / "weights.safetensors")


def _policy_other_weights(p):
    shutil.copy(p.parents[2] / "other_policy" / "model.safetensors", p / "model.safetensors")  # root/cases/<name>/policy


def _policy_tokenizer_only(p):
    for f in p.iterdir():
        if not f.name.startswith("tokenizer") and f.name != "chat_template.jinja":
            f.unlink()


def _ckpt_of_other_model(c, w):
    shutil.rmtree(c)
    shutil.copytree(w.other_run / "checkpoints" / "step-00000001", c)


def _ckpt_pickled_code(c, w):
    """An attacker's checkpoint: a .pt whose unpickling runs a command, and a manifest that matches."""
    from srmir.artifacts import write_manifest

    class Boom:
        def __reduce__(self):
            return os.system, (f"touch {c.parent / 'PWNED'}",)

    pt = next((c / "ds").glob("*model_states.pt"))
    state = torch.load(pt, weights_only=False)
    state["evil"] = Boom()
    torch.save(state, pt)
    write_manifest(c)


def _resume_dir(fn):
    return _train(lambda w, d: {"train__resume": fn(w, d), "train__steps": 3})


BAD_LINES = {  # the malformed data files of tests/test_data.py, one record each on line 2
    "malformed_json": (b'{"id": "a", "category": ', "invalid JSON"),
    "wrong_type": (b'{"id": "b", "category": "insult", "prompt": 5, "chosen": "x", "rejected": "y"}',
                   "field 'prompt' must be a string"),
    "unknown_category": (b'{"id": "c", "category": "weather", "prompt": "p", "chosen": "x", "rejected": "y"}',
                         "unknown category 'weather'"),
    "empty_field": (b'{"id": "d", "category": "insult", "prompt": "p", "chosen": "  ", "rejected": "y"}',
                    "field 'chosen' is empty"),
    "missing_field": (b'{"id": "e", "category": "insult", "prompt": "p", "chosen": "x"}', "missing field 'rejected'"),
    "non_utf8": (b'{"id": "f", "prompt": "caf\xe9"}', "not valid UTF-8"),
    "not_an_object": (b"[1, 2]", "expected a JSON object"),
    "lone_surrogate": (b'{"id": "g", "category": "insult", "prompt": "hi \\ud800", "chosen": "x", "rejected": "y"}',
                       "lone surrogate (U+D800)"),
    "control_char": (b'{"id": "h", "category": "insult", "prompt": "a\\u0007b", "chosen": "x", "rejected": "y"}',
                     "control character (U+0007)"),
}

CASES: dict[str, Case] = {
    # ------------------------------------------------------------------ configs and command lines
    "config_non_utf8_train_py": Case(lambda w, d: (["--config", _non_utf8_config(d)], "train.py"),
                                     "{d}/bad.yaml:3", "not valid UTF-8", fresh=True),
    "config_non_utf8_rm_train": Case(lambda w, d: (["rm", "train", "--config", _non_utf8_config(d)], "srmir"),
                                     "{d}/bad.yaml:3", "not valid UTF-8"),
    "override_unknown_key": Case(_train(lambda w, d: {"grpo__nope": 1}), "grpo.nope", "unknown key"),
    "ds_config_non_utf8": Case(_train(lambda w, d: {"train__deepspeed": _data_file(d, b"\xff", "ds.json")}),
                               "{d}/ds.json", "not valid UTF-8"),
    # ------------------------------------------------------------------------------ data files
    **{f"data_stats_{k}": Case(lambda w, d, raw=raw: (["data", "stats", _data_file(d, raw)], "srmir"),
                               "{d}/data.jsonl:2", what) for k, (raw, what) in BAD_LINES.items()},
    "data_validate_lone_surrogate": Case(
        lambda w, d: (["data", "validate", _data_file(d, BAD_LINES["lone_surrogate"][0])], "srmir"),
        "{d}/data.jsonl:2", "lone surrogate", stream="out"),
    "data_validate_control_char": Case(
        lambda w, d: (["data", "validate", _data_file(d, BAD_LINES["control_char"][0])], "srmir"),
        "{d}/data.jsonl:2", "control character", stream="out"),
    "train_prompt_lone_surrogate": Case(
        _train(lambda w, d: {"data__prompts_file": _data_file(d, b'{"id": "s", "category": "insult", "prompt": '
                                                                 b'"tell me \\udfff"}', "prompts.jsonl")}),
        "{d}/prompts.jsonl:2", "lone surrogate"),
    "rm_eval_data_non_utf8": Case(_rm_eval(lambda w, d: (w.bank, _data_file(d, BAD_LINES["non_utf8"][0]))),
                                  "{d}/data.jsonl:2", "not valid UTF-8"),
    # --------------------------------------------------------------------------- policy folders
    "policy_empty_folder": Case(_train(lambda w, d: {"model__policy": (d / "p").mkdir() or d / "p"}),
                                "{d}/p", "empty folder"),
    "policy_missing_path": Case(_train(lambda w, d: {"model__policy": d / "nowhere/policy"}),
                                "{d}/nowhere/policy", "no such folder"),
    "policy_no_config": Case(_train(lambda w, d: {"model__policy": _policy(lambda p: (p / "config.json").unlink())(w, d)}),
                             "{d}/policy", "no config.json: weights without their config"),
    "policy_tokenizer_only": Case(_train(lambda w, d: {"model__policy": _policy(_policy_tokenizer_only)(w, d)}),
                                  "{d}/policy", "a tokenizer without a model"),
    "policy_bad_model_type": Case(_train(lambda w, d: {"model__policy": _policy(
        lambda p: edit_json(p / "config.json", lambda c: c.update(model_type="llamax")))(w, d)}),
        "{d}/policy/config.json", "unknown model_type 'llamax'"),
    "policy_config_not_json": Case(_train(lambda w, d: {"model__policy": _policy(
        lambda p: (p / "config.json").write_text("{oops"))(w, d)}), "{d}/policy/config.json:1", "invalid config JSON"),
    "policy_no_weights": Case(_train(lambda w, d: {"model__policy": _policy(
        lambda p: (p / "model.safetensors").unlink())(w, d)}), "{d}/policy", "no weights"),
    "policy_truncated_weights": Case(_train(lambda w, d: {"model__policy": _policy(
        lambda p: truncate(p / "model.safetensors"))(w, d)}), "{d}/policy/model.safetensors", "truncated"),
    "policy_zeroed_weights": Case(_train(lambda w, d: {"model__policy": _policy(
        lambda p: zero(p / "model.safetensors"))(w, d)}), "{d}/policy/model.safetensors", "not a readable safetensors"),
    "policy_other_model_weights": Case(_train_py(lambda w, d: {"model__policy": _policy(_policy_other_weights)(w, d)}),
                                       "{d}/policy", "has shape"),
    "policy_no_tokenizer": Case(_train(lambda w, d: {"model__policy": _policy(
        lambda p: (p / "tokenizer.json").unlink())(w, d)}), "{d}/policy", "no tokenizer files"),
    "eval_policy_truncated_weights": Case(_eval(lambda w, d: (_policy(lambda p: truncate(p / "model.safetensors"))(w, d),
                                                              w.bank)), "{d}/policy/model.safetensors", "truncated"),
    "eval_policy_no_tokenizer": Case(_eval(lambda w, d: (_policy(lambda p: (p / "tokenizer.json").unlink())(w, d),
                                                         w.bank)), "{d}/policy", "no tokenizer files"),
    "eval_run_without_policy": Case(_eval(lambda w, d: ((d / "run" / "checkpoints").mkdir(parents=True) or d / "run",
                                                        w.bank)), "{d}/run", "has training finished"),
    # ----------------------------------------------------------------------------- reward banks
    "bank_truncated_weights": Case(_rm_eval(lambda w, d: (_bank(lambda w, b: truncate(b / "weights.safetensors"))(w, d),
                                                          None)), "{d}/bank/weights.safetensors", "truncated"),
    "bank_zeroed_weights": Case(_rm_eval(lambda w, d: (_bank(lambda w, b: zero(b / "weights.safetensors"))(w, d), None)),
                                "{d}/bank/weights.safetensors", "sha256 mismatch"),
    "bank_flipped_byte": Case(_rm_eval(lambda w, d: (_bank(lambda w, b: flip(b / "weights.safetensors"))(w, d), None)),
                              "{d}/bank/weights.safetensors", "sha256 mismatch"),
    "bank_other_model_weights": Case(_rm_eval(lambda w, d: (_bank(_weights_of_other)(w, d), None)),
                                     "{d}/bank/weights.safetensors", "the manifest says"),
    "bank_missing_tokenizer": Case(_rm_eval(lambda w, d: (_bank(lambda w, b: (b / "backbone/tokenizer.json").unlink())(w, d),
                                                          None)), "{d}/bank/backbone/tokenizer.json", "missing"),
    "bank_missing_backbone_config": Case(_rm_eval(lambda w, d: (_bank(lambda w, b: (b / "backbone/config.json").unlink())
                                                                (w, d), None)), "{d}/bank/backbone/config.json", "missing"),
    "bank_no_bank_json": Case(_rm_eval(lambda w, d: (_bank(lambda w, b: (b / "bank.json").unlink())(w, d), None)),
                              "{d}/bank", "not a shadow reward bank"),
    "legacy_bank_truncated_weights": Case(_rm_eval(lambda w, d: (_bank(lambda w, b: truncate(b / "weights.safetensors"),
                                                                       True)(w, d), None)),
                                          "{d}/bank/weights.safetensors", "truncated"),
    "legacy_bank_zeroed_weights": Case(_rm_eval(lambda w, d: (_bank(lambda w, b: zero(b / "weights.safetensors"), True)
                                                              (w, d), None)),
                                       "{d}/bank/weights.safetensors", "not a readable safetensors"),
    "legacy_bank_other_model_weights": Case(_rm_eval(lambda w, d: (_bank(_weights_of_other, True)(w, d), None)),
                                            "{d}/bank/weights.safetensors", "weights of another model"),
    "legacy_bank_missing_calibration": Case(_rm_eval(lambda w, d: (_bank(lambda w, b: edit_json(
        b / "bank.json", lambda m: m.pop("calibration")), True)(w, d), None)), "{d}/bank/bank.json", "'calibration'"),
    "legacy_bank_missing_backbone_config": Case(_rm_eval(lambda w, d: (_bank(
        lambda w, b: (b / "backbone/config.json").unlink(), True)(w, d), None)), "{d}/bank", "backbone/config.json"),
    "legacy_bank_missing_tokenizer": Case(_rm_eval(lambda w, d: (_bank(
        lambda w, b: (b / "backbone/tokenizer.json").unlink(), True)(w, d), None)), "{d}/bank/backbone",
        "no tokenizer files"),
    "legacy_bank_tokenizer_of_another_model": Case(_rm_eval(lambda w, d: (_bank(lambda w, b: (
        __import__("transformers").BertTokenizerFast(vocab={t: i for i, t in enumerate(
            ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}).save_pretrained(b / "backbone")), True)(w, d), None)),
        "{d}/bank/backbone", "only 5 tokens"),
    "legacy_bank_bad_json": Case(_rm_eval(lambda w, d: (_bank(lambda w, b: (b / "bank.json").write_text("{"), True)
                                                        (w, d), None)), "{d}/bank/bank.json:1", "invalid bank JSON"),
    "train_bank_legacy_missing_tokenizer": Case(_train(lambda w, d: {"rewards__dir": _bank(
        lambda w, b: (b / "backbone/tokenizer.json").unlink(), True)(w, d)}), "{d}/bank/backbone", "no tokenizer files"),
    "train_bank_truncated_weights": Case(_train(lambda w, d: {"rewards__dir": _bank(
        lambda w, b: truncate(b / "weights.safetensors"))(w, d)}), "{d}/bank/weights.safetensors", "truncated"),
    "eval_bank_legacy_other_model_weights": Case(_eval(lambda w, d: (w.files["policy"], _bank(_weights_of_other, True)
                                                                     (w, d))), "{d}/bank/weights.safetensors",
                                                 "weights of another model"),
    "eval_bank_legacy_missing_calibration": Case(_eval(lambda w, d: (w.files["policy"], _bank(lambda w, b: edit_json(
        b / "bank.json", lambda m: m["calibration"].pop("insult")), True)(w, d))), "{d}/bank/bank.json",
        "calibration of 'insult'"),
    # ------------------------------------------------------------------------------ checkpoints
    "ckpt_truncated_pt": Case(_resume_dir(_ckpt(lambda c, w: truncate(next((c / "ds").glob("*optim_states.pt"))))),
                              "{d}/step-00000002/ds/", "truncated"),
    "ckpt_missing_optimizer": Case(_resume_dir(_ckpt(lambda c, w: next((c / "ds").glob("*optim_states.pt")).unlink())),
                                   "{d}/step-00000002/ds/", "missing"),
    "ckpt_missing_rng": Case(_resume_dir(_ckpt(lambda c, w: shutil.rmtree(c / "rng"))), "{d}/step-00000002/rng/",
                             "missing"),
    "ckpt_partial_trainer_state": Case(_resume_dir(_ckpt(lambda c, w: truncate(c / "trainer_state.json"))),
                                       "{d}/step-00000002/trainer_state.json", "truncated"),
    "ckpt_of_another_model": Case(_resume_dir(_ckpt(_ckpt_of_other_model)), "{d}/step-00000002",
                                  "a checkpoint of another model"),
    "ckpt_pickled_code": Case(_resume_dir(_ckpt(_ckpt_pickled_code)), "{d}/step-00000002/ds",
                              "refused to unpickle"),
    "ckpt_legacy_truncated_pt": Case(_resume_dir(_ckpt(lambda c, w: ((c / "manifest.json").unlink(), truncate(
        next((c / "ds").glob("*model_states.pt")))))), "{d}/step-00000002/ds", "cannot load the DeepSpeed state"),
    "ckpt_not_a_checkpoint": Case(_resume_dir(lambda w, d: (d / "empty").mkdir() or d / "empty"), "{d}/empty",
                                  "no trainer_state.json"),
    "ckpt_auto_all_damaged": Case(_train(lambda w, d: (
        copy(w.run / "checkpoints", d / "out" / "checkpoints"),
        [truncate(p / "trainer_state.json") for p in (d / "out" / "checkpoints").iterdir()],
        {"train__resume": "auto", "train__steps": 3})[-1]), "train.resume", "verifies",
        absent=("out/policy", "out/checkpoints/step-00000003")),
}


def _check_clean(r: Result, case: Case, d: Path) -> None:
    where = case.where.format(d=d)
    assert "Traceback" not in r.out + r.err, r.err[-4000:]
    assert r.rc == case.rc, f"exit {r.rc} (silent acceptance?)\n{r.out[-2000:]}\n{r.err[-3000:]}"
    assert len(r.err_lines) == 1 and r.err_lines[0].startswith("srmir: error: "), r.err
    text = r.err_lines[0] if case.stream == "err" else r.out
    assert where in text and case.what in text, text
    for rel in case.absent:
        assert not (d / rel).exists(), f"{rel} was written"
    assert not list(d.rglob(".step-*.tmp")) and not list(d.rglob(".policy.tmp-*"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2(world, name):
    case, d = CASES[name], world.case_dir(name)
    argv, entry = case.setup(world, d)
    r = world.cli.run(argv, entry=entry, fresh=case.fresh)
    world.results[name] = r
    _check_clean(r, case, d)
    if name == "ckpt_pickled_code":
        assert not (d / "PWNED").exists()  # the payload never ran: weights_only unpickling refused it


# ============================================================================ resume falls back


VOLATILE = ("time/", "tokens_per_s", "mem/")


def _comparable(path: Path) -> list[dict]:
    from srmir.trainer.metrics import read_metrics

    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in read_metrics(path)]


@pytest.mark.slow
def test_resume_auto_skips_a_damaged_newest_checkpoint_and_matches_an_undamaged_resume(world):
    """step-2 damaged three ways at once (a truncated file, the optimizer state deleted, a torn last
    metrics line): ``--resume auto`` reports it, resumes from step-1, and ends bit-identical to an
    undamaged copy resumed explicitly from step-1."""
    d = world.case_dir("resume_fallback")
    damaged, clean = copy(world.run, d / "damaged"), copy(world.run, d / "clean")
    for run in (damaged, clean):
        shutil.rmtree(run / "policy")
    step2 = damaged / "checkpoints" / "step-00000002"
    truncate(next((step2 / "ds").glob("*model_states.pt")))
    next((step2 / "ds").glob("*optim_states.pt")).unlink()
    with open(damaged / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "reward/me')
    shutil.rmtree(clean / "checkpoints" / "step-00000002")

    r = world.cli.run(world.train_argv(damaged, train__steps=3, train__save_every=1, train__resume="auto"),
                      entry="train.py")
    assert r.rc == 0 and "Traceback" not in r.err, r.err[-3000:]
    assert "skipping damaged checkpoint step-00000002" in r.out and "model_states.pt: truncated" in r.out
    assert "resumed from" in r.out and "step-00000001 at step 1" in r.out and "dropped a torn last line" in r.out
    r = world.cli.run(world.train_argv(clean, train__steps=3, train__save_every=1,
                                       train__resume=clean / "checkpoints" / "step-00000001"), entry="train.py")
    assert r.rc == 0, r.err[-3000:]

    assert _comparable(damaged / "metrics.jsonl") == _comparable(clean / "metrics.jsonl")
    assert [r["step"] for r in _comparable(damaged / "metrics.jsonl")] == [1, 2, 3]
    a, b = load_file(str(damaged / "policy" / "model.safetensors")), load_file(str(clean / "policy" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from srmir.trainer.checkpoint import problem

    assert problem(damaged / "checkpoints" / "step-00000002") is None  # rewritten whole by the resumed run


# ====================================================================== full and read-only disks


def _mount_tmpfs(target: Path, size: str, read_only: bool = False) -> None:
    target.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip() or 'mount failed'}): a full or "
                    "read-only disk cannot be made without one")


def _umount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous_checkpoint(world):
    """A 640 KiB disk holds the first checkpoint (~390 KiB) but not a second beside it: the save of
    step 2 fails inside DeepSpeed's torch.save (a RuntimeError without errno); every rank stops with
    the OS reason, the partial folder is gone, and step 1 still verifies and resumes."""
    d = world.case_dir("full_disk")
    mnt = d / "mnt"
    _mount_tmpfs(mnt, "640k")
    try:
        out = mnt / "run"
        r = world.cli.run(world.train_argv(out, train__steps=3, train__save_every=1, train__keep_checkpoints=2),
                          entry="train.py", fresh=True)
        assert "Traceback" not in r.err and r.rc == 2, r.err[-4000:]
        assert len(r.err_lines) == 1, r.err
        assert r.err_lines[0].startswith(f"srmir: error: {out}/checkpoints/") and "No space left on device" in r.err
        ckpts = out / "checkpoints"
        assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000001"]  # no partial .step-*.tmp
        from srmir.trainer.checkpoint import problem

        assert problem(ckpts / "step-00000001") is None
    finally:
        _umount(mnt)


def _torchrun(world: World, out: Path, **extra) -> Result:
    from test_trainer_common import free_port

    argv = world.train_argv(out, train__micro_batch_size=2, **extra)
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--rdzv_backend", "c10d",
           "--rdzv_endpoint", f"127.0.0.1:{free_port()}", str(ROOT / "train.py"), *map(str, argv)]
    proc = subprocess.run(cmd, cwd=ROOT, env=world.cli.env, capture_output=True, text=True, timeout=300)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_stop_together_on_a_full_disk_and_fall_back_together(world):
    """Two ranks under torchrun: a full disk during the step-2 save stops both (one ``srmir: error``
    line, exit 2 on each rank; torchrun adds its own report), step 1 stays whole; then a copy whose
    newest checkpoint lost rank 1's random state is skipped by both ranks alike."""
    d = world.case_dir("two_ranks")
    mnt = d / "mnt"
    _mount_tmpfs(mnt, "600k")
    try:
        r = _torchrun(world, mnt / "run", train__steps=3, train__save_every=1)
        ours = [line for line in r.err.splitlines() if "srmir: error:" in line]
        assert r.rc != 0 and len(ours) == 1 and "No space left on device" in ours[0], r.err[-4000:]
        assert "exitcode  : 2" in r.err  # both workers exited 2; the only traceback is torchrun's own report
        assert all("torch/distributed" in f or f.startswith("<frozen") for f in re.findall(r'File "([^"]+)"', r.err))
        ckpts = mnt / "run" / "checkpoints"
        assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000001"]
        run = d / "run"
        copy(ckpts / "step-00000001", run / "checkpoints" / "step-00000001")
    finally:
        _umount(mnt)
    damaged = copy(run / "checkpoints" / "step-00000001", run / "checkpoints" / "step-00000002")
    (damaged / "rng" / "rank-00001.safetensors").unlink()
    r = _torchrun(world, run, train__steps=2, train__save_every=1, train__resume="auto")
    assert r.rc == 0, r.err[-4000:]
    assert r.out.count("skipping damaged checkpoint step-00000002") == 1 and "at step 1" in r.out
    assert (run / "policy" / "model.safetensors").is_file()
    # ZeRO state of two ranks resumed on one: DeepSpeed cannot re-partition it; one line, not its exception
    r = world.cli.run(["train", *world.train_argv(d / "one", train__steps=2,
                                                  train__resume=run / "checkpoints" / "step-00000001")])
    assert r.rc == 2 and len(r.err_lines) == 1 and "world size of 2" in r.err and "Traceback" not in r.err, r.err


@pytest.mark.slow
def test_read_only_output_folder_is_one_line(world):
    d = world.case_dir("read_only")
    mnt = d / "mnt"
    _mount_tmpfs(mnt, "64k", read_only=True)
    try:
        r = world.cli.run(["train", *world.train_argv(mnt / "run", train__steps=1)])
        assert "Traceback" not in r.err and r.rc == 2, r.err[-4000:]
        assert r.err_lines == [f"srmir: error: {mnt}/run: Read-only file system"], r.err
    finally:
        _umount(mnt)


def test_permission_denied_is_one_line(world, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: permission bits do not apply (the read-only case covers the OS error path)")
    d = tmp_path / "locked"
    d.mkdir()
    d.chmod(0o500)
    r = world.cli.run(["rm", "eval", "--rm", world.bank, "--data", _cod_file(tmp_path), "--json", d / "x" / "out.json"])
    assert r.rc == 2 and "Permission denied" in r.err and len(r.err_lines) == 1, r.err


# ============================================================================ HTTP: 401, closed port


KEY = "sk-issue16-0123456789abcdef-SECRET"


class EchoServer(ThreadingHTTPServer):
    """An OpenAI-compatible server that answers with valid CoD / rejected / verdict replies, each
    echoing the Authorization header it received (the worst case for a leaked key); ``status``
    overrides the reply (401)."""

    daemon_threads = True
    status = 200

    def handle_error(self, request, client_address):
        pass


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        from test_data_http import reply_for

        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization", "")
        if self.server.status != 200:
            return self._send(self.server.status, {"error": {"message": f"invalid key {auth}"}})
        messages = body["messages"]
        if "strict safety judge" in messages[-1]["content"] or messages[-1].get("role") == "assistant":
            text = f"unsafe (checked with {auth})"
        else:
            text = reply_for(messages).replace("#### ", f"#### {auth} ")
        self._send(200, {"choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": text}}]})

    def _send(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def echo_server():
    srv = EchoServer(("127.0.0.1", 0), EchoHandler)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def _build_argv(d: Path, api_base: str, prompts: Path) -> list:
    return ["data", "build", "--config", d.parent.parent / "empty.yaml", "--prompts", prompts, "--out",
            d / "cod.jsonl", "--batch-size", "1", "data.generator=openai", f"data.api_base={api_base}",
            "data.generator_model=m", "data.concurrency=1", "data.max_retries=0", "data.request_timeout=5",
            "data.val_fraction=0", "data.test_fraction=0"]


def _build_prompts(d: Path) -> Path:
    from srmir.taxonomy import load_taxonomy

    path = d / "prompts.jsonl"
    rows = [{"id": f"{s}-{i}", "category": s, "prompt": f"Distinct harmful request {s} number {i} item {i * 31}"}
            for s in load_taxonomy().slugs for i in range(1)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_a_401_says_to_fix_the_key_and_a_closed_port_names_the_host(world, echo_server):
    srv, url = echo_server
    d = world.case_dir("http")
    srv.status = 401
    r = world.cli.run(_build_argv(d, url, _build_prompts(d)), env={"OPENAI_API_KEY": "sk-wrong-key-000000"})
    errors = [line for line in r.err_lines if line.startswith("srmir: error:")]
    assert r.rc == 1 and "Traceback" not in r.err and len(errors) == 1, r.err  # a generator failure: exit 1
    assert "HTTP 401" in errors[0] and "refused the API key in $OPENAI_API_KEY; set a valid one" in errors[0] and "--attempts" not in r.err
    assert "sk-wrong-key" not in r.out + r.err and not (d / "cod.jsonl").exists()

    port = srv.server_address[1]
    srv.shutdown()
    srv.server_close()  # the port is closed now
    r = world.cli.run(_build_argv(d, url, _build_prompts(d)))
    errors = [line for line in r.err_lines if line.startswith("srmir: error:")]
    assert r.rc == 1 and "Traceback" not in r.err and len(errors) == 1, r.err
    assert f"127.0.0.1:{port}" in errors[0] and "Connection refused" in errors[0]


# ================================================================================== secrets


@pytest.mark.slow
def test_no_file_a_run_writes_holds_the_api_key(world, echo_server):
    """The server echoes the key into every reply: the CoD build (records, splits) and an evaluation
    judged by it (answers, judgments, results, report) are written with the key masked."""
    srv, url = echo_server
    d = world.case_dir("secrets")
    env = {"OPENAI_API_KEY": KEY, "SRMIR_TEST_OTHER_TOKEN": "hf_issue16_token_abcdefgh"}
    r = world.cli.run(_build_argv(d, url, _build_prompts(d)), env=env)
    assert r.rc == 0, r.err[-3000:]
    records = [json.loads(line) for line in (d / "cod.jsonl").read_text().splitlines()]
    assert records and all("Bearer ***" in rec["chosen"] for rec in records)
    r = world.cli.run(["eval", "--policy", world.files["policy"], "--out", d / "eval", "--config", world.config,
                       f"data.taxonomy={world.files['taxonomy']}", f"eval.harmful_file={world.files['prompts']}",
                       "eval.limit=2", "eval.jailbreak_prompts=1", "eval.max_new_tokens=4", "model.dtype=fp32",
                       "eval.judges=[http]", f"eval.judge_api_base={url}", "eval.judge_model=judge", "--no-plots"],
                      env=env)
    assert r.rc == 0, r.err[-3000:]
    judged = (d / "eval" / "judgments").glob("*.jsonl")
    assert any("Bearer ***" in p.read_text() for p in judged)  # the echo was stored, masked
    written = [p for p in d.rglob("*") if p.is_file()]
    assert len(written) >= 6
    for secret in (KEY, env["SRMIR_TEST_OTHER_TOKEN"]):
        leaked = [str(p) for p in written if secret.encode() in p.read_bytes()]
        assert not leaked and secret not in r.out + r.err


# ============================================================================== in-process units


@pytest.mark.parametrize("argv", [
    ["train", "--config", "c.yaml", "a.b=1", "--resume", "auto", "c.d=2"],
    ["rm", "train", "a.b=1", "--config", "c.yaml", "c.d=2", "--out", "o", "e.f=3"],
    ["eval", "--policy", "p", "a.b=1", "--out", "o", "c.d=2", "--no-plots", "e.f=3"],
    ["data", "build", "a.b=1", "--out", "o", "c.d=2", "--limit", "3", "e.f=4"],
    ["pipeline", "--config", "c.yaml", "a.b=1", "--out", "o", "c.d=2"],
])
def test_overrides_anywhere_on_every_command(argv):
    from srmir.cli import build_parser, parse

    args = parse(build_parser(), argv)
    assert args.overrides == [a for a in argv if "=" in a]  # in order: a later one still wins


def test_an_unknown_option_is_still_refused(capsys):
    from srmir.cli import build_parser, parse

    with pytest.raises(SystemExit) as e:
        parse(build_parser(), ["train", "--config", "c.yaml", "a.b=1", "--bogus"])
    assert e.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_scrub_masks_registered_and_environment_secrets(monkeypatch):
    from srmir.scrub import register, scrub

    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-1234567890")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # a short value is no secret
    register("custom-key-named-anything")
    text = scrub("a tok-1234567890 b custom-key-named-anything c false")
    assert text == "a *** b *** c false"


def test_a_torn_metrics_line_is_dropped_only_at_the_end(tmp_path):
    from srmir.errors import UserError
    from srmir.trainer.metrics import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "rew')
    with pytest.warns(RuntimeWarning, match="metrics.jsonl:3: dropped a torn last line"):
        assert [r["step"] for r in read_metrics(path)] == [1, 2]
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(UserError, match="metrics.jsonl:2"):
        read_metrics(path)
