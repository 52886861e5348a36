"""Small worlds with known optima for verifying the losses (see `worlds`).

Modules: `tabular` (tabular autoregressive policies over finite response sets), `games`
(exact targets and independent solvers: KL optimum, IPO least squares, Nash equilibria by LP
and of the KL-regularised game, duality gaps, AUC), `common` (results, configs, LossInputs
from pairs, Adam), and the worlds: `offline_worlds` (DPO, IPO, LD-DPO, T-REG),
`game_worlds` (DNO, INPO, GPO, GPM, BT), `step_worlds` (implicit PRM, PRIME), gathered by
`worlds`.
"""
