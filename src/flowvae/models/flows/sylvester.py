"""Amortized Sylvester flows (van den Berg et al. 2018): z' = z + Q R1 tanh(R2 Q^T z + b).

Q (D x M) has orthonormal columns, R1 and R2 (M x M) are upper triangular, and all of Q, R1, R2, b
come per data point from the encoder, laid out step after step in the context. As in the authors'
code, one M x M block supplies both strict upper triangles (R1 takes its upper part, R2 its lower
part transposed) and the diagonals are tanh of their own outputs, so |r1_ii r2_ii| < 1 and every
diagonal term 1 + tanh'(.) r1_ii r2_ii of the Jacobian's determinant is positive: each step is
invertible and log|det| = sum_i log(1 + tanh'(a_i) r1_ii r2_ii) with a = R2 Q^T z + b.

Three ways to get Q:
- orthogonal (O-SNF, M columns): the encoder's D x M matrix, divided by its Frobenius norm, then
  Q <- Q (I + (I - Q^T Q) / 2) until ||Q^T Q - I|| is below a tolerance (Björck's iteration);
- Householder (H-SNF, M = D): the product of H reflections I - 2 v v^T / |v|^2;
- triangular (T-SNF, M = D): the identity at even steps and the reversal permutation at odd ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowvae.models.flows.base import Flow

_BISECTION_STEPS = 100
MAX_ORTHOGONALIZATION_STEPS = 100


def orthogonalization_tolerance(dtype: torch.dtype) -> float:
    """Largest ||Q^T Q - I||_F accepted: 1e-12 in float64, 1e-5 in lower precision."""
    return 1e-12 if dtype == torch.float64 else 1e-5


def orthogonalize(q: Tensor, steps: int = MAX_ORTHOGONALIZATION_STEPS) -> Tensor:
    """Matrices (..., D, M) with M <= D made to have orthonormal columns by Björck's iteration.

    Dividing by the Frobenius norm puts every singular value in (0, 1], where the iteration
    Q <- Q (I + (I - Q^T Q) / 2) converges to the orthogonal factor of the polar decomposition
    (quadratically once close). It stops when the worst matrix of the batch is within
    orthogonalization_tolerance.
    """
    m = q.shape[-1]
    eye = torch.eye(m, dtype=q.dtype, device=q.device)
    q = q / torch.linalg.matrix_norm(q).clamp_min(torch.finfo(q.dtype).tiny)[..., None, None]
    tolerance = orthogonalization_tolerance(q.dtype)
    for _ in range(steps):
        gram = q.transpose(-1, -2) @ q
        if torch.linalg.matrix_norm(gram - eye).max() <= tolerance:
            break
        q = q @ (1.5 * eye - 0.5 * gram)
    return q


def householder_product(v: Tensor) -> Tensor:
    """Q = H_1 H_2 ... H_H (..., D, D) for reflection vectors v (..., H, D), H_k = I - 2 v_k v_k^T / |v_k|^2."""
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    d = v.shape[-1]
    q = torch.eye(d, dtype=v.dtype, device=v.device).expand(*v.shape[:-2], d, d)
    for k in range(v.shape[-2]):
        vk = v[..., k, :]
        q = q - 2.0 * (q @ vk.unsqueeze(-1)) * vk.unsqueeze(-2)
    return q


class Sylvester(Flow):
    """k amortized Sylvester steps of one kind: 'orthogonal' (M columns), 'householder' (H reflections) or 'triangular'."""

    def __init__(self, dim: int, steps: int, kind: str, columns: int = 0, reflections: int = 0) -> None:
        super().__init__()
        if kind not in ("orthogonal", "householder", "triangular"):
            raise ValueError(f"unknown Sylvester kind {kind!r}; expected orthogonal, householder or triangular")
        if kind == "orthogonal" and not 0 < columns <= dim:
            raise ValueError(f"an orthogonal Sylvester flow needs 1 <= M <= z_dim ({dim}) columns, not {columns}")
        if kind == "householder" and reflections < 1:
            raise ValueError(f"a Householder Sylvester flow needs at least one reflection, not {reflections}")
        self.dim = dim
        self.steps = steps
        self.kind = kind
        self.m = columns if kind == "orthogonal" else dim
        self.reflections = reflections if kind == "householder" else 0
        q_size = {"orthogonal": dim * self.m, "householder": self.reflections * dim, "triangular": 0}[kind]
        # Per step: the shared R block (M x M), two diagonals (M each), Q's raw parameters, b (M).
        self.sizes = (self.m * self.m, self.m, self.m, q_size, self.m)
        self.step_size = sum(self.sizes)
        self.context_size = steps * self.step_size
        self.register_buffer("upper", torch.triu(torch.ones(self.m, self.m), diagonal=1), persistent=False)
        self.register_buffer("reversal", torch.arange(dim - 1, -1, -1), persistent=False)

    def extra_repr(self) -> str:
        """Dimensions, for printing."""
        q = {"orthogonal": f"M={self.m}", "householder": f"H={self.reflections}", "triangular": "Q=I or reversal"}
        return (f"dim={self.dim}, steps={self.steps}, kind={self.kind}, {q[self.kind]}, "
                f"context_size={self.context_size} (R, diagonals, Q, b from the encoder)")

    def _step_params(self, context: Tensor) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
        """Q (..., k, D, M) or None for the triangular kind, R1, R2 (..., k, M, M) and b (..., k, M) of every step.

        All steps at once: Q's orthogonalization, the costliest part, runs one batched iteration for all k.
        """
        steps = context.unflatten(-1, (self.steps, self.step_size))
        full, diag1, diag2, q_raw, b = steps.split(self.sizes, dim=-1)
        full = full.unflatten(-1, (self.m, self.m))
        r1 = full * self.upper + torch.diag_embed(torch.tanh(diag1))
        r2 = full.transpose(-1, -2) * self.upper + torch.diag_embed(torch.tanh(diag2))
        if self.kind == "orthogonal":
            q = orthogonalize(q_raw.unflatten(-1, (self.dim, self.m)))
        elif self.kind == "householder":
            q = householder_product(q_raw.unflatten(-1, (self.reflections, self.dim)))
        else:
            q = None
        return q, r1, r2, b

    @staticmethod
    def _step(params: tuple[Tensor | None, Tensor, Tensor, Tensor], k: int) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
        """Step k's Q, R1, R2 and b out of _step_params' stacks."""
        q, r1, r2, b = params
        return (None if q is None else q[..., k, :, :]), r1[..., k, :, :], r2[..., k, :, :], b[..., k, :]

    def _to_basis(self, z: Tensor, q: Tensor | None, k: int) -> Tensor:
        """Q^T z."""
        if q is None:
            return z[..., self.reversal] if k % 2 else z
        return (z.unsqueeze(-2) @ q).squeeze(-2)

    def _from_basis(self, y: Tensor, q: Tensor | None, k: int) -> Tensor:
        """Q y."""
        if q is None:
            return y[..., self.reversal] if k % 2 else y
        return (y.unsqueeze(-2) @ q.transpose(-1, -2)).squeeze(-2)

    @staticmethod
    def _log_det(a: Tensor, r1: Tensor, r2: Tensor) -> Tensor:
        """sum_i log(1 + tanh'(a_i) r1_ii r2_ii), each term positive because |r1_ii r2_ii| < 1."""
        slope = 1.0 - torch.tanh(a).pow(2)
        return torch.log1p(slope * torch.diagonal(r1, dim1=-2, dim2=-1) * torch.diagonal(r2, dim1=-2, dim2=-1)).sum(-1)

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Apply the k steps and return log|det|."""
        total = z.new_zeros(z.shape[:-1])
        params = self._step_params(context)
        for k in range(self.steps):
            q, r1, r2, b = self._step(params, k)
            a = (self._to_basis(z, q, k).unsqueeze(-2) @ r2.transpose(-1, -2)).squeeze(-2) + b
            shift = (torch.tanh(a).unsqueeze(-2) @ r1.transpose(-1, -2)).squeeze(-2)
            z = z + self._from_basis(shift, q, k)
            total = total + self._log_det(a, r1, r2)
        return z, total

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Undo the steps: with y = Q^T z, solve y' = y + R1 tanh(R2 y + b) from the last coordinate up.

        R1 and R2 are upper triangular, so coordinate i of that equation involves y_i and later
        coordinates only; with those known it is the increasing scalar equation
        y_i + r1_ii tanh(r2_ii y_i + c) = t, solved by bisection. Q's orthogonal complement is untouched.
        """
        total = z.new_zeros(z.shape[:-1])
        params = self._step_params(context)
        for k in reversed(range(self.steps)):
            q, r1, r2, b = self._step(params, k)
            target = self._to_basis(z, q, k)
            y = torch.zeros_like(target)
            h = torch.zeros_like(target)
            for i in reversed(range(self.m)):
                later = (r2[..., i, i + 1 :] * y[..., i + 1 :]).sum(-1) + b[..., i]
                t = target[..., i] - (r1[..., i, i + 1 :] * h[..., i + 1 :]).sum(-1)
                r1_ii, r2_ii = r1[..., i, i], r2[..., i, i]
                spread = r1_ii.abs().expand_as(t)
                lo, hi = t - spread, t + spread
                for _ in range(_BISECTION_STEPS):
                    mid = 0.5 * (lo + hi)
                    above = mid + r1_ii * torch.tanh(r2_ii * mid + later) > t
                    hi = torch.where(above, mid, hi)
                    lo = torch.where(above, lo, mid)
                yi = 0.5 * (lo + hi)
                y = _set_last(y, i, yi)
                h = _set_last(h, i, torch.tanh(r2_ii * yi + later))
            a = (y.unsqueeze(-2) @ r2.transpose(-1, -2)).squeeze(-2) + b
            z = z - self._from_basis(target - y, q, k)
            total = total - self._log_det(a, r1, r2)
        return z, total


def _set_last(t: Tensor, i: int, value: Tensor) -> Tensor:
    """t with t[..., i] replaced by value (out of place)."""
    return torch.cat([t[..., :i], value.unsqueeze(-1), t[..., i + 1 :]], dim=-1)
