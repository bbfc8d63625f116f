"""A BayesPCN memory (Yoo & Wood, "BayesPCN: A Continually Learnable Predictive Coding Associative Memory", NeurIPS
2022), with the settings of 004_49f6201e6e679480.txt Appendix A.2: 4 layers, one particle, GELU, Adam for the
activation inference of reads and writes with lr 0.01 and 500 steps; everything else the reference code's defaults
(github.com/plai-group/bayes-pcn, read for this module; ours is written from the paper's equations and that reading).

**The model.** A hierarchical Gaussian generative network over the stored pattern x_0 = key (+) value (the key's
entries first) with hidden layers x_1 .. x_{L-1} (``hidden`` = 256 units each): x_{L-1} ~ N(m, s_top I), and
x_l ~ N(f(x_{l+1}) W_l, s_l I) for l < L - 1, f = GELU. The weights are random variables: each W_l (h, d_l) has a
matrix-normal posterior with mean R_l and one row covariance U_l (h, h) shared by its columns (prior R_l drawn as the
reference draws it, U_l = sigma_prior^2 I), the top mean m a normal posterior (mean, variance u_top). The energy that
inference lowers is the negative log joint with the weights integrated out, each layer's variance
s_l = sigma_l^2 + f(x_{l+1}) U_l f(x_{l+1})^T (the reference's ``P_PRED`` log-probability).

**write(key, value)** (the reference's ``VLBModeUpdater`` with one particle): clamp x_0 to the pattern, start the
hidden layers at randn / sqrt(h), and run Adam (lr 0.01, at most 500 steps) on the hidden activations; then, given
those activations, apply the conjugate Bayesian update to every layer's weight posterior (Bayesian linear regression
of x_l on f(x_{l+1}): R += U z^T e / (z U z^T + sigma^2), U -= U z^T z U / (z U z^T + sigma^2); a normal-normal
update of the top mean). That is the sequential write: earlier patterns stay in the posterior, and the weight
uncertainty U shrinks only along the directions already written. With one particle the importance weight is
constant, so no resampling happens.

**read(query)** (hetero-associative recall, the reference's ``infer`` with ``fixed_indices``): x_0's key entries are
clamped to the query, its value entries start at 0 (a masked query, as the reference's masking noise leaves them),
the hidden layers at randn / sqrt(h); Adam (lr 0.01, at most 500 steps) lowers the energy over the value entries and
the hidden activations jointly; the value entries are the recalled value.

**Where this departs from, or simplifies, the reference** (docs/design-notes.md has the same list):
1. *The paper's "write learning rate 1e-4" drives no BayesPCN write.* It is the reference's ``--weight-lr`` default,
   which only its maximum-likelihood updater (GPCN, ``--layer-update-strat=ml``) reads; BayesPCN's write is the
   closed-form conjugate update above, which has no learning rate. ``write_rule="ml"`` is that GPCN write (one
   gradient step of size ``write_lr`` = 1e-4 on R after the same inference, the MAP energy without U) for
   comparison; the default is ``"bayes"``.
2. *Adam is ours, per row.* The reference steps ``torch.optim.Adam`` over the whole batch and stops the whole batch
   once every row's energy moved by at most 1e-3 in a step. We stop each row on its own (its update stops, the
   others go on), so a batched ``read_many`` gives every query the read it would get alone.
3. *Reads are pure functions of the memory and the query.* The hidden activations' random start comes from a
   generator seeded by ``seed`` at every read (one draw, shared by every query of a batch), and a write's from
   ``seed`` and the write's index; the reference draws from the global generator.
4. *Numerics.* The means R live in the values' dtype, the covariances U in float64 (float32 rank-one downdates can
   lose positive definiteness; the reference keeps float32 and repairs U with Higham's
   nearest positive-definite matrix when a Cholesky fails). The update is computed in float64; when U is no longer
   positive definite we symmetrise it and clip its eigenvalues at 1e-12 times its largest (a cheaper repair).
   The isotropic top variance is kept as one number (the reference keeps a diagonal whose entries are all equal).
5. *The patterns are rescaled (``data_scale="first"``).* sigma_obs = 0.01 is in the data's units (the reference's
   data are images); adapter weights are of order 1e-2 to 1e-1, and unscaled, 512-entry Gaussian patterns of
   standard deviation 0.05 were recalled with a relative error of 35% even with one pair stored (0.2% rescaled;
   measured). So x_0 is divided by one number, the root mean square of the first written pattern, fixed from then
   on (a write needs nothing that comes later); reads multiply it back.
6. *Left out:* forgetting (``beta_forget``, default 0 in the reference), several particles and resampling, the
   Gaussian / full-covariance proposals, deletion, layer normalisation and bias units (all off by default there),
   and the auto-associative read (the paper's use is the hetero-associative one: key given, value recalled).

The state is R_0 (h, key_dim + value_dim) and, per hidden layer, R_l (h, h), U_l (h, h) plus the top mean: a fixed
size whatever the number of stored pairs (:meth:`BayesPCNMemory.memory_size_bytes`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from agents.adapters.memory.base import AssociativeMemory, finite_positive, tensor_bytes

__all__ = ["BayesPCNMemory", "ACTIVATIONS", "WRITE_RULES"]

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "none": lambda x: x}
WRITE_RULES = ("bayes", "ml")
_ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8


class BayesPCNMemory(AssociativeMemory):
    """Args:
        layers: L, the layers of the network including the data layer x_0 (the paper's 4: three hidden layers).
        hidden: h, the width of every hidden layer (the reference's default 256).
        activation: f, ``"gelu"`` (the paper's), ``"relu"`` (the reference's default) or ``"none"``.
        sigma_prior: the prior standard deviation of the weights (the reference's 1).
        sigma_obs: the standard deviation of every layer's Gaussian (the reference's 0.01).
        sigma_data: the data layer's standard deviation (None: ``sigma_obs``, as in the reference).
        read_lr: Adam's learning rate for the activation inference of reads and of writes (the paper's 0.01; the
            reference has one setting for both).
        read_steps: the most Adam steps of one inference (the paper's 500).
        early_stop: a row stops once its energy moved by at most this in one step (the reference's 1e-3; None:
            always ``read_steps``).
        write_rule: ``"bayes"`` (BayesPCN's conjugate update) or ``"ml"`` (GPCN's gradient step of ``write_lr``).
        write_lr: the ``"ml"`` rule's step (the paper's 1e-4); unused by ``"bayes"``.
        data_scale: what x_0 is divided by before it meets the network (reads multiply it back): ``"first"`` (the
            root mean square of the first written pattern, fixed from then on; module docstring, 5), a number, or
            None (1: the raw values).
        seed: seeds the weights' prior draw and the activations' random starts (see the module docstring, 3).
    """

    def __init__(self, *, layers: int = 4, hidden: int = 256, activation: str = "gelu", sigma_prior: float = 1.0,
                 sigma_obs: float = 0.01, sigma_data: float | None = None, read_lr: float = 0.01,
                 read_steps: int = 500, early_stop: float | None = 1e-3, write_rule: str = "bayes",
                 write_lr: float = 1e-4, data_scale: float | str | None = "first", seed: int = 0) -> None:
        super().__init__()
        self.layers = finite_positive("layers", layers, integer=True)
        if self.layers < 2:
            raise ValueError(f"layers must be at least 2 (the data layer and one hidden layer), got {layers}")
        self.hidden = finite_positive("hidden", hidden, integer=True)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.sigma_prior = finite_positive("sigma_prior", sigma_prior)
        self.sigma_obs = finite_positive("sigma_obs", sigma_obs)
        self.sigma_data = None if sigma_data is None else finite_positive("sigma_data", sigma_data)
        self.read_lr = finite_positive("read_lr", read_lr)
        self.read_steps = finite_positive("read_steps", read_steps, integer=True)
        self.early_stop = None if early_stop is None else finite_positive("early_stop", early_stop)
        if write_rule not in WRITE_RULES:
            raise ValueError(f"write_rule must be one of {WRITE_RULES}, got {write_rule!r}")
        self.write_rule = write_rule
        self.write_lr = finite_positive("write_lr", write_lr)
        if data_scale is not None and data_scale != "first":
            data_scale = finite_positive("data_scale", data_scale)
        self.data_scale = data_scale
        self.scale: float | None = None if data_scale == "first" else float(data_scale or 1.0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        self.R: list[torch.Tensor] = []  # R_l (h, d_l), l = 0 .. L-2, in the values' dtype
        self.U: list[torch.Tensor] = []  # U_l (h, h), float64
        self.top_mean: torch.Tensor | None = None  # (h,)
        self.top_var: torch.Tensor | None = None  # 0-d float64: the posterior variance of every entry of the mean
        self.last_steps: list[int] = []  # the Adam steps the last inference took, per row (a diagnostic)

    # -- the network ------------------------------------------------------------------------------------------------

    def _variances(self) -> list[float]:
        data = self.sigma_obs if self.sigma_data is None else self.sigma_data
        return [data ** 2] + [self.sigma_obs ** 2] * (self.layers - 1)

    def _build(self, dim: int, dtype: torch.dtype, device: torch.device) -> None:
        g = torch.Generator().manual_seed(self.seed)
        h = self.hidden
        for l in range(self.layers - 1):
            d_out = dim if l == 0 else h
            # the reference: kaiming_normal_(linear) on an (h, d_out) tensor, whose fan_in is d_out
            self.R.append((torch.randn(h, d_out, generator=g, dtype=torch.float64) / math.sqrt(d_out))
                          .to(device, dtype))
            self.U.append(torch.eye(h, dtype=torch.float64, device=device) * self.sigma_prior ** 2)
        self.top_mean = (torch.randn(h, generator=g, dtype=torch.float64) / math.sqrt(h)).to(device, dtype)
        self.top_var = torch.tensor(self.sigma_prior ** 2, dtype=torch.float64, device=device)

    def energy(self, activations: list[torch.Tensor], *, with_uncertainty: bool = True) -> torch.Tensor:
        """The negative log joint of each row of the activations [x_0, x_1, .., x_{L-1}] ((n, d) each): the weights
        integrated out (``with_uncertainty``, BayesPCN's) or at their means (GPCN's MAP energy). Shape (n,)."""
        f = ACTIVATIONS[self.activation]
        variances = self._variances()
        total = 0.0
        for l in range(self.layers - 1):
            z = f(activations[l + 1])
            var = variances[l]
            if with_uncertainty:
                var = var + ((z @ self.U[l].to(z.dtype)) * z).sum(dim=1)
            d = activations[l].shape[1]
            total = total + ((activations[l] - z @ self.R[l]) ** 2).sum(dim=1) / (2 * var) \
                + 0.5 * d * torch.log(2 * math.pi * torch.as_tensor(var, dtype=z.dtype))
        top = activations[-1]
        var = variances[-1] + (self.top_var.item() if with_uncertainty else 0.0)
        total = total + ((top - self.top_mean) ** 2).sum(dim=1) / (2 * var) + 0.5 * top.shape[1] * math.log(
            2 * math.pi * var)
        return total

    def _hidden_start(self, n: int, generator: torch.Generator) -> list[torch.Tensor]:
        """One randn / sqrt(h) draw per hidden layer, shared by the n rows."""
        return [(torch.randn(1, self.hidden, generator=generator, dtype=torch.float64) / math.sqrt(self.hidden))
                .to(self.device, self.dtype).expand(n, -1).clone() for _ in range(self.layers - 1)]

    def energy_and_gradients(self, activations: list[torch.Tensor], U: list[torch.Tensor] | None = None
                             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`energy` (with the weight uncertainty unless the write rule is ``"ml"``) and its gradient with
        respect to every activation, derived by hand (autograd took about 2x as long per step on our CPU, 1,024-entry
        patterns; a test checks the two agree). ``U``: the covariances already in the activations' dtype (cast once per inference)."""
        f = ACTIVATIONS[self.activation]
        uncertain = self.write_rule == "bayes"
        variances = self._variances()
        if U is None:
            U = [u.to(activations[0].dtype) for u in self.U]
        grads = [torch.zeros_like(a) for a in activations]
        total = torch.zeros(activations[0].shape[0], dtype=activations[0].dtype, device=activations[0].device)
        for l in range(self.layers - 1):
            a = activations[l + 1]
            z = f(a)
            error = activations[l] - z @ self.R[l]  # (n, d_l)
            d = error.shape[1]
            sq = (error * error).sum(dim=1)
            if uncertain:
                zU = z @ U[l]
                var = variances[l] + (zU * z).sum(dim=1)
            else:
                var = torch.full_like(sq, variances[l])
            total = total + sq / (2 * var) + 0.5 * d * torch.log(2 * math.pi * var)
            grads[l] = grads[l] + error / var.unsqueeze(1)
            dz = -(error @ self.R[l].T) / var.unsqueeze(1)
            if uncertain:
                dvar = -sq / (2 * var * var) + d / (2 * var)
                dz = dz + (2 * dvar).unsqueeze(1) * zU
            grads[l + 1] = grads[l + 1] + dz * _derivative(self.activation, a)
        top = activations[-1]
        var = variances[-1] + (self.top_var.item() if uncertain else 0.0)
        diff = top - self.top_mean
        total = total + (diff * diff).sum(dim=1) / (2 * var) + 0.5 * top.shape[1] * math.log(2 * math.pi * var)
        grads[-1] = grads[-1] + diff / var
        return total, grads

    def _infer(self, clamped: torch.Tensor, free: torch.Tensor | None, hidden: list[torch.Tensor]
               ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Adam on ``free`` (the unclamped tail of x_0, or None) and the hidden activations, x_0 = clamped (+) free,
        each row stopping on its own (module docstring, 2). Returns the optimised (free, hidden)."""
        n, k = clamped.shape
        U = [u.to(self.dtype) for u in self.U]
        params = ([free] if free is not None else []) + hidden
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        active = torch.ones(n, 1, dtype=self.dtype, device=clamped.device)
        steps = torch.zeros(n, dtype=torch.long)
        previous = None
        b1, b2 = _ADAM_BETAS
        for t in range(1, self.read_steps + 1):
            x0 = clamped if free is None else torch.cat([clamped, params[0]], dim=1)
            hidden_now = params[1:] if free is not None else params
            energy, grads = self.energy_and_gradients([x0] + hidden_now, U)
            grads = ([grads[0][:, k:]] if free is not None else []) + grads[1:]
            for i, g in enumerate(grads):
                # a stopped row's m and v go on moving, but its activations no longer do
                m[i].mul_(b1).add_(g, alpha=1 - b1)
                v[i].mul_(b2).addcmul_(g, g, value=1 - b2)
                step = (m[i] / (1 - b1 ** t)) / ((v[i] / (1 - b2 ** t)).sqrt_().add_(_ADAM_EPS))
                params[i] = params[i] - (self.read_lr * active) * step
            steps += active[:, 0].cpu().long()
            if self.early_stop is not None and previous is not None:
                active = active * ((energy - previous).abs() > self.early_stop).unsqueeze(1).to(self.dtype)
                if not active.any():
                    break
            previous = energy
        self.last_steps = steps.tolist()
        if free is None:
            return None, params
        return params[0], params[1:]

    # -- write and read ---------------------------------------------------------------------------------------------

    def _check_pair(self, key: torch.Tensor, value: torch.Tensor) -> None:
        if self._count == 0 and self.scale is None and not (key.any() or value.any()):
            raise ValueError("the first pattern is all zeros, so data_scale='first' has no scale to take from it: "
                             "pass data_scale=<a number>")

    def _store(self, key: torch.Tensor, value: torch.Tensor) -> None:
        x0 = torch.cat([key, value]).unsqueeze(0)
        if not self.R:
            self._build(x0.shape[1], key.dtype, key.device)
            if self.scale is None:
                self.scale = x0.double().square().mean().sqrt().item()
        x0 = x0 / self.scale
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 1 + self._count)
        _, hidden = self._infer(x0, None, self._hidden_start(1, g))
        self._update([x0] + hidden)

    def _update(self, activations: list[torch.Tensor]) -> None:
        """The weight update given one row of settled activations (float64 arithmetic)."""
        f = ACTIVATIONS[self.activation]
        variances = self._variances()
        new_R, new_U = [], []
        for l in range(self.layers - 1):
            z = f(activations[l + 1].double())  # (1, h)
            R = self.R[l].double()
            error = activations[l].double() - z @ R  # (1, d_l)
            if self.write_rule == "ml":
                new_R.append((R + self.write_lr * z.T @ error / variances[l]).to(self.dtype))
                new_U.append(self.U[l])
                continue
            zU = z @ self.U[l]  # (1, h)
            s = (zU @ z.T).item() + variances[l]
            new_R.append((R + zU.T @ error / s).to(self.dtype))
            new_U.append(_positive_definite(self.U[l] - zU.T @ zU / s))
        top = activations[-1].double()[0]
        mean = self.top_mean.double()
        if self.write_rule == "ml":
            self.top_mean = (mean + self.write_lr * (top - mean) / variances[-1]).to(self.dtype)
        else:
            post = 1.0 / (1.0 / variances[-1] + 1.0 / self.top_var)
            self.top_mean = (post * (mean / self.top_var + top / variances[-1])).to(self.dtype)
            self.top_var = post
        self.R, self.U = new_R, new_U

    def _recall(self, queries: torch.Tensor) -> torch.Tensor:
        n = queries.shape[0]
        free = torch.zeros(n, self.value_dim, dtype=self.dtype, device=self.device)
        g = torch.Generator().manual_seed(self.seed)
        value, _ = self._infer(queries / self.scale, free, self._hidden_start(n, g))
        return value * self.scale

    def memory_size_bytes(self) -> int:
        """R_l and U_l of every layer, the top mean and its variance: fixed once the first write sized R_0."""
        if not self.R:
            return 0
        return tensor_bytes(*self.R, *self.U, self.top_mean, self.top_var)


def _derivative(activation: str, a: torch.Tensor) -> torch.Tensor:
    """f'(a) for the activations of :data:`ACTIVATIONS` (GELU's exact form: Phi(a) + a phi(a))."""
    if activation == "gelu":
        return 0.5 * (1 + torch.erf(a / math.sqrt(2))) + a * torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    if activation == "relu":
        return (a > 0).to(a.dtype)
    return torch.ones_like(a)


def _positive_definite(U: torch.Tensor) -> torch.Tensor:
    """U symmetrised, and, if a Cholesky factorisation fails, its eigenvalues clipped at 1e-12 x the largest."""
    U = (U + U.T) / 2
    if torch.linalg.cholesky_ex(U).info.item() == 0:
        return U
    eigenvalues, vectors = torch.linalg.eigh(U)
    floor = 1e-12 * eigenvalues.abs().max().clamp_min(1e-300)
    return (vectors * eigenvalues.clamp_min(floor)) @ vectors.T
