-- Forgetting old early-warning facts (adapters/warnings.py, prune_observations) goes by time.
CREATE INDEX risk_signal_observations_at ON risk_signal_observations (at);
