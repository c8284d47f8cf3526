# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Introduction > Loss Functions > Standard Loss Functions
from hessian_eigenthings.loss_fns.standard import cross_entropy_loss_of_output
loss_fn = cross_entropy_loss_of_output() # Returns loss_of_output_fn
