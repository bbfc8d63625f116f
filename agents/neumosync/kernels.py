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

__all__ = ["Workspace", "FoldedFFN", "folded_ffn", "Matmul", "matmul", "PatchAttention", "patch_attention"]


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
    """Tokens per tile: a (chunk, e) float tile of ~512 KB, half the L2 cache of one core here."""
    return max(64, (1 << 17) // max(1, e))


class FoldedFFN(torch.autograd.Function):
    """``y^T = (relu(x W1^T + b1) W_out^T)^T`` (o, T) for tokens ``x`` (T, d), ``W1`` (e, d), ``b1`` (e,), ``W_out``
    (o, e): the output comes transposed, (o, T), the orientation in which its narrow GEMM is fast.

    Backward (per tile of tokens; H the saved hidden activation, G = (g W_out) * [H > 0]):
    dx = G W1, dW1 = G^T x, db1 = sum G, dW_out = g^T H. Gradients for inputs that do not need them are skipped.
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w_out, workspace, save):
        t, e, o = x.shape[0], w1.shape[0], w_out.shape[0]
        c = min(t, _chunk(e))
        w1t = w1.t()
        y = torch.empty(o, t, dtype=x.dtype, device=x.device)  # transposed: (o, T)
        if save:
            hidden = workspace.get("ffn_hidden", (t, e), x)
        else:
            tile = workspace.get("ffn_tile", (c, e), x)
        for s in range(0, t, c):
            n = min(c, t - s)
            h = hidden[s:s + n] if save else tile[:n]
            torch.addmm(b1, x[s:s + n], w1t, out=h)
            h.relu_()
            y[:, s:s + n] = w_out @ h.t()  # (o, n): the fast orientation of a narrow product
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
                gx[s:s + n] = (w1t @ gh.t()).t()  # (d, n) GEMM: the fast orientation for a narrow d
            if need_w1:
                torch.addmm(gw1t, x[s:s + n].t(), gh, out=gw1t)
            if need_b1:
                gb1 += gh.sum(0)
        return gx, None if gw1t is None else gw1t.t(), gb1, gwo, None, None


def folded_ffn(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w_out: torch.Tensor,
               workspace: Workspace) -> torch.Tensor:
    """:class:`FoldedFFN` on (T, d) tokens, (o, T) out; the hidden activation is saved only when a gradient can
    flow."""
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (x, w1, b1, w_out))
    return FoldedFFN.apply(x, w1, b1, w_out, workspace, save)


class PatchAttention(torch.autograd.Function):
    """The per-sample half of the neurons' attention over [neurons; patches], merged with the shared half.

    Feature-major shapes (h heads of width k, N neurons, B samples of P patches)::

        q (h, k, N) (scaled queries), kc (h, k, B P), vc (h B, k, P),
        m_nn, den_nn (h, N), num_nn (h, k, N): the neuron block's row maximum, softmax denominator and numerator

        s = kc^T q (h, B, P, N),  m = max(m_nn, max_p s),  e = exp(s - m),  c = exp(m_nn - m)
        out = (vc e + c num_nn) / (sum_p e + c den_nn)       (h, B, k, N)

    i.e. softmax attention over both key sets with one shared maximum per row (a streaming-softmax merge; m and c
    are constants, as in :meth:`agents.neumosync.controller.EncoderLayer.neurons`). Forward and backward write the
    (h, B P, N) score-sized tensors in place into :class:`Workspace` buffers (one exp pass, no fresh multi-megabyte
    allocations) and take every product in its fast orientation. Backward, with r = 1 / den and G = g r::

        d num_nn = sum_b c G,  d den_nn = -sum_b c r sum_k g out,
        d s = e (vc^T G - r sum_k g out),  d vc = G e^T,  d q = kc d s,  d kc = q d s^T
    """

    @staticmethod
    def forward(ctx, q, kc, vc, m_nn, num_nn, den_nn, workspace, save):
        h, k, n = q.shape
        b, p = vc.shape[0] // h, vc.shape[2]
        e = workspace.get("attn_e" if save else "attn_e_nograd", (h, b * p, n), q)
        torch.bmm(kc.mT, q, out=e)  # scores (h, B P, N)
        e4 = e.view(h, b, p, n)
        m = torch.maximum(e4.amax(2), m_nn[:, None])  # (h, B, N)
        e4.sub_(m[:, :, None]).exp_()
        shift = torch.exp(m_nn[:, None] - m)
        r = torch.addcmul(e4.sum(2), shift, den_nn[:, None]).reciprocal_()  # (h, B, N)
        num = torch.bmm(vc, e.view(h * b, p, n)).view(h, b, k, n)
        out = torch.addcmul(num, shift[:, :, None], num_nn[:, None]).mul_(r[:, :, None])
        if save:
            ctx.save_for_backward(q, kc, vc, e, shift, r, out)
            ctx.workspace = workspace
        return out

    @staticmethod
    def backward(ctx, g):
        q, kc, vc, e, shift, r, out = ctx.saved_tensors
        h, k, n = q.shape
        b, p = vc.shape[0] // h, vc.shape[2]
        gn = torch.mul(g, r[:, :, None], out=torch.empty(h, b, k, n, dtype=g.dtype, device=g.device))  # g may be strided
        gden = (g * out).sum(2).mul_(r)  # minus the gradient of den: (h, B, N)
        g_num_nn = (gn * shift[:, :, None]).sum(1)
        g_den_nn = -(gden * shift).sum(1)
        gs = ctx.workspace.get("attn_grad", (h, b * p, n), q)
        torch.bmm(vc.mT, gn.view(h * b, k, n), out=gs.view(h * b, p, n))
        gs.view(h, b, p, n).sub_(gden[:, :, None]).mul_(e.view(h, b, p, n))  # d s
        g_vc = torch.bmm(gn.view(h * b, k, n), e.view(h * b, p, n).mT)  # (h B, k, P)
        g_q = torch.bmm(kc, gs)  # (h, k, N)
        g_kc = torch.bmm(q, gs.mT)  # (h, k, B P)
        return g_q, g_kc, g_vc, None, g_num_nn, g_den_nn, None, None


def patch_attention(q, kc, vc, m_nn, num_nn, den_nn, workspace: Workspace) -> torch.Tensor:
    """:class:`PatchAttention`; its buffers are kept for the backward pass only when a gradient can flow."""
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (q, kc, vc, num_nn, den_nn))
    return PatchAttention.apply(q, kc, vc, m_nn.detach(), num_nn, den_nn, workspace, save)
