"""NeuroSync controllers: neuron features (+ the input image) -> four raw coefficients per neuron.

Every controller maps ``features`` (N, F) (one row per neuron: learnable vector, position, activity EMA) and the
input batch ``x`` (B, C, H, W) to ``(B, N, 4)`` raw outputs, or ``(1, N, 4)`` when it ignores the input. The order
of the four outputs is (delta a_SM, a_WC, a_AL, a_ARM).

- :class:`TransformerController`: the paper's module, a one-layer encoder-only transformer with two heads over neuron
  tokens plus image-patch tokens from a single-layer CNN (Appendix C.1, J), a linear decoder to four coefficients.
- :class:`LowRankController` (``lowrank``, not in the paper: a speed variant): the encoder layer runs once per
  batch on the neuron tokens only; the image enters through a rank-d bilinear read-out (see its docstring for the
  deviation).
- :class:`Conv1dController`: kernel-1 1D convolutions over the neuron sequence (C.5, Table 15): parameter sharing
  without attention; the image enters as a pooled patch embedding added to every neuron token.
- :class:`MLPController`: no parameter sharing (C.5): one MLP from all neuron features (and the pooled image) to
  all coefficients; its size grows with the number of neurons.
- :class:`SparseController`: the scalable encoder-decoder of Appendix E.1: a fraction K of neurons (drawn per
  input) plus the patches go through the transformer encoder; queries for all N neurons (learnable features and
  position) cross-attend to the encoded tokens; a two-layer MLP decodes the coefficients.
- :class:`NoController`: the 'w/o NeuroSync' ablation: a learnable (N, 4) table, the same for every input.

``input_conditioned=False`` (Appendix G.5) drops the image tokens: coefficients depend on neuron features only.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from agents.neumosync.kernels import Workspace, transformer_block

__all__ = ["EncoderLayer", "CrossAttention", "PatchEncoder", "TransformerController", "LowRankController",
           "Conv1dController", "MLPController", "SparseController", "NoController", "build_controller", "CONTROLLERS"]


class PatchEncoder(nn.Module):
    """Single-layer CNN tokeniser: non-overlapping ``patch`` x ``patch`` patches -> ``d`` dims, plus a learnable
    position embedding per patch (ViT-style)."""

    def __init__(self, input_shape, d: int, patch: int = 5):
        super().__init__()
        c, h, w = input_shape
        patch = max(1, min(patch, h, w))
        self.conv = nn.Conv2d(c, d, patch, stride=patch)
        self.num_patches = (h // patch) * (w // patch)
        self.pos = nn.Parameter(torch.zeros(self.num_patches, d))
        self.reset_parameters()

    def reset_parameters(self):
        self.conv.reset_parameters()
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x):
        return self.conv(x).flatten(2).transpose(1, 2) + self.pos

    def tokens_t(self, x):
        """:meth:`forward` feature-major, (d, B P): the stride-``patch`` convolution as one GEMM against the
        unfolded patches (non-overlapping, so unfolding is a reshape and one copy), the orientation in which its
        14-wide output runs at full speed."""
        k = self.conv.kernel_size[0]
        b, c, h, w = x.shape
        gh, gw = h // k, w // k
        cols = x[:, :, :gh * k, :gw * k].reshape(b, c, gh, k, gw, k).permute(1, 3, 5, 0, 2, 4).reshape(c * k * k, -1)
        d = self.pos.shape[1]
        t = torch.addmm(self.conv.bias[:, None], self.conv.weight.view(d, -1), cols)  # (d, B P)
        return (t.view(d, b, gh * gw) + self.pos.t()[:, None]).view(d, -1)


def _heads(t: torch.Tensor, h: int) -> torch.Tensor:
    """(..., L, d) -> (..., h, L, d / h)."""
    return t.unflatten(-1, (h, -1)).transpose(-3, -2)


def _merge(t: torch.Tensor) -> torch.Tensor:
    """(..., h, L, dh) -> (..., L, h * dh)."""
    return t.transpose(-3, -2).flatten(-2)


class EncoderLayer(nn.Module):
    """One pre-LN transformer encoder layer (multi-head self-attention, ReLU feed-forward, no dropout).

    Same parameters as ``nn.TransformerEncoderLayer(norm_first=True)`` (4d^2 + 4d attention, 2 d d_ff + d_ff + d
    feed-forward, two LayerNorms). :meth:`forward` (every token attends to every token: the sparse controller's
    encoder) uses PyTorch's fused attention, which never builds the full score tensor. :meth:`neurons` (the
    transformer controller) is written with plain matmuls to exploit that neuron tokens are shared by every sample.
    """
    # Measured (CPU): fused attention was 2x faster than plain matmuls for 16 x 517 tokens, equal for a few hundred.

    def __init__(self, d: int, heads: int, d_ff: int):
        super().__init__()
        if d % heads:
            raise ValueError(f"d_model ({d}) must be divisible by heads ({heads})")
        self.heads = int(heads)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, d_ff), nn.ReLU(), nn.Linear(d_ff, d))
        self.scale = (d // heads) ** -0.5
        self.workspace = Workspace()  # reused buffers of the fused feed-forward kernel (not module state)

    def _ffn(self, h):
        return h + self.ff(self.norm2(h))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Every token attends to every token: (B, L, d) -> (B, L, d)."""
        q, k, v = (_heads(t, self.heads) for t in self.qkv(self.norm1(tokens)).chunk(3, -1))
        return self._ffn(tokens + self.proj(_merge(F.scaled_dot_product_attention(q, k, v, scale=self.scale))))

    def neurons(self, neurons: torch.Tensor, context: torch.Tensor | None,
                decoder: nn.Linear | None = None, fused: bool = True) -> torch.Tensor:
        """Outputs at the neuron positions of the sequence [neurons; context]: (N, d), (B, P, d) -> (B, N, d)
        (``(1, N, d)`` without context); with ``decoder``, ``decoder`` applied to them: (B, N, out).

        Equal to ``forward(cat([neurons expanded, context]))[:, :N]``, computed with what the structure allows:

        - the neuron-neuron scores do not depend on the sample: their softmax numerator and its product with the
          neuron values are computed once; only the N x P neuron-patch block is per sample (a streaming-softmax
          merge of the two blocks); context tokens need keys and values only, not queries;
        - with a linear ``decoder`` D after the residual feed-forward block, D(u + W2 relu(.) + b2) =
          D u + (D W2) relu(.) + D b2: the feed-forward output layer is folded into the decoder (one (out, d_ff)
          matrix per batch), so the per-token output GEMM has ``out`` columns instead of d.

        With a decoder, ``fused`` (default) runs the restructured kernel :class:`agents.neumosync.kernels.
        TransformerBlock` (:meth:`neurons_t`); ``fused=False`` the same products as plain autograd ops
        (:meth:`_neurons_reference`).
        """
        if decoder is None:
            return self._ffn(self._attend(neurons, context))
        if not fused:
            return self._neurons_reference(neurons, context, decoder)
        context_t = None if context is None else context.reshape(-1, neurons.shape[1]).t()
        return self.neurons_t(neurons, context_t, 1 if context is None else context.shape[0], decoder)

    def _attend(self, neurons, context):
        """The attention sub-block's residual output at the neuron positions, plain autograd ops: (B or 1, N, d)."""
        d, h = neurons.shape[-1], self.heads
        qn, kn, vn = _heads(self.qkv(self.norm1(neurons)), 3 * h).split(h, 0)  # (h, N, dh) each
        qn = qn * self.scale
        s_nn = qn @ kn.transpose(-1, -2)  # (h, N, N)
        if context is None:
            return (neurons + self.proj(_merge(torch.softmax(s_nn, -1) @ vn)))[None]
        m_nn = s_nn.amax(-1, keepdim=True).detach()
        e_nn = torch.exp(s_nn - m_nn)
        num_nn, den_nn = e_nn @ vn, e_nn.sum(-1, keepdim=True)  # (h, N, dh), (h, N, 1)
        kvc = F.linear(self.norm1(context), self.qkv.weight[d:], self.qkv.bias[d:])  # (B, P, 2d)
        kc, vc = _heads(kvc, 2 * h).split(h, 1)  # (B, h, P, dh) each
        s_nc = qn @ kc.transpose(-1, -2)  # (B, h, N, P)
        m = torch.maximum(m_nn, s_nc.amax(-1, keepdim=True)).detach()  # (B, h, N, 1)
        e_nc = torch.exp(s_nc - m)
        shift = torch.exp(m_nn - m)
        out = torch.addcmul(e_nc @ vc, shift, num_nn) / torch.addcmul(e_nc.sum(-1, keepdim=True), shift, den_nn)
        return neurons + self.proj(_merge(out))  # (B, N, d)

    def _neurons_reference(self, neurons, context, decoder):
        """:meth:`neurons` with a decoder as plain autograd ops, token-major (the kernel's reference)."""
        u = self._attend(neurons, context)
        d = u.shape[-1]
        lin1, lin2 = self.ff[0], self.ff[2]
        u2 = u.reshape(-1, d)
        hidden = torch.relu_(torch.addmm(lin1.bias, self.norm2(u2), lin1.weight.t()))  # (B N, d_ff)
        w_out = decoder.weight @ lin2.weight  # (out, d_ff)
        b_out = torch.addmv(decoder.bias, decoder.weight, lin2.bias)
        out = torch.addmm(torch.addmm(b_out, u2, decoder.weight.t()), hidden, w_out.t())
        return out.view(*u.shape[:-1], -1)

    def neurons_t(self, neurons: torch.Tensor, context_t: torch.Tensor | None, batch: int,
                  decoder: nn.Linear) -> torch.Tensor:
        """:meth:`neurons` with a decoder for feature-major context tokens ``context_t`` (d, B P) (None: no
        context, ``batch`` 1): (B, N, out)."""
        n = neurons.shape[0]
        y = transformer_block(self, decoder, neurons, context_t, batch)  # (out, B N)
        return y.view(-1, batch, n).permute(1, 2, 0)


