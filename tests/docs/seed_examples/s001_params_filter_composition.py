# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Parameter Utilities > Advanced Filtering > Filter Composition
# Intersection of patterns
combined_filter = lambda name, param: (
    match_names("blocks.*.*.*")(name, param) and
    param.dtype == torch.float32
)
# Negation
exclude_ln = lambda name, param: not (
    match_names(".*laynorm.*", ".*ln.*")(name, param)
)
