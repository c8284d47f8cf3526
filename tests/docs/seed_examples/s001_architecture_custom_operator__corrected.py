# Seed: 001_6a7c25e97bbd622d.txt (reference manual); corrected variant, see WRONG_IN_REFERENCE
# Section: System Architecture > Extension Points > Adding Custom Curvature Operators
class CustomCurvatureOperator(CurvatureOperator):
    def __init__(self, model, dataloader):
        super().__init__()
        self.model = model
        self.dataloader = dataloader
        # Register parameters
        self.params = [p for p in model.parameters() if p.requires_grad]
    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.params)
    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype
    @property
    def device(self) -> torch.device:
        return self.params[0].device
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        # Implement A @ v
        return custom_computation(v)
