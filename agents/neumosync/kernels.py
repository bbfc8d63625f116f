"""Restructured kernels for the transformer controller's per-token work (CPU-minded, exact).

The paper's controller runs its feed-forward block on every (sample, neuron) token: B x N = 3,360 tokens on the
CIFAR MLP at batch 16, a (3360, e) hidden activation. Written as plain autograd ops, that block spends more time
moving the hidden activation (and page-faulting freshly allocated copies of it) than multiplying:

- every (T, e) temporary of a step (the hidden, its gradient, the ReLU mask's output) is a fresh multi-megabyte
  allocation, which glibc maps from the kernel and returns on free: ~5,000 minor page faults per step at e = 512;
- PyTorch's CPU GEMM for ``(T, e) @ (e, 14)`` (and ``(e, T) @ (T, 14)``) runs at ~20 GFLOP/s on a 14-wide output
  here, while the same product computed transposed, ``(14, e) @ (e, T)``, runs at ~60;
- the ReLU mask and the bias gradient are separate passes over the full (T, e) tensor.

:class:`FoldedFFN` computes ``relu(x W1^T + b1) W_out^T`` (the controller's feed-forward block with the decoder folded
in, see :meth:`agents.neumosync.controller.EncoderLayer.neurons`) in chunks of tokens whose (chunk, e) tiles stay in
L2 cache, forward and backward, with the GEMMs in their fast orientation. The hidden activation it saves for the
backward pass lives in a :class:`Workspace` that is reused from step to step once the graph that saved it is gone.
The matmuls are the same products as autograd's (the same FLOPs); only their order of summation differs.
"""

from __future__ import annotations

import torch

__all__ = ["Workspace", "FoldedFFN", "folded_ffn", "LayerNormColumns", "layer_norm_columns", "NeuronAttention",
           "neuron_attention", "Matmul", "matmul", "oriented_mm"]


class Workspace:
    """Buffers reused across steps, keyed by name. A buffer is handed out again only when nothing but the workspace
    holds it (``Tensor._use_count() == 1``: an autograd graph that saved it has been run or dropped); otherwise a
    fresh one replaces it. Not module state: copies and pickles start empty."""

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape, like: torch.Tensor) -> torch.Tensor:
        buf = self._buffers.get(name)
        if (buf is None or buf.shape != tuple(shape) or buf.dtype != like.dtype or buf.device != like.device
                or buf._use_count() != 1):
            buf = torch.empty(shape, dtype=like.dtype, device=like.device)
            self._buffers[name] = buf
        return buf

    def clear(self) -> None:
        self._buffers.clear()

    def __deepcopy__(self, memo):
        return Workspace()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()


_LOG2E, _LN2 = 1.4426950408889634, 0.6931471805599453


