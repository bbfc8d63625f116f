"""Restructured kernels for the transformer controller (CPU-minded, exact).

The paper's controller runs its encoder layer on every (sample, neuron) token: B x N = 3,360 tokens on the CIFAR MLP
at batch 16, with a (3360, e) feed-forward hidden activation and (B, heads, N, P) neuron-patch attention scores.
Written as plain autograd ops, that step spends most of its time outside the matmuls:

- every score- or hidden-sized temporary is a fresh multi-megabyte allocation, which glibc maps from the kernel and
  returns on free: ~5,000 minor page faults per step at e = 512;
- PyTorch's CPU GEMMs with a narrow output (14 features, heads of 7, 4 coefficients) run 2-5x slower than the same
  products transposed, e.g. ``(3360, e) @ (e, 14)`` at ~20 GFLOP/s against ``(14, e) @ (e, 3360)`` at ~60;
- about 500 small ops per step, each paying Python, dispatcher and autograd-graph overhead; ATen's ``exp`` is 3x
  slower than its ``exp2`` here (30x where outputs are subnormal); LayerNorm over 14 features is one token at a time.

So the controller is written feature-major (tokens are columns: every narrow dimension is a row count) and its
encoder-decoder is one autograd node, :class:`TransformerBlock`, with a hand-written backward built from three
pieces that also exist as autograd functions of their own (tested one by one against autograd):

- :class:`NeuronAttention`: the neurons' softmax attention over [neurons; patches] (shared neuron block once per
  batch, per-sample patch block, a streaming-softmax merge), score-sized tensors in reused buffers, exp2;
- :class:`LayerNormColumns`: LayerNorm of every column of a (d, T) tensor (vectorised along the tokens);
- :class:`FoldedFFN`: the feed-forward block with the decoder folded into its output layer, tiled over tokens so
  that its (tile, e) tiles stay in cache, the hidden activation kept in a reused buffer.

The matmuls are the products autograd would form (the same FLOPs, which ``benchmarks/neumosync_step.py`` counts);
only orders of summation differ. Buffers live in a :class:`Workspace`, reused from step to step once the graph that
saved them is gone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["Workspace", "FoldedFFN", "folded_ffn", "LayerNormColumns", "layer_norm_columns", "NeuronAttention",
           "neuron_attention", "TransformerBlock", "transformer_block"]

_LOG2E, _LN2 = 1.4426950408889634, 0.6931471805599453


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


def _needs_save(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ---------------------------------------------------------------------------------------------- feed-forward block
def _chunk(e: int) -> int:
    """Tokens per tile: a (chunk, e) float tile of ~2 MB (measured best of 256 KB - 4 MB at e = 128 and 512 here,
    one core with 1 MB of L2)."""
    return max(64, (1 << 19) // max(1, e))


def _ffn_forward(x, w1, b1, w_out, workspace, save, y):
    """y += W_out relu(W1 x + b1) for x (d, T), y (o, T); returns the hidden activation (T, e) if ``save``."""
    e, t = w1.shape[0], x.shape[1]
    c = min(t, _chunk(e))
    w1t = w1.t()
    hidden = workspace.get("ffn_hidden", (t, e), x) if save else None
    tile = None if save else workspace.get("ffn_tile", (c, e), x)
    for s in range(0, t, c):
        n = min(c, t - s)
        h = hidden[s:s + n] if save else tile[:n]
        torch.addmm(b1, x[:, s:s + n].t(), w1t, out=h)
        h.relu_()
        ys = y[:, s:s + n]
        torch.addmm(ys, w_out, h.t(), out=ys)  # (o, n): the fast orientation of a narrow product
    return hidden


def _ffn_backward(g, x, w1, w_out, hidden, workspace, need=(True, True, True, True)):
    """Gradients (x, W1, b1, W_out) of ``W_out relu(W1 x + b1)`` from the saved hidden activation; per tile,
    G = (g^T W_out) * [H > 0]: dx = W1^T G^T, dW1 = G^T x^T, db1 = sum G, dW_out = g H."""
    need_x, need_w1, need_b1, need_wo = need
    t, e = hidden.shape
    c = min(t, _chunk(e))
    gx = torch.empty_like(x) if need_x else None
    gw1t = torch.zeros(w1.shape[1], e, dtype=x.dtype, device=x.device) if need_w1 else None
    gb1 = torch.zeros(e, dtype=x.dtype, device=x.device) if need_b1 else None
    gwo = torch.zeros_like(w_out) if need_wo else None
    w1t = w1.t()
    tile = workspace.get("ffn_grad_tile", (c, e), x)
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
    return gx, None if gw1t is None else gw1t.t(), gb1, gwo


class FoldedFFN(torch.autograd.Function):
    """``y = W_out relu(W1 x + b1)`` for feature-major tokens ``x`` (d, T) (one column per token), ``W1`` (e, d),
    ``b1`` (e,), ``W_out`` (o, e); ``y`` is (o, T). Tiled over tokens; backward from the saved hidden activation
    (:func:`_ffn_backward`)."""

    @staticmethod
    def forward(ctx, x, w1, b1, w_out, workspace, save):
        y = torch.zeros(w_out.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
        hidden = _ffn_forward(x, w1, b1, w_out, workspace, save, y)
        if save:
            ctx.save_for_backward(x, w1, w_out, hidden)
            ctx.workspace = workspace
        return y

    @staticmethod
    def backward(ctx, g):
        x, w1, w_out, hidden = ctx.saved_tensors
        return (*_ffn_backward(g, x, w1, w_out, hidden, ctx.workspace, ctx.needs_input_grad[:4]), None, None)


def folded_ffn(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w_out: torch.Tensor,
               workspace: Workspace) -> torch.Tensor:
    """:class:`FoldedFFN` on feature-major (d, T) tokens, (o, T) out; the hidden activation is saved only when a
    gradient can flow."""
    return FoldedFFN.apply(x, w1, b1, w_out, workspace, _needs_save(x, w1, b1, w_out))


# ---------------------------------------------------------------------------------------------- LayerNorm
def _lnc_forward(x, weight, bias, eps):
    """LayerNorm of every column of x (d, T): (y, xhat, rstd)."""
    mean = x.mean(0)
    xc = x - mean
    rstd = (xc * xc).mean(0).add_(eps).rsqrt_()
    xhat = xc.mul_(rstd)
    return torch.addcmul(bias[:, None], xhat, weight[:, None]), xhat, rstd


def _lnc_backward(g, xhat, rstd, weight):
    """(dx, dweight, dbias) of :func:`_lnc_forward`."""
    gxhat = g * weight[:, None]
    gx = (gxhat - gxhat.mean(0)).sub_(xhat * (gxhat * xhat).mean(0)).mul_(rstd)
    return gx, (g * xhat).sum(1), g.sum(1)


class LayerNormColumns(torch.autograd.Function):
    """``F.layer_norm`` over the rows of a feature-major (d, T) tensor (each column a token), with affine weight
    and bias. ATen's kernel reduces 14 contiguous values per token, one token at a time; over dim 0 every step is a
    vectorised pass along the tokens."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, xhat, rstd = _lnc_forward(x, weight, bias, eps)
        ctx.save_for_backward(xhat, rstd, weight)
        return y

    @staticmethod
    def backward(ctx, g):
        return (*_lnc_backward(g, *ctx.saved_tensors), None)


