"""The summary's columns (summary.csv, summary.json's rows) and what each means (summary.json's
definitions, shown by the report): one vocabulary for ddpbench.summary and its readers."""

from __future__ import annotations

from ddpbench.comparison import COMPARISON_COLUMNS
from ddpbench.stats import MEAN_METHOD, MIN_INTERVAL_N, RATIO_METHOD
from ddpbench.utilisation import DEFINITIONS as UTILISATION_DEFINITIONS
from ddpbench.utilisation import UTILISATION_COLUMNS

SUMMARY_COLUMNS = [
    "world_size",
    "batch_size",
    "global_batch_size",
    "n_seeds",
    "train_time_mean_s",
    "train_time_std_s",
    "train_loop_mean_s",
    "throughput_mean_img_s",
    "throughput_std_img_s",
    "whole_run_throughput_img_s",
    "speedup_mean",
    "speedup_ci95_low",
    "speedup_ci95_high",
    "n_speedup",
    "efficiency_mean",
    "efficiency_ci95_low",
    "efficiency_ci95_high",
    "speedup_whole_run_mean",
    "warmup_share_first_epoch",
    "compile_mean_s",
    "step_cv_within_run",
    "throughput_cv_between_runs",
    "step_skew_max",
    "test_acc_mean",
    "test_acc_std",
    "test_acc_ci95_low",
    "test_acc_ci95_high",
    "acc_change_vs_one",
    "acc_change_vs_one_ci95_low",
    "acc_change_vs_one_ci95_high",
    "n_acc_change_vs_one",
    "karp_flatt",
    "time_to_target_mean_s",
    "n_reached_target",
    "data_share",
    "compute_share",
    "comm_share",
    "other_share",
    "eval_time_mean_s",
    "peak_rss_max_bytes",
    "threads_per_worker",
    "nnodes",
    *UTILISATION_COLUMNS,
]
DEFINITIONS = {
    "train_time": "sum of the epochs' training phases on rank 0, excluding evaluation, in seconds",
    "steady_state": "rank 0's steps after the first min(20, a tenth of the run's steps), at least one "
    "(ddpbench.records.steady_state); throughput, speedup and efficiency use them, time to target counts every step",
    "throughput": "steady-state training images / their summed step times over the setting's runs (the "
    "harmonic mean of the per-run rates); its spread (throughput_std_img_s) is the sd of the per-run rates; "
    "whole_run_throughput_img_s is the same over the whole training time, warm-up and epoch ends included",
    "speedup": "steady-state throughput at W over that of the same seed at W = 1 (the same batch size), "
    "summarised as a geometric mean over the seeds (n_speedup of them); a seed without its own one-worker "
    "run is left out (speedup_unpaired); speedup_whole_run_mean is T(1)/T(W) of train_time, warm-up included",
    "acc_change_vs_one": "test accuracy at W minus that of the same seed at W = 1 (points), mean over the paired "
    "seeds with its t interval (n_acc_change_vs_one); the headline's acc_cost_ws is the smallest world size where "
    "it is below -1 point",
    "warmup_share_first_epoch": "the warm-up steps' time beyond as many steady median steps, over the first "
    "epoch's training time (mean over the runs)",
    "compile": "compile_mean_s: a compiled run's first step beyond a steady median step (train.compile: "
    "dynamo's tracing and inductor's code generation, or their cache's loading), the mean over the seeds; "
    "empty for eager runs. Left out of the steady state, counted in time to target",
    "variability": "step_cv_within_run: sd / mean of a run's steady steps (mean over the runs), the noise "
    "inside one run; throughput_cv_between_runs: sd / mean of the runs' steady throughputs, the noise "
    "between seeds, which double as the timing repetitions",
    "step_skew": "the slowest rank's median step over the fastest's, per epoch; step_skew_max is the largest "
    "over the setting's runs and epochs",
    "time_to_target": "mean over the runs only when every run reached the target accuracy; otherwise empty, "
    "with n_reached_target of n_seeds",
    "efficiency": "speedup / world_size, its interval the speedup's divided by world_size",
    "karp_flatt": "(1/S - 1/W) / (1 - 1/W) from the mean speedup; empty at W = 1, and where the cores were fixed "
    "(W = 1 already used every core: Karp-Flatt and Amdahl assume the cores grow with W)",
    "ci95": f"a ratio (speedup, efficiency, every vs-baseline ratio): {RATIO_METHOD}; a value or difference "
    f"(accuracy): {MEAN_METHOD}; empty below {MIN_INTERVAL_N} values (a t interval of two is +- 12.7 "
    "standard errors)",
    "amdahl_serial_fraction": "f minimising the squared error of 1 / (f + (1 - f) / W) against mean speedup; "
    "null where the cores were fixed",
    "startup_s": "rank 0's process creation to its first training step (not part of train_time)",
    "lock_wait_s": "seconds the run waited for the host-wide timing lock before it started (empty without one)",
    "overlaps": "pairs of runs whose start-to-finish spans overlapped on a shared host (their timings interfere)",
    "resource_model": "cores_fixed: threads_per_worker x world_size the same at every world size (one rank at W = 1 "
    "already uses all the cores, so efficiency compares W ranks with one rank on the same cores); "
    "cores_per_worker_fixed: threads_per_worker the same at every world size (classic scaling efficiency); "
    "mixed: neither",
    **UTILISATION_DEFINITIONS,
}
PREDICTION_DEFINITIONS = {
    "prediction": "the scaling model (ddpbench.predict) fitted to the runs and the all-reduce timings of "
    "ddpbench.commbench: predicted step time, throughput, speedup and efficiency per network and batch mode "
    "up to predict.max_world_size, with its fitted communication parameters, validation and assumptions",
    "prediction_validation": "a measured world size predicted from the others (the largest from the smaller ones; "
    "with three or more, each left out in turn), the held-out size in no fit: relative error of the step time and "
    "of the speedup with 95 % bootstrap intervals; validated false (with the reason) where nothing else is left to "
    "fit the all-reduce on",
}


def summary_columns(has_variants: bool) -> tuple[list[str], list[str]]:
    """(summary.csv's columns, summary.json's row keys): without variants the CSV keeps its columns."""
    if has_variants:
        columns = ["variant", *SUMMARY_COLUMNS, *COMPARISON_COLUMNS]
        return columns, columns
    return SUMMARY_COLUMNS, ["variant", *SUMMARY_COLUMNS]
