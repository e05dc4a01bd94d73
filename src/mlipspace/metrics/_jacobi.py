r"""Batched one-sided Jacobi SVD in plain torch operations (for the CUDA path of the LFRE).

cuSOLVER's SVD of many small (128 x 128) matrices runs one matrix after another; the local fits of
the LFRE need thousands of them. One-sided (Hestenes) Jacobi orthogonalises the columns of all
matrices of a batch at once: each step rotates n/2 disjoint column pairs (round-robin tournament
order), chosen so the rotated pair becomes orthogonal,

.. math::
    \zeta = \frac{\beta-\alpha}{2\gamma},\quad t = \frac{\mathrm{sign}\,\zeta}{|\zeta|+\sqrt{1+\zeta^2}},
    \quad c = \frac{1}{\sqrt{1+t^2}},\ s = ct,

with :math:`\alpha=\|g_i\|^2, \beta=\|g_j\|^2, \gamma=g_i\cdot g_j`. Sweeps repeat until every pair
satisfies :math:`|\gamma| \le \mathrm{tol}\sqrt{\alpha\beta}`; then :math:`s_k=\|g_k\|`,
:math:`u_k=g_k/s_k` and V is the product of the rotations. Jacobi computes singular values to high
relative accuracy, so results agree with LAPACK to rounding.
"""

from __future__ import annotations

import numpy as np

_PERMS: dict = {}


def _schedule(n: int):
    """Column permutations (physical order) for the steps of the first and of later sweeps."""
    if n in _PERMS:
        return _PERMS[n]
    h = n // 2
    order = list(range(n))
    cur = np.arange(n)
    sweeps = []
    for _ in range(2):
        perms = []
        for _step in range(n - 1):
            want = np.array(order[:h] + order[h:][::-1])
            pos = np.empty(n, dtype=np.int64)
            pos[cur] = np.arange(n)
            perms.append(pos[want])
            cur = want
            order = [order[0], order[-1], *order[1:-1]]
        sweeps.append(perms)
    _PERMS[n] = sweeps
    return sweeps


def jacobi_svd(A, *, max_sweeps: int = 40, tol: float | None = None, precondition: bool = False,
               return_sweeps: bool = False):
    """Thin SVD of a batch ``A`` (B, m, n) of float64 tensors: (U (B,m,r), s (B,r), Vt (B,r,n)),
    r = min(m, n), singular values in descending order (like ``torch.linalg.svd``).

    ``precondition=True`` first rotates the columns by the eigenvectors of the Gram matrix
    (batched ``eigh``), which leaves them nearly orthogonal: the Jacobi sweeps then only polish
    (typically 2-3 sweeps instead of ~10), with the same final accuracy."""
    import torch

    B, m, n = A.shape
    wide = n > m
    # columns to orthogonalise are stored as rows (contiguous): Gt (B, N, M), Wt = V^T rows
    Gt = (A if wide else A.mT).contiguous().clone()
    N, M = Gt.shape[-2], Gt.shape[-1]
    Wt = torch.eye(N, dtype=Gt.dtype, device=Gt.device).expand(B, N, N).contiguous()
    if precondition:
        _, V0 = torch.linalg.eigh(Gt @ Gt.mT)
        Wt = V0.mT.contiguous()
        Gt = Wt @ Gt
    N2 = N + (N % 2)
    if N2 != N:
        Gt = torch.cat([Gt, torch.zeros(B, 1, M, dtype=Gt.dtype, device=Gt.device)], dim=-2)
        Wt = torch.cat([Wt, torch.zeros(B, 1, N, dtype=Gt.dtype, device=Gt.device)], dim=-2)
        Wt = torch.cat([Wt, torch.zeros(B, N2, 1, dtype=Gt.dtype, device=Gt.device)], dim=-1)
        Wt[:, N, N] = 1.0
    if tol is None:
        tol = M * float(np.spacing(1.0))
    h = N2 // 2
    first, rest = _schedule(N2)
    first = [torch.as_tensor(p, device=Gt.device) for p in first]
    rest = [torch.as_tensor(p, device=Gt.device) for p in rest]
    # columns below (M eps) ||A||_F are numerically zero: never rotated (as LAPACK's gesvj does),
    # otherwise rounding noise in a null space keeps the sweeps going without changing anything
    floor = ((M * float(np.spacing(1.0))) ** 2) * (Gt * Gt).sum((-2, -1))[:, None]
    sweeps = 0
    # G and W rows travel together: one gather and one rotation per step for both
    H = torch.cat([Gt, Wt], dim=-1)
    for sweep in range(max_sweeps):
        sweeps += 1
        worst = torch.zeros(B, dtype=Gt.dtype, device=Gt.device)
        for perm in (first if sweep == 0 else rest):
            H = H.index_select(-2, perm)
            P, Q = H[..., :h, :], H[..., h:, :]
            Pg, Qg = P[..., :M], Q[..., :M]
            alpha = (Pg * Pg).sum(-1)
            beta = (Qg * Qg).sum(-1)
            gamma = (Pg * Qg).sum(-1)
            norm = torch.sqrt(alpha * beta)
            pos = (alpha > floor) & (beta > floor)
            off = torch.where(pos, gamma.abs() / torch.where(pos, norm, 1.0), 0.0)
            worst = torch.maximum(worst, off.amax(-1))
            rotate = off > tol
            g = torch.where(rotate, gamma, 1.0)
            zeta = (beta - alpha) / (2.0 * g)
            t = torch.where(zeta >= 0, 1.0, -1.0) / (zeta.abs() + torch.sqrt(1.0 + zeta * zeta))
            t = torch.where(torch.isfinite(t) & rotate, t, 0.0)
            c = 1.0 / torch.sqrt(1.0 + t * t)
            s = c * t
            c, s = c[..., None], s[..., None]
            H = torch.cat([c * P - s * Q, s * P + c * Q], dim=-2)
        if float(worst.max()) <= tol:
            break
    Gt, Wt = H[..., :M], H[..., M:]
    sv = torch.sqrt((Gt * Gt).sum(-1))
    sv, order = torch.sort(sv, dim=-1, descending=True)
    sv, order = sv[..., :N], order[..., :N]
    Gt = torch.take_along_dim(Gt, order[..., None], dim=-2)
    Wt = torch.take_along_dim(Wt, order[..., None], dim=-2)[..., :N]  # rows: V^T, drop pad coordinate
    Ut = Gt / torch.where(sv > 0, sv, 1.0)[..., None]  # rows: U^T
    # rows of Gt were columns of (A^T if wide else A); A = U S V^T (tall) or A^T = U S V^T (wide)
    out = (Wt.mT, sv, Ut) if wide else (Ut.mT, sv, Wt)
    return (*out, sweeps) if return_sweeps else out
