# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Parameter Utilities > Parameter Filtering Patterns > Multiple Pattern Matching
# Match multiple parameter groups
filter_fn = match_names(
    "transformer.h.*.attn.*",
    "transformer.h.*.mlp.*"
)