def layer_norm_columns(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    """``norm`` (an affine ``nn.LayerNorm`` over d) applied to every column of ``x`` (d, T)."""
    return LayerNormColumns.apply(x, norm.weight, norm.bias, norm.eps)


# ---------------------------------------------------------------------------------------------- attention
def _attn_forward(qkv, kv, scale, b, workspace, save):
    """The attention of :class:`NeuronAttention`: (out (d, B N), saved state or None)."""
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
    if kv is None:
        r = den_nn.reciprocal_()[:, None]  # (h, 1, N)
        out = num_nn.mul_(r)
        return out.view(h * k, n), ((q, kn, vn, big, r, out) if save else None)
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
    return out.view(h * k, b * n), ((q, kn, vn, big, r, out, kc, vc, e, shift) if save else None)


def _attn_backward(g, saved, scale, b, workspace):
    """(d qkv (3, h, k, N), d kv (2, h, k, B P) or None) of :func:`_attn_forward`."""
    q, kn, vn, big, r, out = saved[:6]
    h, k, n = q.shape
    g_qkv = torch.empty(3, h, k, n, dtype=g.dtype, device=g.device)
    g_kv = None
    if len(saved) == 6:
        g3 = g.view(h, k, n)
        g_num_nn = g3 * r
        g_den_nn = (g3 * out).sum(1).mul_(r[:, 0]).neg_()
    else:
        kc, vc, e, shift = saved[6:]
        p = kc.shape[-1] // b
        g4 = g.view(h, k, b, n).transpose(1, 2)  # (h, B, k, N)
        gn = torch.mul(g4, r[:, :, None], out=torch.empty(h, b, k, n, dtype=g.dtype, device=g.device))
        rr = (g4 * out.view(h, k, b, n).transpose(1, 2)).sum(2).mul_(r)  # R: (h, B, N)
        g_num_nn = (gn * shift[:, :, None]).sum(1)
        g_den_nn = (rr * shift).sum(1).neg_()
        gs = workspace.get("attn_grad", (h, b * p, n), g)
        torch.bmm(vc.mT, gn.view(h * b, k, n), out=gs.view(h * b, p, n))
        gs.view(h, b, p, n).sub_(rr[:, :, None]).mul_(e.view(h, b, p, n))  # d s
        g_vc = torch.bmm(gn.view(h * b, k, n), e.view(h * b, p, n).mT)  # (h B, k, P)
        g_kv = torch.empty(2, h, k, b * p, dtype=g.dtype, device=g.device)
        torch.bmm(q, gs.mT, out=g_kv[0]).mul_(_LN2)  # q is scale log2(e) times the query
        g_kv[1].view(h, k, b, p).copy_(g_vc.view(h, b, k, p).transpose(1, 2))
    gbig = workspace.get("attn_nn_grad", (h, n, n), g)
    torch.bmm(g_num_nn.mT, vn, out=gbig)
    gbig.add_(g_den_nn[..., None]).mul_(big)  # d s_nn
    torch.bmm(kn, gbig.mT, out=g_qkv[0])
    if g_kv is not None:
        torch.baddbmm(g_qkv[0], kc, gs, out=g_qkv[0])
    g_qkv[0].mul_(scale)
    torch.bmm(q, gbig, out=g_qkv[1]).mul_(_LN2)
    torch.bmm(g_num_nn, big, out=g_qkv[2])
    return g_qkv, g_kv


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
        out, saved = _attn_forward(qkv, kv, scale, batch, workspace, save)
        if save:
            ctx.save_for_backward(*saved)
            ctx.scale, ctx.batch, ctx.workspace = scale, batch, workspace
        return out

    @staticmethod
    def backward(ctx, g):
        return (*_attn_backward(g, ctx.saved_tensors, ctx.scale, ctx.batch, ctx.workspace), None, None, None, None)


def neuron_attention(qkv: torch.Tensor, kv: torch.Tensor | None, scale: float, batch: int,
                     workspace: Workspace) -> torch.Tensor:
    """:class:`NeuronAttention`; its buffers are kept for the backward pass only when a gradient can flow."""
    return NeuronAttention.apply(qkv, kv, float(scale), int(batch), workspace, _needs_save(qkv, kv))


# ---------------------------------------------------------------------------------------------- the whole block
class TransformerBlock(torch.autograd.Function):
    """The transformer controller's encoder layer at the neuron positions plus its linear decoder, one node.

    Inputs: neuron tokens ``tok`` (N, d), feature-major patch tokens ``ctx_t`` (d, B P) or None, and the encoder's
    and decoder's parameters. With n1 = LN1(tok), c1 = LN1(ctx) (columns), the attention a of
    :class:`NeuronAttention` on qkv = W_qkv n1^T + b_qkv and kv = W_kv c1 + b_kv::

        u = W_p a + b_p + tok^T (d, B N),   y = D u + D b2 + b_D + (D W2) relu(W1 LN2(u) + b1)   (out, B N)

    the pre-LN encoder layer with its feed-forward output layer folded into the decoder (see
    :meth:`agents.neumosync.controller.EncoderLayer.neurons`). Running it as one node keeps autograd's per-op
    bookkeeping out of ~150 small ops per step; the backward is the chain rule through the same products.
    """

    @staticmethod
    def forward(ctx, tok, ctx_t, ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, w1, b1, w2, b2,
                dec_w, dec_b, heads, scale, batch, eps1, eps2, workspace, save):
        n, d = tok.shape
        k = d // heads
        n1, mean1, rstd1 = torch.native_layer_norm(tok, (d,), ln1_w, ln1_b, eps1)
        qkv = torch.addmm(qkv_b[:, None], qkv_w, n1.t())  # (3d, N)
        kv = c1 = c_hat = c_rstd = None
        if ctx_t is not None:
            c1, c_hat, c_rstd = _lnc_forward(ctx_t, ln1_w, ln1_b, eps1)
            kv = torch.addmm(qkv_b[d:, None], qkv_w[d:], c1)  # (2d, B P)
        att, att_saved = _attn_forward(qkv.view(3, heads, k, n), None if kv is None else kv.view(2, heads, k, -1),
                                       scale, batch, workspace, save)
        u = torch.addmm(proj_b[:, None], proj_w, att).view(d, batch, n).add_(tok.t()[:, None]).view(d, -1)
        n2, x_hat, x_rstd = _lnc_forward(u, ln2_w, ln2_b, eps2)
        w_out = dec_w @ w2  # (out, e)
        b_out = torch.addmv(dec_b, dec_w, b2)
        y = torch.addmm(b_out[:, None], dec_w, u)
        hidden = _ffn_forward(n2, w1, b1, w_out, workspace, save, y)
        if save:
            ctx.save_for_backward(tok, n1, mean1, rstd1, c1, c_hat, c_rstd, att, u, n2, x_hat, x_rstd, hidden,
                                  ln1_w, ln1_b, qkv_w, proj_w, ln2_w, w1, w2, b2, dec_w, w_out, *att_saved)
            ctx.meta = (heads, scale, batch, workspace)
        return y

    @staticmethod
    def backward(ctx, g):
        (tok, n1, mean1, rstd1, c1, c_hat, c_rstd, att, u, n2, x_hat, x_rstd, hidden,
         ln1_w, ln1_b, qkv_w, proj_w, ln2_w, w1, w2, b2, dec_w, w_out) = ctx.saved_tensors[:23]
        att_saved = ctx.saved_tensors[23:]
        heads, scale, batch, workspace = ctx.meta
        n, d = tok.shape
        # decoder and feed-forward block
        g_n2, g_w1, g_b1, g_wout = _ffn_backward(g, n2, w1, w_out, hidden, workspace)
        g_b_out = g.sum(1)
        g_dec_w = torch.addmm(torch.outer(g_b_out, b2), g, u.t())
        torch.addmm(g_dec_w, g_wout, w2.t(), out=g_dec_w)  # w_out = D W2
        g_w2 = dec_w.t() @ g_wout
        g_b2 = torch.mv(dec_w.t(), g_b_out)
        g_u, g_ln2_w, g_ln2_b = _lnc_backward(g_n2, x_hat, x_rstd, ln2_w)
        torch.addmm(g_u, dec_w.t(), g, out=g_u)
        # attention block and its residual
        g_tok = g_u.view(d, batch, n).sum(1).t()
        g_proj_w = g_u @ att.t()
        g_proj_b = g_u.sum(1)
        g_att = proj_w.t() @ g_u
        g_qkv, g_kv = _attn_backward(g_att, att_saved, scale, batch, workspace)
        g_qkv = g_qkv.view(3 * d, n)
        g_qkv_w = g_qkv @ n1
        g_qkv_b = g_qkv.sum(1)
        g_n1 = (qkv_w.t() @ g_qkv).t()
        g_ctx = None
        if g_kv is not None:
            g_kv = g_kv.view(2 * d, -1)
            torch.addmm(g_qkv_w[d:], g_kv, c1.t(), out=g_qkv_w[d:])
            g_qkv_b[d:] += g_kv.sum(1)
            g_ctx, g_ln1_w_c, g_ln1_b_c = _lnc_backward(qkv_w[d:].t() @ g_kv, c_hat, c_rstd, ln1_w)
        g_tok_ln, g_ln1_w, g_ln1_b = torch.ops.aten.native_layer_norm_backward(
            g_n1, tok, (d,), mean1, rstd1, ln1_w, ln1_b, (True, True, True))
        g_tok = g_tok + g_tok_ln
        if g_kv is not None:
            g_ln1_w, g_ln1_b = g_ln1_w + g_ln1_w_c, g_ln1_b + g_ln1_b_c
        return (g_tok, g_ctx, g_ln1_w, g_ln1_b, g_qkv_w, g_qkv_b, g_proj_w, g_proj_b, g_ln2_w, g_ln2_b, g_w1, g_b1,
                g_w2, g_b2, g_dec_w, g_b_out, None, None, None, None, None, None, None)


def transformer_block(encoder, decoder: torch.nn.Linear, tok: torch.Tensor, ctx_t: torch.Tensor | None,
                      batch: int) -> torch.Tensor:
    """:class:`TransformerBlock` for an :class:`agents.neumosync.controller.EncoderLayer` ``encoder`` and its linear
    ``decoder``: (out, B N)."""
    ff1, ff2 = encoder.ff[0], encoder.ff[2]
    params = (encoder.norm1.weight, encoder.norm1.bias, encoder.qkv.weight, encoder.qkv.bias, encoder.proj.weight,
              encoder.proj.bias, encoder.norm2.weight, encoder.norm2.bias, ff1.weight, ff1.bias, ff2.weight,
              ff2.bias, decoder.weight, decoder.bias)
    save = _needs_save(tok, ctx_t, *params)
    return TransformerBlock.apply(tok, ctx_t, *params, encoder.heads, float(encoder.scale), int(batch),
                                  encoder.norm1.eps, encoder.norm2.eps, encoder.workspace, save)
