"""seglab's benchmarks (`make bench`, `python -m benchmarks`): not part of the package,
run from the repository root against the installed seglab. `timing` is the one clock
every part uses; `recipes` (seed, unet352), `loops` (train, infer), `memory` and `loading`
are the parts, `loading` also writes the datasets they share; `__main__` runs them."""