class CrossAttention(nn.Module):
    """Multi-head cross-attention (queries from one set, keys and values from another), 4d^2 + 4d parameters, with
    PyTorch's fused attention (no full score tensor)."""
    # Why fused: for the sparse controller on ResNet-18 (4810 queries x 517 keys per sample) the plain-matmul version
    # built a 16 x 2 x 4810 x 517 score tensor and took 2.3x longer (forward + backward, CPU).

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = int(heads)
        self.q, self.kv, self.proj = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.scale = (d // heads) ** -0.5

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        q = _heads(self.q(queries), self.heads)
        k, v = (_heads(t, self.heads) for t in self.kv(memory).chunk(2, -1))
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v, scale=self.scale)))


class _Base(nn.Module):
    """Shared pieces: the neuron-token projection and the optional patch encoder."""

    uses_features = True  # forward reads the neuron features

    def __init__(self, feature_dim: int, input_shape, d: int, patch: int, input_conditioned: bool):
        super().__init__()
        self.input_conditioned = bool(input_conditioned)
        self.token = nn.Linear(feature_dim, d)
        self.patches = PatchEncoder(input_shape, d, patch) if input_conditioned else None

    def image_tokens(self, x):
        return None if self.patches is None else self.patches(x)

    #: Zero the output layer at (re-)initialisation, so the controller starts at the neutral coefficients.
    neutral_init = True

    def output_layer(self) -> nn.Module:
        """The layer whose outputs are the raw coefficients (zeroed by the neutral initialisation)."""
        return self.decoder

    def neutralise(self) -> None:
        """Zero the output layer: every raw coefficient is 0, i.e. a_SM = 1, a_WC = a_AL = a_ARM = 0.

        Why: the paper emits delta a_SM around 1 because "initially zero-centered" outputs would otherwise zero the
        neurons (I.2), and keeps a_WC at zero in the first phase (Figure 4B). A default-initialised output layer
        instead starts every neuron at a shared offset, which can let the first task switches collapse the
        InferenceNetwork to w ~ 0 (examples/neumosync_vs_base.py compares both initialisations). The rest of the
        controller keeps its random initialisation, so the first step already trains the output layer.
        """
        # Observed with the default initialisation on Fashion-MNIST: a_SM ~ 1.25, a_AL ~ -0.5 for every neuron.
        layer = self.output_layer()
        with torch.no_grad():
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()

    def reset_parameters(self):
        """Re-initialise every parameter (the G.2 'reset at each task end' ablation), neutral output included."""
        for m in self.modules():
            if m is self:
                continue
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        if self.neutral_init:
            self.neutralise()


