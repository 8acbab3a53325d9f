"""The columns of the run record's CSV files: written by ``experiments.record``, read by ``analysis``.

Kept apart from the record so that analysis reads the contract without importing torch.
"""

# The algorithms whose learner takes unrolls acted by older policies, and the algo settings only they have, at the
# defaults every other algorithm keeps (the config refuses others), so that analysis reads them as not applying to
# another algorithm's run.
OFF_POLICY_ALGOS = ("impala", "appo")
IMPALA_DEFAULTS = {"batch_size": 1, "queue_depth": 2, "wait_for_update": False, "correction": "vtrace",
                   "rho_bar": 1.0, "c_bar": 1.0, "max_policy_lag": None, "in_flight_updates": False}

# The statistics every schedule reports with an update (algorithms.infra.messages.LOSS_STATS, which analysis may not
# import; a test keeps the two equal).
LOSS_STATS = ("policy_loss", "value_loss", "entropy", "grad_norm")
# Statistics only some update rules report with an update, averaged into metrics.csv like the loss statistics (empty
# for the others): the off-policy learners' (IMPALA, APPO) mean truncated importance ratio min(rho_bar, pi/mu) over
# the batch, fraction of its samples left out as older than max_policy_lag and mean lag of each step's samples (from
# each sample's own behaviour version: with in-flight updates, below the row's staleness, which counts from the
# unroll's first step); PPO's and APPO's approximate KL divergence from the policy that started the batch and
# fraction of clipped ratios per minibatch.
RULE_STATS = ("importance_ratio", "approx_kl", "clip_fraction", "lag_dropped", "sample_lag")

METRIC_COLUMNS = (
    "env_steps", "wall_time", "updates", "policy_version", "episodes",
    "return_mean", "return_max", "length_mean",
    *LOSS_STATS, "lr", "sps",
    "staleness_mean", "staleness_max", "staleness_p95", "dropped_updates", "barrier_wait_mean",
    *RULE_STATS,
)
EPISODE_COLUMNS = ("env_steps", "wall_time", "worker", "return", "length")
UPDATE_COLUMNS = (
    "update", "wall_time", "env_steps", "worker",
    "version_at_sync", "version_at_apply", "staleness", "applied", "wait_time", "lr",
)
# One row per evaluation (evals.csv): the policy of ``policy_version`` at ``env_steps`` played ``episodes`` evaluation
# episodes; ``returns`` and ``lengths`` list each episode's, space-separated, in the order they were played.
# ``wall_time`` is training time when the evaluation started; ``eval_seconds`` is what it took (never part of
# ``wall_time``).
EVAL_COLUMNS = (
    "env_steps", "wall_time", "policy_version", "episodes",
    "return_mean", "return_std", "return_min", "return_max", "length_mean",
    "deterministic", "eval_seconds", "returns", "lengths",
)
# Each CSV file of a run directory (``<name>.csv``) and its header.
RECORD_COLUMNS = {"metrics": METRIC_COLUMNS, "episodes": EPISODE_COLUMNS, "updates": UPDATE_COLUMNS,
                  "evals": EVAL_COLUMNS}
