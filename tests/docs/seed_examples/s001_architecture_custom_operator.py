# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: System Architecture > Extension Points > Adding Custom Curvature Operators
class CustomCurvatureOperator(CurvatureOperator):
    def __init__(self, model, dataloader):
        super().__init__()
        self.model = model
        self.dataloader = dataloader
        # Register parameters
    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        # Implement A @ v
        return custom_computation(v)