class TransformerController(_Base):
    """One pre-LN encoder layer (``heads`` heads, feed-forward ``d_ff``) over [neuron tokens; patch tokens]; a
    linear decoder ``d -> 4`` on the neuron outputs."""

    def __init__(self, num_neurons, feature_dim, input_shape, d=14, d_ff=128, heads=2, patch=5,
                 input_conditioned=True, **_):
        super().__init__(feature_dim, input_shape, d, patch, input_conditioned)
        self.encoder = EncoderLayer(d, heads, d_ff)
        self.decoder = nn.Linear(d, 4)

    #: Run the encoder-decoder as the restructured kernel (agents.neumosync.kernels.TransformerBlock); False: the
    #: same products as plain autograd ops. Not module state (NeuMoSync's ``fused`` hyperparameter sets it).
    fused = True

    def forward(self, features, x):
        # Neuron tokens are the same for every sample; only the patch tokens differ.
        if not self.fused:
            return self.encoder.neurons(self.token(features), self.image_tokens(x), self.decoder, fused=False)
        if self.patches is None:
            return self.encoder.neurons_t(self.token(features), None, 1, self.decoder)
        return self.encoder.neurons_t(self.token(features), self.patches.tokens_t(x), x.shape[0], self.decoder)


class LowRankController(_Base):
    """The transformer controller with a low-rank per-sample path (an opt-in speed variant, not the paper's module).

    Deviation from the paper (Appendix C.1, J): there, neuron tokens and image-patch tokens share one self-attention
    layer, so every neuron's coefficients are a nonlinear function of (neuron, image) and the feed-forward block runs
    on B x N tokens per batch; at the paper's sizes that per-sample part alone costs several base MLP steps on CPU
    (benchmarks/neumosync_step.py). Here the encoder layer (self-attention + feed-forward) runs once per batch on the
    N neuron tokens only (sample-independent, as in the G.5 'input-unconditioned' controller), and the image enters
    through a bilinear read-out of rank ``d``::

        alpha[b, n] = D(h_n) + U(h_n) c_b / sqrt(d),   c_b = LayerNorm(E(mean patch of x_b))

    with ``D: d -> 4`` and ``U: d -> 4 x d`` linear maps of the encoded neuron token h_n (FiLM-style conditioning,
    Perez et al. 2018, which the paper cites for its additive mechanism) and ``E`` the patch embedding (the mean of
    the embedded patches equals the embedding of the mean patch, as E is linear). The coefficients of the whole
    network for a batch form a (B, 4N) matrix of rank <= d (the shared part plus the d - 1 directions of the
    zero-mean normalised code) computed by one GEMM: the per-sample cost is O(N d)
    instead of O(N (P + d_ff) d). Coefficients stay per sample and per neuron; the modulated network is unchanged.
    """

    def __init__(self, num_neurons, feature_dim, input_shape, d=14, d_ff=128, heads=2, patch=5,
                 input_conditioned=True, **_):
        super().__init__(feature_dim, input_shape, d, patch, input_conditioned=False)
        self.input_conditioned = bool(input_conditioned)
        self.encoder = EncoderLayer(d, heads, d_ff)
        # One linear read-out: columns [0, 4) are D, the rest U (4 rows of d per neuron).
        self.decoder = nn.Linear(d, 4 * (1 + d) if input_conditioned else 4)
        if input_conditioned:
            c, h, w = input_shape
            self.patch = max(1, min(int(patch), h, w))
            self.embed = nn.Linear(c * self.patch ** 2, d)
            self.image_norm = nn.LayerNorm(d, elementwise_affine=False)

    def forward(self, features, x):
        h = self.encoder.neurons(self.token(features), None)[0]  # (N, d), once per batch
        out = self.decoder(h)  # (N, 4) or (N, 4 + 4d)
        if not self.input_conditioned:
            return out[None]
        n, d = h.shape
        k = self.patch
        b, c, hh, ww = x.shape
        mean_patch = x[:, :, :hh // k * k, :ww // k * k].reshape(b, c, hh // k, k, ww // k, k).mean((2, 4))
        code = self.image_norm(self.embed(mean_patch.flatten(1))) * d ** -0.5  # (B, d)
        base, u = out[:, :4], out[:, 4:].reshape(n * 4, d)  # row (n, j): neuron n's read-out for alpha_j
        return torch.addmm(base.reshape(-1), code, u.t()).view(b, n, 4)


class Conv1dController(_Base):
    """Kernel-1 Conv1d stack d -> 16 -> 32 -> 64 -> 128 (ReLU) over the neurons, then Linear 128 -> 4 (Table 15)."""

    def __init__(self, num_neurons, feature_dim, input_shape, d=14, patch=5, input_conditioned=True,
                 channels=(16, 32, 64, 128), **_):
        super().__init__(feature_dim, input_shape, d, patch, input_conditioned)
        layers, c = [], d
        for ch in channels:
            layers += [nn.Conv1d(c, ch, 1), nn.ReLU()]
            c = ch
        self.convs = nn.Sequential(*layers)
        self.decoder = nn.Linear(c, 4)

    def forward(self, features, x):
        tokens = self.token(features)[None]  # (1, N, d)
        img = self.image_tokens(x)
        if img is not None:
            tokens = tokens + img.mean(1, keepdim=True)  # (B, N, d)
        return self.decoder(self.convs(tokens.transpose(1, 2)).transpose(1, 2))


class MLPController(_Base):
    """All neuron features flattened (and the pooled image) -> hidden -> N*4: no sharing across neurons."""

    def __init__(self, num_neurons, feature_dim, input_shape, d=14, patch=5, input_conditioned=True,
                 mlp_hidden=32, **_):
        super().__init__(feature_dim, input_shape, d, patch, input_conditioned)
        self.token = None  # the MLP reads raw features directly
        self.num_neurons = int(num_neurons)
        in_dim = num_neurons * feature_dim + (d if input_conditioned else 0)
        self.mlp = nn.Sequential(nn.Linear(in_dim, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, num_neurons * 4))

    def output_layer(self) -> nn.Module:
        return self.mlp[-1]

    def forward(self, features, x):
        flat = features.reshape(1, -1)
        img = self.image_tokens(x)
        if img is not None:
            flat = torch.cat([flat.expand(img.shape[0], -1), img.mean(1)], dim=1)
        return self.mlp(flat).view(flat.shape[0], self.num_neurons, 4)


class SparseController(_Base):
    """Encoder-decoder controller for large backbones (Appendix E.1).

    Per input, ``round(K * N)`` neurons are drawn uniformly (without replacement); their tokens and the patch tokens
    pass the one-layer encoder. Queries for all N neurons, built from their learnable features and positions only,
    cross-attend to the encoded tokens; a two-layer MLP gives the four coefficients. Cost is O(N * (K N + P)) per
    input instead of the full transformer's O((N + P)^2). In eval mode the draw is fixed (seeded per call), so
    predictions are repeatable."""

    def __init__(self, num_neurons, feature_dim, input_shape, d=14, d_ff=128, heads=2, patch=5,
                 input_conditioned=True, sparse_fraction=0.1, query_dim=6, decoder_hidden=32, seed=0, **_):
        super().__init__(feature_dim, input_shape, d, patch, input_conditioned)
        self.num_sampled = int(round(float(sparse_fraction) * num_neurons))
        if self.num_sampled == 0 and not input_conditioned:
            raise ValueError("the sparse controller needs sampled neurons (sparse_fraction > 0) or image tokens")
        self.query_dim = int(query_dim)  # leading columns of the features: learnable vector + position
        self.encoder = EncoderLayer(d, heads, d_ff)
        self.query = nn.Linear(self.query_dim, d)
        self.cross = CrossAttention(d, heads)
        self.norm = nn.LayerNorm(d)
        self.decoder = nn.Sequential(nn.Linear(d, decoder_hidden), nn.ReLU(), nn.Linear(decoder_hidden, 4))
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)

    def output_layer(self) -> nn.Module:
        return self.decoder[-1]

    def _draw(self, batch: int, n: int, device) -> torch.Tensor:
        g = self._generator if self.training else torch.Generator().manual_seed(self.seed + 1)
        return torch.rand(batch, n, generator=g).argsort(1)[:, :self.num_sampled].to(device)

    def forward(self, features, x):
        img = self.image_tokens(x)
        batch = 1 if img is None else img.shape[0]
        n = features.shape[0]
        parts = []
        if self.num_sampled:
            idx = self._draw(batch, n, features.device)
            parts.append(self.token(features)[idx])  # (B, M, d)
        if img is not None:
            parts.append(img)
        memory = self.encoder(torch.cat(parts, dim=1))
        q = self.query(features[:, :self.query_dim])[None].expand(batch, -1, -1)
        h = self.norm(q + self.cross(q, memory))
        return self.decoder(h)

    # The draw's generator is state: copies continue the same sequence; checkpoints carry it.
    def get_extra_state(self):
        return {"generator": self._generator.get_state()}

    def set_extra_state(self, state):
        self._generator.set_state(state["generator"])


