"""`edgepack search`: the fastest (or smallest, or best balanced) bundle that meets the
budget, for one target on the devices it will run on.

    space.py   [search.space] -> Optuna distributions; values checked before any trial
    trial.py   one trial = one real, cached build, summed up as plain data
    study.py   the Optuna loop over an executor (edgepack/executors.py), batch by batch
    front.py   feasibility, the Pareto front, the pick
    report.py  search.json, search.md, search.png and the picked recipe as edgepack.toml
"""
