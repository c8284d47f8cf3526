"""Lanczos eigensolver (plain, block and thick-restarted) and the raw tridiagonalisation.

Math. Lanczos builds an orthonormal basis Q_m of the Krylov space span{v, Av, …, A^{m-1}v}
with ``A Q_mᵀ = Q_mᵀ T_m + β_m q_{m+1} e_mᵀ``; the eigenpairs (θ, s) of the small matrix T_m
give Ritz pairs (θ, Q_mᵀ s) whose residual norm is exactly ``|β_m s_m|``, so convergence is
read off the small problem without extra products. Extreme eigenvalues converge first and
fast (Kaniel–Paige–Saad), which makes Lanczos the method of choice for the top/bottom of a
spectrum. Each step costs one product; full reorthogonalisation adds ``O(n·m)`` work per step
(memory-bound) and keeps the basis orthonormal to working precision, which rules out the
spurious copies ("ghosts") of converged eigenvalues that plain Lanczos produces
(Paige 1976). The block variant multiplies b vectors at once (one ``matmat``) and resolves
eigenvalues of multiplicity up to b; thick restart (Wu & Simon 2000) bounds the basis.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch

from hessian_eigenthings.algorithms._common import (
    Callback,
    IterationInfo,
    Products,
    Which,
    check_callback,
    check_int,
    check_k,
    check_tol,
    check_which,
    eps,
    notify,
    random_rows,
    resolve_operator,
    which_order,
)
from hessian_eigenthings.algorithms._krylov import BlockLanczos
from hessian_eigenthings.algorithms.result import EigenResult, LanczosTridiag
from hessian_eigenthings.errors import ConvergenceWarning, InvalidArgumentError
from hessian_eigenthings.linalg import LinAlgBackend, make_generator

__all__ = ["lanczos", "lanczos_tridiagonal"]

#: ``restart="auto"`` keeps the whole basis when it fits in this many bytes.
AUTO_BASIS_BYTES = 1 << 30


def lanczos(
    operator: Any,
    k: int = 1,
    max_iter: int = 100,
    *,
    which: Which = "LM",
    tol: float = 1e-8,
    seed: int | torch.Generator | None = None,
    reorthogonalize: bool | None = None,
    backend: LinAlgBackend | None = None,
    callback: Callback | None = None,
    block_size: int = 1,
    restart: bool | Literal["auto"] = "auto",
    max_basis: int | None = None,
) -> EigenResult:
    """The k eigenpairs of a symmetric operator selected by ``which``, by Lanczos.

    Builds an orthonormal basis Q of the Krylov space span{v, Av, …, A^{m−1}v} with
    ``Q A Qᵀ = T`` tridiagonal (block tridiagonal for ``block_size > 1``) and returns Ritz pairs
    ``(θ, Qᵀs)`` from the eigenpairs ``(θ, s)`` of T; their residuals ``‖A x − θ x‖`` come from
    T for free. Cost: one product per iteration and block vector (``num_matvecs ≤ max_iter ·
    block_size``, typically a few times k for well-separated extreme eigenvalues), plus
    ``O(n·m)`` vector work per step for full reorthogonalisation; memory ``O(n·m)`` for the
    basis, bounded by ``max_basis`` when thick-restarting.

    Args:
        operator: a :class:`CurvatureOperator`, a square tensor or a SciPy ``LinearOperator``.
        k: number of eigenpairs (1 ≤ k ≤ n).
        max_iter: most Lanczos iterations; each applies the operator to ``block_size`` vectors,
            so at most ``max_iter · block_size`` products. Must allow k Ritz pairs
            (``max_iter · block_size ≥ k``).
        which: ``"LM"`` largest magnitude, ``"LA"`` largest algebraic, ``"SA"`` smallest
            algebraic. Results are ordered the same way (LM ties: larger value first).
        tol: stop when every wanted pair has ``‖A x − θ x‖ ≤ tol · ‖A‖`` (‖A‖ estimated by
            the largest |Ritz value|). A value below the operator's machine epsilon is
            raised to it. By ``|λ − θ| ≤ ‖r‖`` the eigenvalues are then accurate to
            ``tol·‖A‖``, and in practice to ``‖r‖²/gap``.
        seed: int (reproducible bit for bit), ``torch.Generator`` (CPU) or ``None`` (fresh).
        reorthogonalize: full reorthogonalisation (default ``True``; ``None`` means ``True``).
            ``False`` saves the ``O(n·m)`` work per step but allows ghost copies of
            converged eigenvalues and disables restarting.
        backend: vector arithmetic; default the operator's own backend or single-device.
        callback: called with an :class:`IterationInfo` after each convergence check
            (estimates = current wanted Ritz values); returning ``True`` stops early.
        block_size: vectors multiplied per iteration through ``operator.matmat``. Use b > 1
            when the operator batches vectors cheaply, or to resolve eigenvalues of
            multiplicity up to b (a single start vector sees one copy of a repeated
            eigenvalue until the space it explores becomes invariant).
        restart: ``False`` keeps every Lanczos vector (memory ``O(n · max_iter · b)``, the
            fewest products); ``True`` thick-restarts whenever the basis holds
            ``max_basis`` vectors (memory ``O(n · max_basis)``); ``"auto"`` keeps the whole
            basis if it fits in 1 GiB (or within ``max_basis`` if given) and restarts
            otherwise.
        max_basis: most operator-sized vectors stored when restarting; at least
            ``k + 2·block_size``. Default ``max(2k, k + 20) + 2·block_size`` (ARPACK's
            ``ncv`` rule), and under ``"auto"`` as many as fit in 1 GiB if that is more.

    Returns:
        :class:`EigenResult` with ``eigenvalues`` and ``residuals`` as float64 CPU tensors (they
        come from the float64 projected problem) and ``eigenvectors`` as (k, n) rows in the
        operator's dtype and device. ``iterations`` counts Lanczos iterations,
        ``num_matvecs`` operator products. ``note`` reports invariant subspaces met (and
        continued from with fresh random vectors), thick restarts, or an early stop.

    Raises:
        InvalidArgumentError: a bad argument (named in the message), or an operator found
            unsymmetric: the reorthogonalisation coefficients give ``⟨q_i, A q_j⟩ −
            ⟨A q_i, q_j⟩`` for free at every step (without reorthogonalisation one extra
            block of dot products checks the first pair of vectors); more than
            ``max(1e-6, 30·√eps)·‖A‖`` is rejected.
        NonFiniteError: a product contained NaN or inf.

    Defaults. The reference documents disagree (k = 1 or 10, tol 1e-8/1e-6/1e-3, which LM or
    LA). We keep its function signature's ``k=1, tol=1e-8, which="LM"``: one pair is the
    cheapest useful call, LM is ARPACK's convention and also reports large negative
    curvature, and ``tol=1e-8`` relative to ‖A‖ costs only a few more iterations than 1e-6
    (convergence is geometric) while giving float64 users eigenvalues good to 8+ digits.
    Reorthogonalisation is always on by default (the reference turns it off past 50 steps),
    because ghost eigenvalues are wrong answers.

    Half precision: bf16/fp16 operators get float32 vectors (cast for each product) and a
    float64 projected problem; accuracy is then limited by the operator's own rounding.

    Example:
        The three largest eigenvalues of diag(1, 2, …, 10); ten products make the Krylov
        space the whole of R¹⁰, so they are exact:

        >>> import torch
        >>> from hessian_eigenthings import LambdaOperator, lanczos
        >>> d = torch.arange(1.0, 11.0, dtype=torch.float64)
        >>> op = LambdaOperator(10, lambda v: d * v, dtype=torch.float64)
        >>> vals, vecs = lanczos(op, k=3, seed=0)
        >>> [round(x, 6) for x in vals.tolist()], vecs.shape
        ([10.0, 9.0, 8.0], torch.Size([3, 10]))

        A dense symmetric tensor works as well; ``which="SA"`` asks for the smallest:

        >>> A = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)  # eigenvalues 1, 3
        >>> result = lanczos(A, k=1, which="SA", seed=0)
        >>> round(float(result.eigenvalues[0]), 6), result.converged
        (1.0, True)
    """
    op, backend = resolve_operator(operator, backend)
    n = backend.total_size(op.size)  # global: every rank of a sharded run plans alike
    k = check_k(k, n)
    which = check_which(which)
    tol = check_tol(tol)
    callback = check_callback(callback)
    b = check_int(block_size, "block_size", minimum=1)
    if b > n:
        raise InvalidArgumentError(f"block_size={b} exceeds the operator size n={n}")
    check_int(max_iter, "max_iter", minimum=1)
    if max_iter * b < k:
        raise InvalidArgumentError(
            f"max_iter={max_iter} is too small for k={k}: Lanczos needs at least k products "
            f"to produce k Ritz pairs; pass max_iter >= {-(-k // b)} (usually 2k-10k)"
        )
    reorth = True if reorthogonalize is None else bool(reorthogonalize)
    products = Products(op, "lanczos")
    itemsize = torch.empty((), dtype=products.work).element_size()
    capacity, restarting = _plan_basis(n, k, b, max_iter, restart, max_basis, reorth, itemsize)
    generator = make_generator(seed)
    engine = BlockLanczos(
        products,
        backend,
        capacity=capacity,
        block_size=b,
        reorthogonalize=reorth,
        generator=generator,
        refill=True,
    )
    engine.begin(
        random_rows(backend, b, op.size, generator=generator, dtype=products.work, device=op.device)
    )
    tol_eff = max(tol, eps(op.dtype))
    stopped_by_callback = False
    ritz = None
    while not engine.exhausted and engine.steps < max_iter:
        if restarting and engine.end + b > capacity:
            ritz = ritz if ritz is not None else engine.ritz()
            _thick_restart(engine, ritz, k, which, capacity)
        engine.step()
        ritz = None
        if _check_due(engine, max_iter, k if callback is None else 0):
            ritz = engine.ritz()
            done, info = _progress(engine, ritz, k, which, tol_eff)
            if notify(callback, info):
                stopped_by_callback = True
                break
            if done:
                break
    if ritz is None:
        ritz = engine.ritz()
    return _finish(engine, ritz, k, which, tol_eff, max_iter, stopped_by_callback)


def lanczos_tridiagonal(
    operator: Any,
    v0: torch.Tensor,
    max_iter: int,
    *,
    reorthogonalize: bool = True,
    backend: LinAlgBackend | None = None,
) -> LanczosTridiag:
    """``max_iter`` Lanczos steps from ``v0``: the tridiagonal ``T`` and the basis.

    ``T = tridiag(betas, alphas, betas)`` is ``Q A Qᵀ`` for the returned orthonormal basis
    ``Q`` (``basis[i]`` is the i-th Lanczos vector, in the operator's dtype). The run stops
    early when the Krylov space becomes invariant (``last_beta == 0``): T's eigenvalues are
    then eigenvalues of A and Gauss quadrature with T is exact. ``v0`` need not be normalised.
    Full reorthogonalisation (default) costs ``O(n·m)`` per step and keeps the basis
    orthonormal; without it the three-term recurrence alone is used (T then may carry
    ghost copies of converged eigenvalues). Memory ``O(n·max_iter)`` either way, since the
    basis is returned. Coefficients are float64 CPU tensors. Cost: ``iterations`` products
    (at most ``max_iter``). This is the building block of Lanczos quadrature: for unit ``v0``,
    ``v0ᵀ f(A) v0 ≈ Σⱼ S[0, j]² f(θⱼ)`` with ``T = S diag(θ) Sᵀ``.

    Example:
        Two steps from the all-ones vector on diag(1, 2, 3, 4): ``alphas[0]`` is the Rayleigh
        quotient of the normalised start, the mean of the diagonal.

        >>> import torch
        >>> from hessian_eigenthings import LambdaOperator, lanczos_tridiagonal
        >>> d = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
        >>> op = LambdaOperator(4, lambda v: d * v, dtype=torch.float64)
        >>> run = lanczos_tridiagonal(op, torch.ones(4, dtype=torch.float64), max_iter=2)
        >>> run.alphas.shape, run.betas.shape, len(run.basis)
        (torch.Size([2]), torch.Size([1]), 2)
        >>> round(float(run.alphas[0]), 6)  # (1 + 2 + 3 + 4) / 4
        2.5
        >>> round(float(run.betas[0]) ** 2, 6)  # ‖A q₁ − 2.5 q₁‖² = mean((d − 2.5)²)
        1.25
        >>> Q = torch.stack(run.basis)
        >>> torch.allclose(Q @ Q.T, torch.eye(2, dtype=torch.float64))
        True
    """
    op, backend = resolve_operator(operator, backend)
    check_int(max_iter, "max_iter", minimum=1)
    op.check_vector(v0, "v0")
    products = Products(op, "lanczos_tridiagonal")
    engine = BlockLanczos(
        products,
        backend,
        capacity=min(backend.total_size(op.size), max_iter + 1),
        block_size=1,
        reorthogonalize=reorthogonalize,
        generator=make_generator(0),
        refill=False,
    )
    try:
        engine.begin(v0.detach().reshape(1, -1))
    except InvalidArgumentError:
        raise InvalidArgumentError("v0 must be a non-zero vector") from None
    while not engine.exhausted and engine.steps < max_iter:
        engine.step()
    m = engine.start
    T = engine.H[:m, :m]
    last_beta = float(engine.H[m, m - 1]) if not engine.exhausted else 0.0
    basis = [engine.rows(i, i + 1)[0].to(op.dtype) for i in range(m)]
    return LanczosTridiag(
        alphas=T.diagonal().clone(),
        betas=T.diagonal(-1).clone(),
        basis=basis,
        last_beta=last_beta,
        iterations=engine.steps,
    )


def _plan_basis(
    n: int,
    k: int,
    b: int,
    max_iter: int,
    restart: Any,
    max_basis: Any,
    reorth: bool,
    itemsize: int,
) -> tuple[int, bool]:
    """(rows to allocate, whether to thick-restart) from the restart options."""
    if restart not in (True, False, "auto"):
        raise InvalidArgumentError(f"restart must be True, False or 'auto', got {restart!r}")
    full = min(n, (max_iter + 1) * b)
    if max_basis is not None:
        check_int(max_basis, "max_basis", minimum=1)
        if restart is False:
            raise InvalidArgumentError(
                "max_basis only applies when restarting; pass restart=True or 'auto'"
            )
        floor = min(n, k + 2 * b)
        if max_basis < floor:
            raise InvalidArgumentError(
                f"max_basis={max_basis} is too small: a thick restart keeps k={k} Ritz vectors "
                f"and needs room for two blocks of block_size={b}; pass max_basis >= {floor}"
            )
    if restart is False:
        return full, False
    if not reorth:
        if restart is True:
            raise InvalidArgumentError(
                "restart=True needs reorthogonalize=True (thick restart relies on an "
                "orthonormal basis)"
            )
        return full, False
    if max_basis is not None:
        capacity = min(n, max_basis)
    else:
        capacity = max(2 * k, k + 20) + 2 * b
        if restart == "auto":
            capacity = max(capacity, AUTO_BASIS_BYTES // (n * itemsize))
        capacity = min(n, capacity)
    if capacity >= full:
        return full, False
    return capacity, True


def _check_due(engine: BlockLanczos, max_iter: int, fewest: int) -> bool:
    """Whether to check convergence after this step: always at the end; never while fewer
    than ``fewest`` Ritz pairs exist (they cannot all have converged; pass 0 when a callback
    wants every check); every step while the projected eigenproblem is cheap (tridiagonal up
    to 512 rows: O(m²)); otherwise every ⌈m/64⌉ steps, so the O(m³) dense eigensolve stays a
    small share of a step."""
    if engine.exhausted or engine.steps >= max_iter:
        return True
    m = engine.start
    if m < fewest:
        return False
    every = 1 + (m // 512 if engine.tridiagonal else m // 64)
    return engine.steps % every == 0


def _select(
    ritz: tuple[torch.Tensor, torch.Tensor, torch.Tensor], which: Which, tol: float
) -> torch.Tensor:
    """Wanted-first order; LM magnitudes equal to within the convergence bound are ties."""
    return which_order(ritz[0], which, tie_tol=_bound(ritz[0], tol))


def _progress(
    engine: BlockLanczos,
    ritz: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    k: int,
    which: Which,
    tol: float,
) -> tuple[bool, IterationInfo]:
    theta, _, res = ritz
    idx = _select(ritz, which, tol)[:k]
    bound = _bound(theta, tol)
    conv = res[idx] <= bound
    done = idx.numel() >= k and bool(conv.all())
    info = IterationInfo(
        algorithm="lanczos",
        iteration=engine.steps,
        num_matvecs=engine.products.count,
        estimates=theta[idx].clone(),
        residuals=res[idx].clone(),
        num_converged=int(conv.sum()),
        basis_size=engine.stored,
    )
    return done, info


def _bound(theta: torch.Tensor, tol: float) -> float:
    return tol * float(theta.abs().max()) if theta.numel() else 0.0


def _thick_restart(
    engine: BlockLanczos,
    ritz: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    k: int,
    which: Which,
    capacity: int,
) -> None:
    """Keep the k wanted Ritz vectors plus half of the remaining room of nearby ones."""
    theta, S, _ = ritz
    m = engine.start
    pending = engine.end - engine.start
    most = capacity - pending - engine.block_size
    keep = min(m, most, max(k, k + (most - k) // 2))
    idx = _select(ritz, which, 0.0)[:keep]
    engine.compress(theta[idx], S[:, idx])


def _finish(
    engine: BlockLanczos,
    ritz: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    k: int,
    which: Which,
    tol: float,
    max_iter: int,
    stopped_by_callback: bool,
) -> EigenResult:
    theta, S, res = ritz
    idx = _select(ritz, which, tol)[:k]
    conv = res[idx] <= _bound(theta, tol)
    converged = idx.numel() == k and bool(conv.all())
    vectors = engine.ritz_vectors(S[:, idx]).to(engine.products.op.dtype)
    notes = []
    if engine.refills:
        notes.append(
            f"the Krylov space became invariant {engine.refills} time(s); each time Lanczos "
            "went on from a fresh random vector orthogonal to it (this is how repeated "
            "eigenvalues are found with their multiplicity)"
        )
    if engine.restarts:
        notes.append(f"thick-restarted {engine.restarts} time(s) within {engine.capacity} vectors")
    if idx.numel() < k:
        notes.append(
            f"only {idx.numel()} eigenpairs are returned (k={k}): the run stopped before k "
            "Ritz pairs existed"
        )
    if stopped_by_callback:
        notes.append(f"stopped by the callback after {engine.steps} iterations")
    elif not converged:
        notes.append(
            f"{int(conv.sum())} of {k} pairs converged within max_iter={max_iter} "
            f"({engine.products.count} products)"
        )
        warnings.warn(
            f"lanczos: only {int(conv.sum())} of {k} eigenpairs reached tol within "
            f"max_iter={max_iter}; raise max_iter or tol (see result.residuals)",
            ConvergenceWarning,
            stacklevel=3,
        )
    return EigenResult(
        eigenvalues=theta[idx].clone(),
        eigenvectors=vectors,
        residuals=res[idx].clone(),
        iterations=engine.steps,
        converged=converged,
        num_matvecs=engine.products.count,
        note="; ".join(notes) if notes else None,
    )
