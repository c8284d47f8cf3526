"""The block Lanczos engine under :func:`lanczos`, :func:`lanczos_tridiagonal` and
:func:`spectral_density`.

State. Orthonormal rows ``Q[0:end]`` (work dtype, on the operator's device) and the float64
CPU projected matrix ``H = Q A Qᵀ`` on the processed rows ``[0, start)``. Rows
``[start, end)`` are the *pending* block: orthonormal, coupled to the processed rows through
``H[start:end, :start]``, not yet multiplied by the operator. Rows ``[lo, start)`` are the
only processed rows the pending block is coupled to: the previous block after an ordinary
step, every kept Ritz vector after a thick restart.

One step (block size b; b = 1 is plain Lanczos):

1. ``W = A X`` for the pending block X (one ``matvec``, or one ``matmat`` for b > 1);
2. ``H[X, X] = X W`` and the known coupling is removed: ``W -= H[lo:end, X]ᵀ Q[lo:end]``
   (the three-term recurrence, or the arrowhead recurrence after a restart);
3. full reorthogonalisation: ``W -= (Q W)ᵀ Q`` against every stored row, repeated while the
   pass removed more than it left (the Daniel–Gragg–Kaufman–Stewart test, at most 3 passes).
   The coefficients against rows before the block measure ``⟨q_i, A q_j⟩ − ⟨A q_i, q_j⟩``,
   so an unsymmetric operator is caught for free;
4. ``W = Rᵀ Q_new`` by Gram–Schmidt: ``Q_new`` is the next pending block and ``R`` the new
   off-diagonal block of H. A row of W at rounding level means the Krylov space became
   invariant; the engine then either stops there (quadrature, ``refill=False``) or continues
   with a fresh random direction orthogonal to every stored row (eigensolver,
   ``refill=True``), which is how repeated eigenvalues are found with their multiplicity.

Cost per step: b products, 2 passes over the stored rows (``O(n · rows)`` work, memory-bound),
and ``O(rows²)`` CPU work. Memory: ``capacity`` rows of n entries; with ``keep_basis=False``
(only without reorthogonalisation) just the rows the recurrence needs (at most 3 blocks).

Thick restart (Wu & Simon 2000): :meth:`BlockLanczos.compress` replaces the processed rows by
chosen Ritz vectors ``Y = Sᵀ Q`` (in place, in column chunks), keeps the pending block, and sets
``H = [[diag θ, Cᵀ], [C, ·]]`` with ``C = H[pending, :start] S``; Lanczos then continues
from the pending block and stays exact.
"""

from __future__ import annotations

import math

import torch

from hessian_eigenthings.algorithms._common import (
    Products,
    eps,
    orthonormal_rows,
    random_rows,
    scalar,
)
from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.linalg import LinAlgBackend

__all__ = ["BlockLanczos", "symmetry_tolerance"]

#: Up to this size the tridiagonal eigenproblem goes to the dense solver (fast enough, and
#: it spares importing scipy.linalg); beyond it, to the O(m²) tridiagonal one.
_DENSE_EIGH_ROWS = 128
#: Column chunk of the in-place restart product, in entries of the temporary.
_CHUNK_ENTRIES = 1 << 22


def symmetry_tolerance(dtype: torch.dtype) -> float:
    """Relative asymmetry ``|⟨q_i, A q_j⟩ − ⟨A q_i, q_j⟩| / ‖A‖`` above which the operator is
    declared unsymmetric: ``max(1e-6, 30 √eps)`` of the operator's dtype.

    That is 1e-6 in float64 and 1e-2 in float32, loose enough for finite-difference
    Hessian-vector products (whose asymmetry is their truncation error) and far below what a
    genuinely unsymmetric matrix shows; in bf16/fp16 it is about 1 or more and the check is
    moot.
    """
    return max(1e-6, 30.0 * math.sqrt(eps(dtype)))


