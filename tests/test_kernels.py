"""srmir_kernels against float64 references: forward, gradients, entropy, both backends.

Triton runs on CPU through its interpreter (TRITON_INTERPRET=1, set by conftest.py / .ci/run
before triton is imported); those cases skip without it. Shapes are small and odd
(V=1000, H=48, N=7) so tiles end unevenly and the interpreter stays fast.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import srmir_kernels as K
from srmir_kernels import torch_ops

TRITON_CPU = os.environ.get("TRITON_INTERPRET") == "1" and K.triton_available()
needs_triton_cpu = pytest.mark.skipif(not TRITON_CPU, reason="needs triton with TRITON_INTERPRET=1")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
BACKENDS = ["torch", pytest.param("triton", marks=needs_triton_cpu)]

# dtype -> tolerances. logp: absolute. grad: relative to the reference's max |grad|.
# Materialized logits (selective_logprobs) are exact inputs, so only the fp32 math and the
# rounding of the returned gradient count. The fused path also rounds its chunk logits to the
# input dtype (as the naive bf16 path does): |Δz| ≤ |z|·2⁻⁹ for bf16, |z| ≲ 8 here.
TOL = {
    torch.float32: dict(logp=2e-5, grad=2e-5, fused_logp=2e-5, fused_grad=2e-5),
    torch.bfloat16: dict(logp=2e-5, grad=1e-2, fused_logp=5e-2, fused_grad=3e-2),
    torch.float16: dict(logp=2e-5, grad=2e-3, fused_logp=1e-2, fused_grad=5e-3),
}
T = 0.7  # temperature != 1 everywhere unless a test says otherwise


def _targets(shape, vocab, gen):
    """Random ids with the vocabulary edges 0 and V-1 always present."""
    t = torch.randint(0, vocab, shape, generator=gen)
    t.view(-1)[0], t.view(-1)[-1] = 0, vocab - 1
    return t


def _ref_logprobs(logits64, targets, temperature):
    """float64 reference: (logp, entropy) of softmax(logits / T)."""
    logp_all = torch.log_softmax(logits64 / temperature, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    probs = logp_all.exp()
    return logp, -torch.special.xlogy(probs, probs).sum(-1)  # 0·log 0 = 0 for masked entries


def _assert_grad_close(got, ref, rel):
    err = (got.double() - ref).abs().max().item()
    assert err <= rel * ref.abs().max().item(), f"grad error {err:.3g} > {rel} x {ref.abs().max().item():.3g}"


def _fused_case(dtype, n_shape=(7,), h=48, v=1000, bias=True, seed=0):
    """Inputs in ``dtype`` plus float64 leaf copies of the same (rounded) values."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*n_shape, h, generator=gen).to(dtype)
    weight = (torch.randn(v, h, generator=gen) * 2 / h**0.5).to(dtype)
    b = torch.randn(v, generator=gen).to(dtype) if bias else None
    targets = _targets(n_shape, v, gen)
    upstream = torch.randn(n_shape, generator=gen, dtype=torch.float64)
    return hidden, weight, b, targets, upstream


def _fused_reference(hidden, weight, bias, targets, upstream, temperature):
    leaves = [x.double().requires_grad_() if x is not None else None for x in (hidden, weight, bias)]
    h64, w64, b64 = leaves
    logits = h64 @ w64.t() + (b64 if b64 is not None else 0)
    logp, ent = _ref_logprobs(logits, targets, temperature)
    (logp * upstream).sum().backward()
    return logp.detach(), ent.detach(), [x.grad if x is not None else None for x in leaves]


