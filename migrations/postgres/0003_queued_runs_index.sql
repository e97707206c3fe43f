-- Starting queued runs looks them up by state: a pass then costs what is queued, not what is
-- defined (100,000 DAGs with nothing queued must be cheap).
CREATE INDEX idx_dag_run_state_run_after ON dag_run (state, run_after);
