-- Due DAGs are read in (next_dagrun_create_after, dag_id) order, at most a pass's worth: with
-- both columns in the index the read stops after that many instead of sorting every due DAG
-- (10,000 due at once made each pass cost what all of them cost).
DROP INDEX idx_next_dagrun_create_after;
CREATE INDEX idx_dag_next_dagrun_create_after ON dag (next_dagrun_create_after, dag_id);
