"""Adaptive search: Optuna trials as save-packages, run by workflow slots on leased GPUs.

- :mod:`expflow.search.space`: a search space in Hydra's sweep syntax, as Optuna distributions;
- :mod:`expflow.search.study`: the ``search:`` settings and the study's shared journal file;
- :mod:`expflow.search.slot`: a trial slot (ask, materialize, train, tell, until the budget is spent);
- :mod:`expflow.search.trial`: inside a trial's run, intermediate values and pruning;
- :mod:`expflow.search.results`: trials by objective, the best one, and the history/importance page.

Optuna is an optional dependency (``pip install 'expflow[search]'``); nothing here is
imported by a run outside a search.
"""