class BlockLanczos:
    """Block Lanczos with a stored basis (see the module docstring)."""

    def __init__(
        self,
        products: Products,
        backend: LinAlgBackend,
        *,
        capacity: int,
        block_size: int,
        reorthogonalize: bool,
        generator: torch.Generator,
        refill: bool,
        keep_basis: bool = True,
    ) -> None:
        op = products.op
        self.products = products
        self.backend = backend
        self.n = op.size
        self.block_size = block_size
        self.capacity = capacity
        self.reorthogonalize = reorthogonalize
        self.generator = generator
        self.refill = refill
        self.keep_basis = keep_basis or reorthogonalize
        self.work = products.work
        self.device = op.device
        rows = capacity if self.keep_basis else min(capacity, 3 * block_size)
        self.Q = torch.empty(rows, self.n, dtype=self.work, device=self.device)
        self.H = torch.zeros(min(capacity, 64), min(capacity, 64), dtype=torch.float64)
        self.off = 0  # absolute index of Q's row 0 (non-zero only with keep_basis=False)
        self.start = 0
        self.end = 0
        self.lo = 0
        self.steps = 0
        self.refills = 0
        self.restarts = 0
        self.anorm = 0.0
        self.sym_tol = symmetry_tolerance(op.dtype)
        self.eps = eps(self.work)
        self._work_rows: torch.Tensor | None = None

    # -- basis access --------------------------------------------------------------------
    def rows(self, a: int, b: int) -> torch.Tensor:
        """Stored rows ``[a, b)`` (absolute indices)."""
        return self.Q[a - self.off : b - self.off]

    @property
    def exhausted(self) -> bool:
        """No pending block: the processed rows span an invariant subspace (or all of Rⁿ)."""
        return self.end == self.start

    @property
    def stored(self) -> int:
        """Operator-sized vectors currently held."""
        return self.end - self.off

    # -- start ---------------------------------------------------------------------------
    def begin(self, V0: torch.Tensor) -> None:
        """Start from the rows of ``V0`` (b, n); raises if they are zero or dependent."""
        Q0, _, kept = orthonormal_rows(
            self.backend, V0.to(self.work), drop_tol=0.0, room=self.capacity
        )
        if len(kept) < V0.shape[0]:
            raise InvalidArgumentError(
                "the starting vector(s) must be non-zero and linearly independent"
            )
        self.Q[: Q0.shape[0]] = Q0
        self.start, self.end, self.lo = 0, Q0.shape[0], 0
        self._grow(self.end)

    # -- one step ------------------------------------------------------------------------
    def step(self) -> None:
        """Multiply the pending block by the operator and extend the basis (module doc)."""
        s, e, lo = self.start, self.end, self.lo
        X = self.rows(s, e)
        # Only read, then left alone: W below is a buffer of our own. Its finiteness is read
        # off the norms taken at the end of the step instead of an extra pass.
        Y = self.products.rows(X, private=False, check=False)
        diag = self._cpu(self.backend.inner(X, Y.T))
        self.H[s:e, s:e] = (diag + diag.T) / 2
        self.anorm = max(self.anorm, float(diag.abs().max()))
        C = self.H[lo:e, s:e].to(self.device, self.work)
        W = torch.addmm(Y, C.T, self.rows(lo, e), alpha=-1.0, out=self._scratch(e - s))
        off: torch.Tensor | None = None
        if self.reorthogonalize:
            norms, off = self._reorthogonalize(W, s, e)
        else:
            if self.steps == 1:
                off = self._cpu(self.backend.inner(self.rows(lo, s), W.T))
            norms = [scalar(self.backend.norm(w)) for w in W]
        if not all(math.isfinite(x) for x in norms):
            raise self.products.non_finite()
        if off is not None and off.numel():
            self._check_symmetry(float(off.abs().max()))
        self._extend(W, s, e, norms)
        self.steps += 1

    def _scratch(self, b: int) -> torch.Tensor:
        """A (b, n) work buffer, allocated once (fresh pages cost as much as a pass)."""
        if self._work_rows is None or self._work_rows.shape[0] < b:
            self._work_rows = torch.empty(b, self.n, dtype=self.work, device=self.device)
        return self._work_rows[:b]

    def _reorthogonalize(self, W: torch.Tensor, s: int, e: int) -> tuple[list[float], torch.Tensor]:
        """Classical Gram–Schmidt of W (in place) against every stored row, repeated while a
        pass removed more than it left; returns the norms of W's rows and the first pass's
        coefficients against the rows before the block."""
        basis = self.rows(0, e)
        off: torch.Tensor | None = None
        left: list[float] = []
        for _ in range(3):
            h = self.backend.inner(basis, W.T)
            W.addmm_(h.T.to(W.dtype), basis, alpha=-1.0)
            hc = self._cpu(h)
            if off is None:
                off = hc[:s]
            own = hc[s:e]
            self.H[s:e, s:e] += (own + own.T) / 2
            removed = hc.norm(dim=0).tolist()
            left = [scalar(self.backend.norm(w)) for w in W]
            if all(a <= b for a, b in zip(removed, left, strict=True)):
                break
        assert off is not None
        return left, off

    def _check_symmetry(self, off: float) -> None:
        scale = self.anorm
        if scale > 0 and off > self.sym_tol * scale:
            raise InvalidArgumentError(
                f"operator is not symmetric: ⟨q_i, A q_j⟩ and ⟨A q_i, q_j⟩ differ by "
                f"{off / scale:.2e} relative to ‖A‖ between Lanczos vectors (tolerance "
                f"{self.sym_tol:.1e}). Lanczos needs a symmetric operator; check its matvec "
                "(e.g. pass (A + Aᵀ)/2) or use a different algorithm"
            )

    def _grow(self, rows: int) -> None:
        """Make the projected matrix hold ``rows`` rows (doubling, up to the capacity)."""
        size = self.H.shape[0]
        if rows > size:
            new = min(self.capacity, max(rows, 2 * size))
            H = torch.zeros(new, new, dtype=torch.float64)
            H[:size, :size] = self.H
            self.H = H

    def _extend(self, W: torch.Tensor, s: int, e: int, norms: list[float]) -> None:
        """Orthonormalise the (already reorthogonalised) block W into the next pending rows;
        ``norms`` are the norms of W's rows."""
        b = W.shape[0]
        room = self.capacity - e
        self._grow(e + b)
        drop = 64.0 * self.eps * max(self.anorm, 1e-300)
        if not self.keep_basis:
            self._slide(s)
        out = self.rows(e, e + min(b, room))
        if b == 1 and room > 0 and norms[0] > drop:  # a single row: just normalise it
            torch.div(W, norms[0], out=out)
            Qn, R, kept = out, torch.tensor([[norms[0]]], dtype=torch.float64), [0]
        else:
            Qn, R, kept = orthonormal_rows(self.backend, W, drop_tol=drop, room=room, out=out)
        r = Qn.shape[0]
        self.H[e : e + r, s:e] = R
        self.H[s:e, e : e + r] = R.T
        if r:
            self.anorm = max(self.anorm, float(self.H[: e + r, s:e].norm(dim=0).max()))
        added = r
        if self.refill:
            added += self._refill(e + r, min(b - len(kept), room - r))
        self.lo, self.start, self.end = s, e, e + added

    def _refill(self, at: int, count: int) -> int:
        """Add up to ``count`` random rows at ``at``, orthogonal to every stored row."""
        added = 0
        for _ in range(count):
            for _attempt in range(3):
                v = random_rows(
                    self.backend,
                    1,
                    self.n,
                    generator=self.generator,
                    dtype=self.work,
                    device=self.device,
                )
                q, _, kept = orthonormal_rows(
                    self.backend,
                    v,
                    against=self.rows(0, at + added),
                    drop_tol=math.sqrt(self.eps) * scalar(self.backend.norm(v[0])),
                )
                if kept:
                    self.rows(at + added, at + added + 1).copy_(q)
                    added += 1
                    self.refills += 1
                    break
        return added

    def _slide(self, s: int) -> None:
        """Without a stored basis: move rows ``[s, end)`` to the front of the buffer."""
        if s > self.off:
            keep = self.rows(s, self.end).clone()
            self.off = s
            self.rows(s, s + keep.shape[0]).copy_(keep)

    # -- Ritz pairs and restart ----------------------------------------------------------
    def ritz(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(θ, S, residuals)`` of the processed part: ``H[:m,:m] = S diag(θ) Sᵀ`` and
        ``residuals[i] = ‖A y_i − θ_i y_i‖`` for the Ritz vector ``y_i = Sᵀ_i Q`` (exact up to
        rounding, from the coupling to the pending block)."""
        m = self.start
        if self.tridiagonal and m > _DENSE_EIGH_ROWS:
            theta, S = _eigh_tridiagonal(self.H[:m, :m])
        else:
            theta, S = torch.linalg.eigh(self.H[:m, :m])
        coupling = self.H[self.start : self.end, :m]
        res = (coupling @ S).norm(dim=0) if coupling.numel() else torch.zeros_like(theta)
        return theta, S, res

    @property
    def tridiagonal(self) -> bool:
        """Whether H is tridiagonal (single-vector Lanczos never restarted)."""
        return self.block_size == 1 and self.restarts == 0

    def ritz_vectors(self, S: torch.Tensor) -> torch.Tensor:
        """``Sᵀ Q[:m]`` for an (m, k) coefficient block: k Ritz vectors as (k, n) rows."""
        return S.to(self.device, self.work).T @ self.rows(0, self.start)

    def compress(self, theta: torch.Tensor, S: torch.Tensor) -> None:
        """Thick restart onto the Ritz pairs ``(theta, S)`` (chosen columns of :meth:`ritz`)."""
        m, s, e = self.start, self.start, self.end
        kept = S.shape[1]
        C = self.H[s:e, :m] @ S
        Sw = S.to(self.device, self.work)
        chunk = max(1, _CHUNK_ENTRIES // max(kept, 1))
        for c0 in range(0, self.n, chunk):
            c1 = min(c0 + chunk, self.n)
            self.Q[:kept, c0:c1] = Sw.T @ self.Q[:m, c0:c1]
        pending = self.Q[s:e].clone()
        self.Q[kept : kept + (e - s)] = pending
        self.H[:e, :e].zero_()  # (H already holds e rows)
        self.H[:kept, :kept] = torch.diag(theta)
        self.H[kept : kept + (e - s), :kept] = C
        self.H[:kept, kept : kept + (e - s)] = C.T
        self.lo, self.start, self.end = 0, kept, kept + (e - s)
        self.restarts += 1

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def _cpu(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", torch.float64).reshape(t.shape)


def _eigh_tridiagonal(T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of a symmetric tridiagonal matrix in O(m²) (LAPACK's MRRR via SciPy)."""
    from scipy.linalg import eigh_tridiagonal

    d = T.diagonal().numpy()
    e = T.diagonal(-1).numpy()
    w, v = eigh_tridiagonal(d, e)
    return torch.from_numpy(w), torch.from_numpy(v)
