-- Tasks (DESIGN §10): a DAG's task definitions, one task instance per task and run, and each
-- try's output. Keep equivalent to migrations/postgres/0005_tasks.sql.

-- A DAG's tasks as the last sync defined them: the validated definition as JSON (operator,
-- depends_on, trigger rule, retries, timeouts), read by the scheduler and the executor.
CREATE TABLE dag_task (
    dag_id     TEXT NOT NULL REFERENCES dag (dag_id) ON DELETE CASCADE,
    task_id    TEXT NOT NULL,
    operator   TEXT NOT NULL,
    definition TEXT NOT NULL,
    position   INTEGER NOT NULL,
    retries    INTEGER NOT NULL,
    PRIMARY KEY (dag_id, task_id)
);

-- Airflow's columns where it has them. `state` NULL is Airflow's `None` (no state yet);
-- `queued_by_job_id` is the executor that holds the current try, and fences its results.
CREATE TABLE task_instance (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    dag_run_id       INTEGER NOT NULL REFERENCES dag_run (id) ON DELETE CASCADE,
    dag_id           TEXT NOT NULL,
    run_id           TEXT NOT NULL,
    task_id          TEXT NOT NULL,
    operator         TEXT NOT NULL,
    state            TEXT,
    try_number       INTEGER NOT NULL DEFAULT 0,
    max_tries        INTEGER NOT NULL DEFAULT 0,
    start_date       TEXT,
    end_date         TEXT,
    duration         REAL,
    hostname         TEXT,
    pid              INTEGER,
    pool             TEXT NOT NULL DEFAULT 'default_pool',
    queued_dttm      TEXT,
    queued_by_job_id INTEGER,
    next_retry_at    TEXT,
    trigger_id       INTEGER,
    trigger_timeout  TEXT,
    next_method      TEXT,
    next_kwargs      TEXT,
    updated_at       TEXT NOT NULL,
    UNIQUE (dag_id, run_id, task_id)
);
-- Scheduled, running and retrying task instances are found by state: finished ones (the
-- history) sit in their own ranges of this index, which those lookups never read.
CREATE INDEX idx_task_instance_state ON task_instance (state, next_retry_at);
CREATE INDEX idx_task_instance_dag_run ON task_instance (dag_run_id);

-- Each try's output (stdout and stderr, or the HTTP exchange), as bytes, and how it ended.
CREATE TABLE task_instance_log (
    task_instance_id INTEGER NOT NULL REFERENCES task_instance (id) ON DELETE CASCADE,
    try_number       INTEGER NOT NULL,
    hostname         TEXT,
    outcome          TEXT NOT NULL,
    content          BLOB NOT NULL,
    created_at       TEXT NOT NULL,
    PRIMARY KEY (task_instance_id, try_number)
);

-- A run whose task instances changed since the scheduler last looked: a pass reads these,
-- so its cost follows what changed, not how many runs are running or have run.
ALTER TABLE dag_run ADD COLUMN tasks_changed BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX idx_dag_run_tasks_changed ON dag_run (tasks_changed);

-- A triggerer's capacity or an executor's parallelism, for `status`.
ALTER TABLE job ADD COLUMN capacity INTEGER;
