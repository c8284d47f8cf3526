# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Eigendecomposition Algorithms > Example Usage
from hessian_eigenthings import HessianOperator, lanczos, trace, spectral_density
# Create Hessian operator
operator = HessianOperator(model, dataloader, loss_fn)
# Compute top-5 eigenvalues and eigenvectors
eig_result = lanczos(operator, k=5, max_iter=40, tol=1e-7, seed=0)
print(f"Top eigenvalue: {eig_result.eigenvalues[0]}")
# Estimate trace with Hutch++
trace_result = trace(operator, num_matvecs=99, method="hutch++", seed=0)
print(f"Trace estimate: {trace_result.estimate}")
# Compute spectral density
density_result = spectral_density(operator, num_runs=8, lanczos_steps=40, seed=0)
# Visualize with: plt.plot(density_result.grid, density_result.density)
