"""The sweep: Ray Tune schedules trials, Optuna searches test-time settings, per image category."""
