"""Every metric name the trainer, the algorithms, the displays and the readers share.

One home, so a renamed metric cannot leave a reader behind. Plugins reach this
module as ``mario_cli.api.metric_names``.
"""

from __future__ import annotations

# Episodes, over the rolling window (means from stage-start episodes only)
ROLLOUT_AVG_MAX_X_POS = "rollout/avg_max_x_pos"
ROLLOUT_CLEAR_RATE = "rollout/clear_rate"
ROLLOUT_EP_LEN_MEAN = "rollout/ep_len_mean"
ROLLOUT_EP_REW_MEAN = "rollout/ep_rew_mean"
ROLLOUT_FRONTIER_X = "rollout/frontier_x"
ROLLOUT_GREEDY_CLEAR_RATE = "rollout/greedy_clear_rate"
ROLLOUT_GREEDY_MAX_X_POS = "rollout/greedy_max_x_pos"
ROLLOUT_RESTART_SHARE = "rollout/restart_share"

# Progress and speed
TIME_FPS = "time/fps"
TIME_ITERATIONS = "time/iterations"
TIME_TIME_ELAPSED = "time/time_elapsed"
TIME_TOTAL_TIMESTEPS = "time/total_timesteps"

# The learner update
TRAIN_APPROX_KL = "train/approx_kl"
TRAIN_CLIP_FRACTION = "train/clip_fraction"
TRAIN_CLIP_RANGE = "train/clip_range"
TRAIN_ENT_COEF = "train/ent_coef"
TRAIN_ENTROPY_LOSS = "train/entropy_loss"
TRAIN_EXPLAINED_VARIANCE = "train/explained_variance"
TRAIN_GRAD_NORM = "train/grad_norm"
TRAIN_LEARNING_RATE = "train/learning_rate"
TRAIN_LOSS = "train/loss"
TRAIN_MEAN_RHO = "train/mean_rho"
TRAIN_POLICY_GRADIENT_LOSS = "train/policy_gradient_loss"
TRAIN_POLICY_LAG = "train/policy_lag"
TRAIN_STOPPED_EARLY = "train/stopped_early"
TRAIN_VALUE_LOSS = "train/value_loss"

# Extra updates on replayed samples
REPLAY_MEAN_RATIO = "replay/mean_ratio"
REPLAY_MEAN_WEIGHT = "replay/mean_weight"
REPLAY_POLICY_LOSS = "replay/policy_loss"
REPLAY_PRIORITY_SPREAD = "replay/priority_spread"
REPLAY_SIZE = "replay/size"
REPLAY_VALUE_LOSS = "replay/value_loss"

# Greedy-path repair (--repair-every): the learner's own greedy checks from the stage start
REPAIR_CHECKS = "repair/checks"  # greedy checks so far
REPAIR_CLEARS = "repair/clears"  # checks whose greedy path cleared, so far
REPAIR_FIXES = "repair/fixes"  # dying checks a one-step change repaired, so far
REPAIR_MAX_X_POS = "repair/max_x_pos"  # the last check's greedy max x
REPAIR_FIX_X_POS = "repair/fix_x_pos"  # where the last repair changed the path
REPAIR_PATHS = "repair/paths"  # repaired and cleared paths imitated
REPAIR_CLEARED_PATHS = "repair/cleared_paths"  # of those, paths that cleared
REPAIR_DEMO_STEPS = "repair/demo_steps"  # their steps
REPAIR_ACCURACY = "repair/accuracy"  # share of those steps the policy's argmax already takes
REPAIR_FIX_ACCURACY = "repair/fix_accuracy"  # the same, at the fixes only
REPAIR_IMITATION_LOSS = "repair/imitation_loss"
REPAIR_INTERVAL = "repair/interval"  # agent steps to the next check (backs off while clearing)
REPAIR_SECONDS = "repair/seconds"  # wall-clock seconds of the checks (with their search) so far

# best.pt by greedy play from every eval start (--best-by greedy)
BEST_CHECKS = "best/checks"  # greedy checks so far
BEST_SECONDS = "best/seconds"  # wall-clock seconds of the checks so far
BEST_CHECK_CLEAR_RATE = "best/check_clear_rate"  # the last complete check's greedy clear rate
BEST_CLEAR_RATE = "best/clear_rate"  # best.pt's greedy clear rate over the eval starts
BEST_STEP = "best/step"  # the agent step of best.pt's weights
BEST_REVERTS = "best/reverts"  # times training went back to best.pt's weights

# Ray actors (--actors ray)
ACTORS_COUNT = "actors/count"  # actors delivering rollouts now
ACTORS_LOST = "actors/lost"  # actors lost (and replaced) so far in this session
ACTORS_FPS = "actors/fps_{}"  # steps/s of actor i's last rollout (its own time, not the wait)