class NoController(nn.Module):
    """'w/o NeuroSync': each neuron learns its own four coefficients; nothing depends on the input."""

    input_conditioned = False
    uses_features = False

    def __init__(self, num_neurons, *_, **__):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(num_neurons, 4))

    def forward(self, features, x):
        return self.table[None]

    def reset_parameters(self):
        nn.init.zeros_(self.table)


CONTROLLERS = {"transformer": TransformerController, "lowrank": LowRankController, "conv1d": Conv1dController,
               "mlp": MLPController, "sparse": SparseController, "none": NoController}


def build_controller(name: str, num_neurons: int, feature_dim: int, input_shape, **options) -> nn.Module:
    """Controller ``name`` (one of :data:`CONTROLLERS`, or ``"unconditioned"``: the transformer without image
    tokens). ``neutral_init`` (default True) zeroes its output layer, so every coefficient starts neutral (a_SM = 1,
    a_WC = a_AL = a_ARM = 0; ``none`` starts there anyway); False keeps PyTorch's default initialisation there."""
    if name == "unconditioned":
        name, options = "transformer", {**options, "input_conditioned": False}
    if name not in CONTROLLERS:
        raise ValueError(f"unknown controller {name!r}; expected one of {sorted(CONTROLLERS) + ['unconditioned']}")
    neutral = bool(options.pop("neutral_init", True))
    ctrl = CONTROLLERS[name](num_neurons, feature_dim, tuple(input_shape), **options)
    if isinstance(ctrl, _Base):
        ctrl.neutral_init = neutral
        if neutral:
            ctrl.neutralise()
    return ctrl