# ---------------------------------------------------------------- selective_logprobs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_matches_fp64(backend, dtype):
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 5, 1000, generator=gen) * 3).to(dtype).requires_grad_()  # 3-D [B, T, V]
    targets = _targets((2, 5), 1000, gen)
    upstream = torch.randn(2, 5, generator=gen, dtype=torch.float64)

    logp, ent = K.selective_logprobs(logits, targets, temperature=T, backend=backend, return_entropy=True)
    (logp * upstream).sum().backward()

    l64 = logits.detach().double().requires_grad_()
    ref_logp, ref_ent = _ref_logprobs(l64, targets, T)
    (ref_logp * upstream).sum().backward()
    tol = TOL[dtype]
    assert logp.dtype == torch.float32 and logp.shape == targets.shape
    assert not ent.requires_grad and ent.shape == targets.shape
    torch.testing.assert_close(logp.double(), ref_logp, atol=tol["logp"], rtol=0)
    torch.testing.assert_close(ent.double(), ref_ent, atol=tol["logp"] * 10, rtol=0)
    assert logits.grad.dtype == dtype
    _assert_grad_close(logits.grad, l64.grad, tol["grad"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_selective_noncontiguous_and_masked(backend):
    """Row-strided and column-strided views, and -inf (masked) vocabulary entries."""
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(9, 2 * 333, generator=gen)
    base[:, 5:40] = float("-inf")  # masked: columns 3..19 of the ::2 view, 5..39 of the other
    targets = _targets((9,), 333, gen)
    targets[(targets >= 3) & (targets < 40)] = 100  # targets avoid every masked column
    for view in (base[:, ::2], base[:, :333].t().contiguous().t()):  # strides (666, 2) and (1, 9)
        logp, ent = K.selective_logprobs(view, targets, T, backend, return_entropy=True)
        ref_logp, ref_ent = _ref_logprobs(view.double(), targets, T)
        torch.testing.assert_close(logp.double(), ref_logp, atol=2e-5, rtol=0)
        torch.testing.assert_close(ent.double(), ref_ent, atol=2e-4, rtol=0)
    leaf = base[:, ::2].clone().requires_grad_()
    K.selective_logprobs(leaf, targets, T, backend).sum().backward()
    l64 = base[:, ::2].double().requires_grad_()
    _ref_logprobs(l64, targets, T)[0].sum().backward()
    assert torch.isfinite(leaf.grad).all()
    _assert_grad_close(leaf.grad, l64.grad, 2e-5)


# ---------------------------------------------------------------- fused_linear_logprobs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_matches_fp64(backend, dtype, bias):
    hidden, weight, b, targets, upstream = _fused_case(dtype, bias=bias)
    ref_logp, ref_ent, ref_grads = _fused_reference(hidden, weight, b, targets, upstream, T)
    leaves = [x.clone().requires_grad_() if x is not None else None for x in (hidden, weight, b)]
    logp, ent = K.fused_linear_logprobs(leaves[0], leaves[1], targets, temperature=T, bias=leaves[2],
                                        backend=backend, return_entropy=True, chunk_tokens=3, chunk_vocab=300)
    (logp * upstream.float()).sum().backward()
    tol = TOL[dtype]
    assert logp.dtype == torch.float32 and not ent.requires_grad
    torch.testing.assert_close(logp.double(), ref_logp, atol=tol["fused_logp"], rtol=0)
    torch.testing.assert_close(ent.double(), ref_ent, atol=tol["fused_logp"] * 2, rtol=0)
    for leaf, ref in zip(leaves, ref_grads):
        if leaf is not None:
            assert leaf.grad.dtype == dtype
            _assert_grad_close(leaf.grad, ref, tol["fused_grad"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_3d_noncontiguous_fp16(backend):
    """[B, T, H] hidden from a transpose, a column-major weight, fp16, no bias."""
    hidden, weight, _, targets, upstream = _fused_case(torch.float16, n_shape=(3, 5), h=40, v=517, bias=False)
    ref_logp, _, ref_grads = _fused_reference(hidden, weight, None, targets, upstream, T)
    h_leaf = hidden.transpose(0, 1).contiguous().requires_grad_()  # [T, B, H]; we pass its transpose
    w_leaf = weight.t().contiguous().requires_grad_()  # [H, V]; weight = w_leaf.t() is column-major
    logp = K.fused_linear_logprobs(h_leaf.transpose(0, 1), w_leaf.t(), targets, T, backend=backend,
                                   chunk_tokens=4, chunk_vocab=200)
    (logp * upstream.float()).sum().backward()
    assert logp.shape == (3, 5)
    torch.testing.assert_close(logp.double(), ref_logp, atol=TOL[torch.float16]["fused_logp"], rtol=0)
    _assert_grad_close(h_leaf.grad.transpose(0, 1), ref_grads[0], TOL[torch.float16]["fused_grad"])
    _assert_grad_close(w_leaf.grad.t(), ref_grads[1], TOL[torch.float16]["fused_grad"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_chunk_invariance(backend):
    hidden, weight, b, targets, upstream = _fused_case(torch.float32, n_shape=(11,), seed=3)
    results = []
    for chunks in [dict(chunk_tokens=11, chunk_vocab=1000), dict(chunk_tokens=2, chunk_vocab=129), dict()]:
        leaves = [x.clone().requires_grad_() for x in (hidden, weight, b)]
        logp, ent = K.fused_linear_logprobs(leaves[0], leaves[1], targets, 1.0, leaves[2], backend,
                                            return_entropy=True, **chunks)
        (logp * upstream.float()).sum().backward()
        results.append([logp, ent] + [x.grad for x in leaves])
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            torch.testing.assert_close(a, b_, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_partial_requires_grad(backend):
    """Frozen weight (e.g. LoRA) or frozen hidden: only the needed gradients are computed."""
    hidden, weight, b, targets, upstream = _fused_case(torch.float32, seed=4)
    _, _, ref_grads = _fused_reference(hidden, weight, b, targets, upstream, T)
    h_leaf = hidden.clone().requires_grad_()
    logp = K.fused_linear_logprobs(h_leaf, weight, targets, T, b, backend, chunk_vocab=333)
    (logp * upstream.float()).sum().backward()
    _assert_grad_close(h_leaf.grad, ref_grads[0], 2e-5)
    w_leaf = weight.clone().requires_grad_()
    logp = K.fused_linear_logprobs(hidden, w_leaf, targets, T, b, backend, chunk_tokens=2)
    (logp * upstream.float()).sum().backward()
    _assert_grad_close(w_leaf.grad, ref_grads[1], 2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_gives_zero_gradients(backend):
    w = torch.randn(50, 16).requires_grad_()
    b = torch.randn(50).requires_grad_()
    h = torch.randn(2, 0, 16).requires_grad_()
    logp = K.fused_linear_logprobs(h, w, torch.zeros(2, 0, dtype=torch.long), bias=b, backend=backend)
    logp.sum().backward()
    assert logp.shape == (2, 0) and h.grad.shape == (2, 0, 16)
    assert (w.grad == 0).all() and (b.grad == 0).all()


def test_fused_confident_target_gradient_bf16():
    """p(target) ≈ 1: grad = c·(1 − p) must not be lost to bf16 cancellation."""
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(6, 48, generator=gen).to(torch.bfloat16)
    weight = (torch.randn(300, 48, generator=gen) * 0.05).to(torch.bfloat16)
    targets = torch.arange(6)
    weight[:6] = (hidden.float() * 0.4).to(torch.bfloat16)  # z_target ≈ 0.4·|h|² ≈ 19: p ≈ 1 - 1e-6
    _, _, ref_grads = _fused_reference(hidden, weight, None, targets, torch.ones(6, dtype=torch.float64), 1.0)
    h_leaf = hidden.clone().requires_grad_()
    K.fused_linear_logprobs(h_leaf, weight, targets, backend="torch", chunk_vocab=128).sum().backward()
    _assert_grad_close(h_leaf.grad, ref_grads[0], 0.05)


# ---------------------------------------------------------------- launchers, errors, import


@pytest.mark.parametrize("backend", BACKENDS)
def test_launchers_write_every_output(backend):
    """Poisoned (NaN-filled) output buffers: every element must be overwritten."""
    ops = K._resolve_backend(backend, torch.device("cpu"))
    gen = torch.Generator().manual_seed(6)
    tile = torch.randn(5, 777, generator=gen).to(torch.bfloat16)
    t_local = torch.tensor([0, 776, 3, -5, 900])  # edges, and two targets outside this tile
    if backend == "triton":
        out = tuple(torch.full((5,), float("nan")) for _ in range(3))
        lse, tgt, mean_z = ops.tile_stats(tile, t_local, 0.5, True, out=out)
        assert all(a is b for a, b in zip((lse, tgt, mean_z), out))
    else:
        lse, tgt, mean_z = ops.tile_stats(tile, t_local, 0.5, True)
    assert torch.isfinite(lse).all() and torch.isfinite(mean_z).all()
    assert torch.isfinite(tgt[:3]).all() and (tgt[3:] == float("-inf")).all()
    grad = torch.full((5, 777), float("nan"), dtype=torch.bfloat16)
    ops.tile_grad(tile, t_local, lse, lse, torch.ones(5), 0.5, grad)
    assert torch.isfinite(grad.float()).all()
    ref = torch.softmax(tile.double() * 0.5, -1).neg()
    ref[torch.arange(3), t_local[:3]] += 1
    torch.testing.assert_close(grad.double(), ref, atol=4e-3, rtol=0)


def test_errors():
    logits, targets = torch.randn(3, 10), torch.tensor([0, 1, 9])
    with pytest.raises(ValueError, match="backend must be one of"):
        K.selective_logprobs(logits, targets, backend="cuda")
    with pytest.raises(ValueError, match="temperature"):
        K.selective_logprobs(logits, targets, temperature=0.0)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 10\)"):
        K.selective_logprobs(logits, torch.tensor([0, 1, 10]))
    with pytest.raises(ValueError, match="targets shape"):
        K.selective_logprobs(logits, targets[:2])
    with pytest.raises(ValueError, match="weight must be"):
        K.fused_linear_logprobs(torch.randn(3, 4), torch.randn(10, 5), targets)
    with pytest.raises(ValueError, match="dtype"):
        K.fused_linear_logprobs(torch.randn(3, 4), torch.randn(10, 4).double(), targets)


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        K.selective_logprobs(torch.randn(3, 10), torch.tensor([0, 1, 9]), backend="triton")


def test_imports_without_triton():
    code = textwrap.dedent("""
        import sys; sys.modules["triton"] = None   # make `import triton` fail
        import torch, srmir_kernels as K
        assert not K.triton_available()
        print(K.selective_logprobs(torch.zeros(2, 4), torch.tensor([0, 3])).tolist())
        try:
            K.selective_logprobs(torch.zeros(2, 4), torch.tensor([0, 3]), backend="triton")
        except ValueError as e:
            print("ValueError", e)
    """)
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "ValueError" in out.stdout and "not installed" in out.stdout
    assert "-1.386" in out.stdout  # log(1/4)


def test_gathered_lm_head_without_zero3_is_identity():
    head = torch.nn.Linear(8, 13)
    with K.gathered_lm_head(head) as (w, b):
        assert w is head.weight and b is head.bias
    no_bias = torch.nn.Linear(8, 13, bias=False)
    with K.gathered_lm_head(no_bias) as (w, b):
        assert w is no_bias.weight and b is None


# ---------------------------------------------------------------- soft-capped logits (Gemma-2/3)


def _capped(x64, cap):
    return cap * torch.tanh(x64 / cap)


@pytest.mark.parametrize("backend", BACKENDS)
def test_selective_softcap_matches_fp64(backend):
    """log softmax(cap·tanh(x/cap) / T) and its gradient through the tanh, with a cap (5) small
    enough that many logits (|x| up to ~12) are squashed hard."""
    gen = torch.Generator().manual_seed(7)
    logits = (torch.randn(3, 333, generator=gen) * 4).requires_grad_()
    targets = _targets((3,), 333, gen)
    upstream = torch.randn(3, generator=gen, dtype=torch.float64)
    logp, ent = K.selective_logprobs(logits, targets, T, backend, return_entropy=True, softcap=5.0)
    (logp * upstream).sum().backward()
    l64 = logits.detach().double().requires_grad_()
    ref_logp, ref_ent = _ref_logprobs(_capped(l64, 5.0), targets, T)
    (ref_logp * upstream).sum().backward()
    torch.testing.assert_close(logp.double(), ref_logp, atol=2e-5, rtol=0)
    torch.testing.assert_close(ent.double(), ref_ent, atol=2e-4, rtol=0)
    _assert_grad_close(logits.grad, l64.grad, 2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_softcap_matches_fp64(backend, dtype):
    hidden, weight, b, targets, upstream = _fused_case(dtype, n_shape=(5,), v=301, seed=3)
    hidden = hidden * 3  # logits of several units: the cap bends them
    leaves64 = [x.double().requires_grad_() for x in (hidden, weight, b)]
    h64, w64, b64 = leaves64
    ref_logp, ref_ent = _ref_logprobs(_capped(h64 @ w64.t() + b64, 4.0), targets, T)
    (ref_logp * upstream).sum().backward()
    leaves = [x.clone().requires_grad_() for x in (hidden, weight, b)]
    logp, ent = K.fused_linear_logprobs(leaves[0], leaves[1], targets, T, bias=leaves[2], backend=backend,
                                        return_entropy=True, chunk_tokens=2, chunk_vocab=100, softcap=4.0)
    (logp * upstream.float()).sum().backward()
    tol = TOL[dtype]
    torch.testing.assert_close(logp.double(), ref_logp, atol=tol["fused_logp"], rtol=0)
    torch.testing.assert_close(ent.double(), ref_ent, atol=tol["fused_logp"] * 2, rtol=0)
    for leaf, ref in zip(leaves, leaves64):
        _assert_grad_close(leaf.grad, ref.grad, tol["fused_grad"])


def test_softcap_argument_is_checked():
    with pytest.raises(ValueError, match="softcap"):
        K.selective_logprobs(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), softcap=0.0)


# ---------------------------------------------------------------- DeepSpeed ZeRO-3 (CPU, gloo)

_ZERO3_SCRIPT = textwrap.dedent("""
    import os, sys, torch, deepspeed, torch.distributed as dist
    import srmir_kernels as K
    from deepspeed.utils import safe_get_full_grad
    rank, ws = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=ws)
    V, H, N = 97, 16, 11

    class Policy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.lm_head = torch.nn.Linear(H, H), torch.nn.Linear(H, V)

        def forward(self, x, t=None):  # with t: log-probs computed inside engine.forward
            h = self.body(x)
            return h if t is None else K.fused_linear_logprobs(h, self.lm_head.weight, t, bias=self.lm_head.bias)

    torch.manual_seed(0)
    ref = Policy()
    cfg = {"train_micro_batch_size_per_gpu": 1, "zero_allow_untested_optimizer": True,
           "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
           "optimizer": {"type": "SGD", "params": {"lr": 0.0}}}
    with deepspeed.zero.Init(config_dict_or_path=cfg):
        model = Policy()
    for p_ref, p in zip(ref.parameters(), model.parameters()):  # before the optimizer copies them
        with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
            if rank == 0:
                p.data.copy_(p_ref.data)
    engine, *_ = deepspeed.initialize(model=model, config=cfg, model_parameters=model.parameters())
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(N, H, generator=gen) for _ in range(ws)]
    ts = [torch.randint(0, V, (N,), generator=gen) for _ in range(ws)]
    for r in range(ws):  # DeepSpeed averages over data-parallel ranks
        ref(xs[r], ts[r]).sum().div(ws).backward()
    assert model.lm_head.weight.numel() == 0, "ZeRO-3 should have partitioned lm_head"

    def check(tag):
        err = max((safe_get_full_grad(p).float() - p_ref.grad).abs().max().item()
                  for p_ref, p in zip(ref.parameters(), model.parameters()))
        print(tag, "max_grad_err", err, flush=True)
        engine.step()  # lr = 0: parameters stay equal to ref's; clears the gradients

    def engine_forward_step():  # "E": lm_head read inside engine.forward
        engine.backward(engine(xs[rank], ts[rank]).sum())
        check("E")

    def gather_step():  # "G": fused call outside the engine, backward inside the gather
        hidden = engine(xs[rank])
        with K.gathered_lm_head(model.lm_head) as (w, b):
            engine.backward(K.fused_linear_logprobs(hidden, w, ts[rank], bias=b).sum())
        check("G")

    def backward_after_gather():  # "X": the gather ends before backward
        hidden = engine(xs[rank])
        with K.gathered_lm_head(model.lm_head) as (w, b):
            logp = K.fused_linear_logprobs(hidden, w, ts[rank], bias=b)
        try:
            engine.backward(logp.sum())
            print("X no_error")
        except RuntimeError as e:
            print("X RuntimeError", str(e).splitlines()[0])

    for step in sys.argv[1].split(","):
        {"E": engine_forward_step, "G": gather_step, "X": backward_after_gather}[step]()
    dist.barrier()
    dist.destroy_process_group()  # an exit with gloo's threads still running can abort ("terminate called ...")
    sys.stdout.flush()
    os._exit(0)  # and so can interpreter teardown after it (srmir.runtime.dist.finish)
""")


def _run_zero3(world_size, steps, port):
    """Run ``_ZERO3_SCRIPT`` on ``world_size`` CPU ranks (gloo); returns each rank's stdout."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               WORLD_SIZE=str(world_size), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", _ZERO3_SCRIPT, steps],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(world_size)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in outs]


def _grad_errs(out):
    return [float(line.split()[-1]) for line in out.splitlines() if "max_grad_err" in line]


@pytest.mark.slow
@pytest.mark.parametrize("steps", ["G,G,X", "E,E"])
def test_zero3_gradients_single_rank(steps):
    """G: two steps with the gather helper; E: two steps with lm_head read in engine.forward."""
    pytest.importorskip("deepspeed")
    (out,) = _run_zero3(1, steps, port=29611 + len(steps))
    errs = _grad_errs(out)
    assert len(errs) == 2 and max(errs) < 1e-6, out
    if "X" in steps:  # re-partitioned before backward: a loud error, never silently wrong grads
        assert "X RuntimeError" in out, out


@pytest.mark.slow
@pytest.mark.distributed
def test_zero3_gather_gradients_two_ranks():
    """Each rank holds half of lm_head; gradients through the gathered tensors reach both halves."""
    pytest.importorskip("deepspeed")
    for out in _run_zero3(2, "G,G", port=29622):
        errs = _grad_errs(out)
        assert len(errs) == 2 and max(errs) < 1e-6, out


# ---------------------------------------------------------------- CUDA (skipped without a GPU)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_cuda_fused_and_selective_match_fp64(dtype, backend):
    hidden, weight, b, targets, upstream = _fused_case(dtype, n_shape=(4, 37), h=64, v=3001)
    ref_logp, ref_ent, ref_grads = _fused_reference(hidden, weight, b, targets, upstream, T)
    leaves = [x.cuda().requires_grad_() for x in (hidden, weight, b)]
    logp, ent = K.fused_linear_logprobs(leaves[0], leaves[1], targets.cuda(), T, leaves[2], backend,
                                        return_entropy=True, chunk_tokens=50, chunk_vocab=1024)
    (logp * upstream.cuda().float()).sum().backward()
    tol = TOL[dtype]
    torch.testing.assert_close(logp.double().cpu(), ref_logp, atol=tol["fused_logp"], rtol=0)
    torch.testing.assert_close(ent.double().cpu(), ref_ent, atol=tol["fused_logp"] * 2, rtol=0)
    for leaf, ref in zip(leaves, ref_grads):
        _assert_grad_close(leaf.grad.cpu(), ref, tol["fused_grad"])
    logits = (hidden.cuda() @ weight.cuda().t() + b.cuda()).requires_grad_()
    sel = K.selective_logprobs(logits, targets.cuda(), T, backend)
    l64 = logits.detach().double().cpu().requires_grad_()
    ref_sel = _ref_logprobs(l64, targets, T)[0]
    torch.testing.assert_close(sel.double().cpu(), ref_sel, atol=tol["logp"], rtol=0)
    (sel * upstream.cuda().float()).sum().backward()
    (ref_sel * upstream).sum().backward()
    _assert_grad_close(logits.grad.cpu(), l64.grad, tol["grad"])


@pytest.mark.cuda
@needs_cuda
def test_cuda_auto_picks_triton_and_matches_torch_at_scale():
    gen = torch.Generator(device="cuda").manual_seed(7)
    hidden = torch.randn(2048, 512, generator=gen, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(32003, 512, generator=gen, device="cuda", dtype=torch.bfloat16) / 512**0.5
    targets = torch.randint(0, 32003, (2048,), generator=gen, device="cuda")
    assert K._resolve_backend("auto", hidden.device).__name__.endswith("triton_ops")
    outs = []
    for backend in ("triton", "torch"):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        logp = K.fused_linear_logprobs(h, w, targets, backend=backend)
        logp.sum().backward()
        outs.append((logp, h.grad.float(), w.grad.float()))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-3, rtol=0)
    for a, b in zip(outs[0][1:], outs[1][1:]):
        assert (a - b).abs().max() <= 2e-2 * b.abs().max()
