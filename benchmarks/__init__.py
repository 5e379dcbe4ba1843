"""seglab's benchmarks (`make bench`, `python -m benchmarks`): not part of the package,
run from the repository root against the installed seglab. `timing` is the one clock
every part uses; `loops`, `memory` and `loading` are the parts; `__main__` runs them."""
