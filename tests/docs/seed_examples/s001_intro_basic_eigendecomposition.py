# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Introduction > Usage Examples > Basic Hessian Eigendecomposition
import torch
from torch import nn
from hessian_eigenthings import HessianOperator, lanczos
# Define model and data
model = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10))
dataloader = [(torch.randn(32, 100), torch.randint(0, 10, (32,)))]
# Loss function
def loss_fn(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)
# Compute top 3 eigenvalues
op = HessianOperator(model=model, dataloader=dataloader, loss_fn=loss_fn)
result = lanczos(op, k=3, max_iter=20, tol=1e-3, seed=0)
for i, val in enumerate(result.eigenvalues):
    print(f"λ_{i+1} = {val.item():.4e}")