def oriented_mm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x @ y`` (2-D, or 3-D with equal batch), computed as ``(y^T x^T)^T`` when the product has fewer than 16
    columns and more rows: MKL runs a narrow output 2-5x slower than the same product transposed (e.g. a batch of
    (210, 36) @ (36, 7) at 9 GFLOP/s against (7, 36) @ (36, 210) at 45, one core here). The result is then a
    transposed view."""
    if y.shape[-1] < 16 and y.shape[-1] < x.shape[-2]:
        return (y.mT @ x.mT).mT
    return x @ y


class Matmul(torch.autograd.Function):
    """``a @ b`` whose forward and both backward products are taken in their fast orientation
    (:func:`oriented_mm`). Autograd's own bmm backward computes ``g @ b^T`` as written, which is narrow whenever an
    operand has a short inner dimension (attention heads of 7)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return oriented_mm(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = oriented_mm(g, b.mT) if ctx.needs_input_grad[0] else None
        gb = oriented_mm(a.mT, g) if ctx.needs_input_grad[1] else None
        return ga, gb


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """:class:`Matmul` (``a @ b`` for 2-D or equal-batch 3-D operands)."""
    return Matmul.apply(a, b)


def _chunk(e: int) -> int:
    """Tokens per tile: a (chunk, e) float tile of ~1 MB, the L2 cache of one core here."""
    return max(64, (1 << 18) // max(1, e))


class FoldedFFN(torch.autograd.Function):
    """``y = W_out relu(W1 x + b1)`` for feature-major tokens ``x`` (d, T) (one column per token), ``W1`` (e, d),
    ``b1`` (e,), ``W_out`` (o, e); ``y`` is (o, T).

    Backward, per tile of tokens (H the saved hidden activation (tile, e), G = (g^T W_out) * [H > 0]):
    dx = W1^T G^T, dW1 = G^T x^T, db1 = sum G, dW_out = g H. Gradients for inputs that need none are skipped.
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w_out, workspace, save):
        e, (o, t) = w1.shape[0], (w_out.shape[0], x.shape[1])
        c = min(t, _chunk(e))
        w1t = w1.t()
        y = torch.empty(o, t, dtype=x.dtype, device=x.device)
        if save:
            hidden = workspace.get("ffn_hidden", (t, e), x)
        else:
            tile = workspace.get("ffn_tile", (c, e), x)
        for s in range(0, t, c):
            n = min(c, t - s)
            h = hidden[s:s + n] if save else tile[:n]
            torch.addmm(b1, x[:, s:s + n].t(), w1t, out=h)
            h.relu_()
            torch.mm(w_out, h.t(), out=y[:, s:s + n])  # (o, n): the fast orientation of a narrow product
        if save:
            ctx.save_for_backward(x, w1, w_out, hidden)
            ctx.workspace = workspace
        return y

    @staticmethod
    def backward(ctx, g):
        x, w1, w_out, hidden = ctx.saved_tensors
        need_x, need_w1, need_b1, need_wo = ctx.needs_input_grad[:4]
        t, e = hidden.shape
        c = min(t, _chunk(e))
        gx = torch.empty_like(x) if need_x else None
        gw1t = torch.zeros(w1.shape[1], e, dtype=x.dtype, device=x.device) if need_w1 else None
        gb1 = torch.zeros(e, dtype=x.dtype, device=x.device) if need_b1 else None
        gwo = torch.zeros_like(w_out) if need_wo else None
        w1t = w1.t()
        tile = ctx.workspace.get("ffn_grad_tile", (c, e), x)
        for s in range(0, t, c):
            n = min(c, t - s)
            h, gs = hidden[s:s + n], g[:, s:s + n]  # gs: (o, n)
            # Accumulating GEMMs as addmm(out=acc), not acc.addmm_: the same kernel, and FLOP counters see it.
            if need_wo:
                torch.addmm(gwo, gs, h, out=gwo)
            if not (need_x or need_w1 or need_b1):
                continue
            gh = torch.mm(gs.t(), w_out, out=tile[:n])
            torch.ops.aten.threshold_backward.grad_input(gh, h, 0, grad_input=gh)  # ReLU' from its output
            if need_x:
                torch.mm(w1t, gh.t(), out=gx[:, s:s + n])  # (d, n): the fast orientation for a narrow d
            if need_w1:
                torch.addmm(gw1t, x[:, s:s + n], gh, out=gw1t)
            if need_b1:
                gb1 += gh.sum(0)
        return gx, None if gw1t is None else gw1t.t(), gb1, gwo, None, None


def folded_ffn(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w_out: torch.Tensor,
               workspace: Workspace) -> torch.Tensor:
    """:class:`FoldedFFN` on feature-major (d, T) tokens, (o, T) out; the hidden activation is saved only when a
    gradient can flow."""
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (x, w1, b1, w_out))
    return FoldedFFN.apply(x, w1, b1, w_out, workspace, save)


class LayerNormColumns(torch.autograd.Function):
    """``F.layer_norm`` over the rows of a feature-major (d, T) tensor (each column a token), with affine weight
    and bias. ATen's kernel reduces 14 contiguous values per token, one token at a time; over dim 0 every step is a
    vectorised pass along the tokens."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        mean = x.mean(0)
        xc = x - mean
        rstd = (xc * xc).mean(0).add_(eps).rsqrt_()
        xhat = xc.mul_(rstd)
        ctx.save_for_backward(xhat, rstd, weight)
        return torch.addcmul(bias[:, None], xhat, weight[:, None])

    @staticmethod
    def backward(ctx, g):
        xhat, rstd, weight = ctx.saved_tensors
        gw = (g * xhat).sum(1) if ctx.needs_input_grad[1] else None
        gb = g.sum(1) if ctx.needs_input_grad[2] else None
        gx = None
        if ctx.needs_input_grad[0]:
            gxhat = g * weight[:, None]
            gx = (gxhat - gxhat.mean(0)).sub_(xhat * (gxhat * xhat).mean(0)).mul_(rstd)
        return gx, gw, gb, None


def layer_norm_columns(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    """``norm`` (an affine ``nn.LayerNorm`` over d) applied to every column of ``x`` (d, T)."""
    return LayerNormColumns.apply(x, norm.weight, norm.bias, norm.eps)


class NeuronAttention(torch.autograd.Function):
    """Multi-head softmax attention of the neuron tokens over [neurons; patches], feature-major, exact.

    Shapes (h heads of width k, N neurons, B samples of P patches; every tensor has tokens last)::

        qkv (3, h, k, N): the neurons' queries (unscaled), keys and values; kv (2, h, k, B P): the patches' keys and
        values (None: attention over the neurons only)

        shared block, once per batch:  s_nn = q^T k_n (h, N, N), m_nn = max_j s_nn, E = exp(s_nn - m_nn),
                                       num_nn = v_n E^T (h, k, N), den_nn = sum_j E
        per sample:                    s = k_c^T q (h, B, P, N), m = max(m_nn, max_p s), e = exp(s - m),
                                       c = exp(m_nn - m), out = (v_c e + c num_nn) / (sum_p e + c den_nn)

    with q scaled by ``scale``: the softmax of the full score row [s_nn, s] with one shared maximum per row (a
    streaming-softmax merge; m and c are constants). The output is (h k, B N), i.e. (d, B N), heads merged. The
    exponentials are taken as exp2 of scores in base-2 units (q scaled by ``scale * log2(e)``): the same function,
    and ATen's exp2 runs 3x faster than its exp here, and 30x faster where outputs are subnormal.
    Forward and backward compute the score-sized tensors in place in :class:`Workspace` buffers (one exp pass each,
    no fresh multi-megabyte allocations) and take every product in its fast orientation. Backward, with r = 1 / den,
    G = g r, R = r sum_k g out (per sample, row)::

        d num_nn = sum_b c G,  d den_nn = -sum_b c R,  d s = e (v_c^T G - R),  d v_c = G e^T,
        d s_nn = E (d num_nn^T v_n + d den_nn),  d v_n = d num_nn E,
        d q = scale (k_n d s_nn^T + k_c d s),  d k_n = q d s_nn,  d k_c = q d s^T
    """

    @staticmethod
    def forward(ctx, qkv, kv, scale, batch, workspace, save):
        _, h, k, n = qkv.shape
        tag = "" if save else "_nograd"
        q = qkv[0] * (scale * _LOG2E)  # scores in base-2 units: exp(x) = exp2(x log2 e)
        kn, vn = qkv[1], qkv[2]
        big = workspace.get("attn_nn" + tag, (h, n, n), qkv)
        torch.bmm(q.mT, kn, out=big)
        m_nn = big.amax(-1)
        big.sub_(m_nn[..., None]).exp2_()  # E
        den_nn = big.sum(-1)
        num_nn = torch.bmm(vn, big.mT)  # (h, k, N)
        ctx.scale, ctx.batch, ctx.workspace = scale, batch, workspace
        if kv is None:
            r = den_nn.reciprocal_()[:, None]  # (h, 1, N)
            out = num_nn.mul_(r)
            if save:
                ctx.save_for_backward(q, kn, vn, big, r, out)
            return out.view(h * k, n)
        b = batch
        p = kv.shape[-1] // b
        kc = kv[0]  # (h, k, B P)
        vc = kv[1].view(h, k, b, p).transpose(1, 2).reshape(h * b, k, p)
        e = workspace.get("attn_e" + tag, (h, b * p, n), qkv)
        torch.bmm(kc.mT, q, out=e)
        e4 = e.view(h, b, p, n)
        m = torch.maximum(e4.amax(2), m_nn[:, None])  # (h, B, N)
        e4.sub_(m[:, :, None]).exp2_()
        shift = m_nn[:, None].sub(m).exp2_()
        r = torch.addcmul(e4.sum(2), shift, den_nn[:, None]).reciprocal_()  # (h, B, N)
        num = torch.bmm(vc, e.view(h * b, p, n)).view(h, b, k, n)
        out = torch.empty(h, k, b, n, dtype=qkv.dtype, device=qkv.device)
        o4 = out.transpose(1, 2)  # (h, B, k, N) view of the (d, B, N) output
        torch.addcmul(num, shift[:, :, None], num_nn[:, None], out=o4)
        o4.mul_(r[:, :, None])
        if save:
            ctx.save_for_backward(q, kn, vn, big, r, out, kc, vc, e, shift)
        return out.view(h * k, b * n)

    @staticmethod
    def backward(ctx, g):
        q, kn, vn, big, r, out = ctx.saved_tensors[:6]
        h, k, n = q.shape
        ws = ctx.workspace
        g_qkv = torch.empty(3, h, k, n, dtype=g.dtype, device=g.device)
        g_kv = None
        if len(ctx.saved_tensors) == 6:
            g3 = g.view(h, k, n)
            g_num_nn = g3 * r
            g_den_nn = (g3 * out).sum(1).mul_(r[:, 0]).neg_()
        else:
            kc, vc, e, shift = ctx.saved_tensors[6:]
            b = ctx.batch
            p = kc.shape[-1] // b
            g4 = g.view(h, k, b, n).transpose(1, 2)  # (h, B, k, N)
            gn = torch.mul(g4, r[:, :, None], out=torch.empty(h, b, k, n, dtype=g.dtype, device=g.device))
            rr = (g4 * out.view(h, k, b, n).transpose(1, 2)).sum(2).mul_(r)  # R: (h, B, N)
            g_num_nn = (gn * shift[:, :, None]).sum(1)
            g_den_nn = (rr * shift).sum(1).neg_()
            gs = ws.get("attn_grad", (h, b * p, n), g)
            torch.bmm(vc.mT, gn.view(h * b, k, n), out=gs.view(h * b, p, n))
            gs.view(h, b, p, n).sub_(rr[:, :, None]).mul_(e.view(h, b, p, n))  # d s
            g_vc = torch.bmm(gn.view(h * b, k, n), e.view(h * b, p, n).mT)  # (h B, k, P)
            g_kv = torch.empty(2, h, k, b * p, dtype=g.dtype, device=g.device)
            torch.bmm(q, gs.mT, out=g_kv[0]).mul_(_LN2)  # q is scale log2(e) times the query
            g_kv[1].view(h, k, b, p).copy_(g_vc.view(h, b, k, p).transpose(1, 2))
        gbig = ws.get("attn_nn_grad", (h, n, n), g)
        torch.bmm(g_num_nn.mT, vn, out=gbig)
        gbig.add_(g_den_nn[..., None]).mul_(big)  # d s_nn
        torch.bmm(kn, gbig.mT, out=g_qkv[0])
        if g_kv is not None:
            torch.baddbmm(g_qkv[0], kc, gs, out=g_qkv[0])
        g_qkv[0].mul_(ctx.scale)
        torch.bmm(q, gbig, out=g_qkv[1]).mul_(_LN2)
        torch.bmm(g_num_nn, big, out=g_qkv[2])
        return g_qkv, g_kv, None, None, None, None


def neuron_attention(qkv: torch.Tensor, kv: torch.Tensor | None, scale: float, batch: int,
                     workspace: Workspace) -> torch.Tensor:
    """:class:`NeuronAttention`; its buffers are kept for the backward pass only when a gradient can flow."""
    save = torch.is_grad_enabled() and (qkv.requires_grad or (kv is not None and kv.requires_grad))
    return NeuronAttention.apply(qkv, kv, float(scale), int(batch), workspace, save)
