"""seglab's Hydra sweeper on optuna 5 (`hydra/sweeper=seglab_optuna`, selected by the
`hparams_search` configs). Hydra imports the modules of this package whose names do not
start with "_" when it looks for plugins, so `optuna_sweeper` stays light and the work
is done in the private modules, imported when a sweep starts."""
